"""`unisep eval digits SAMPLES.npz`: score generated digits with a real-digits classifier."""

from __future__ import annotations

import argparse
import json

import numpy as np

from unisep.metrics.digits_classifier import digits_classifier_accuracy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("samples", help=".npz with `images` uint8 (N, H, W, C) and `labels` (N,)")


def run(args: argparse.Namespace) -> int:
    data = np.load(args.samples)
    accuracy = digits_classifier_accuracy(data["images"], data["labels"])
    print(json.dumps({"samples": args.samples, "num_samples": int(len(data["labels"])), "accuracy": accuracy}))
    return 0
