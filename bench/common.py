"""Helpers shared by the benchmark scripts: options, hardware, alternating timing, memory, JSON, tables.

Machines are shared and noisy, so a benchmark compares variants by ratio inside one
process: `alternate` runs every variant once per round, round after round, after an
untimed warm-up, and the figure of a variant is the median over the rounds. Absolute
times mean little on a shared CPU; quote them only from a GPU run with the GPU named.

Each script imports this file as `common` (Python puts the script's folder first on
`sys.path`), prints a table and writes `bench/results/<name>.json` with `write_run`.
The timing scripts take the shared options of `add_run_arguments`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MIB = 2**20
GIB = 2**30


def hardware() -> dict[str, Any]:
    """Describe the machine: CPU model and cores, GPU name, torch version and threads."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def default_device() -> str:
    """Return "cuda" when a GPU is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize(device: torch.device | str) -> None:
    """Wait for queued device work, so a host clock reading covers it (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device | str) -> float:
    """Return the wall time in seconds of one call of `fn`, device work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def alternate(
    variants: dict[str, Callable[[], Any]],
    repeats: int,
    device: torch.device | str,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Time each variant `repeats` times, interleaved, after `warmup` untimed calls each.

    Round r calls every variant once, in the dict's order, so load changes on a shared
    machine hit all variants alike and a ratio of medians stays meaningful.

    Returns:
        Seconds per call of each variant, one entry per round.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(time_call(fn, device))
    return times


def median(values: Sequence[float]) -> float:
    """Return the median of a non-empty sequence."""
    return statistics.median(values)


@contextlib.contextmanager
def saved_activation_bytes() -> Iterator[list[int]]:
    """Count the bytes that autograd keeps for backward while the block runs.

    Yields a one-element list that holds the total when the block exits: the size of
    every distinct tensor storage saved for backward. Activation checkpointing hides
    the tensors inside a checkpointed region, so the count drops as it should. This is
    the device-independent part of a training step's peak memory; weights, gradients
    and optimizer state come on top.
    """
    seen: set[int] = set()
    total = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        # Parameters are saved for backward too, but they are not activations.
        if key not in seen and not isinstance(tensor, torch.nn.Parameter):
            seen.add(key)
            total[0] += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield total


@contextlib.contextmanager
def cuda_peak_bytes(device: torch.device | str) -> Iterator[list[int | None]]:
    """Yield a one-element list that holds the CUDA peak allocated bytes of the block.

    The entry stays None on a device other than CUDA.
    """
    result: list[int | None] = [None]
    device = torch.device(device)
    if device.type != "cuda":
        yield result
        return
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield result
    torch.cuda.synchronize(device)
    result[0] = torch.cuda.max_memory_allocated(device)


def activation_mib(forward: Callable[[], Any]) -> float:
    """Return the MiB that autograd keeps for backward during one call of `forward`.

    The output of `forward` is dropped without a backward. `saved_activation_bytes`
    describes what the count includes.
    """
    with saved_activation_bytes() as saved:
        output = forward()
    del output
    return saved[0] / MIB


def cuda_peak(fn: Callable[[], Any], device: torch.device | str, unit: int = MIB) -> float | None:
    """Run `fn` once and return the CUDA allocator peak in multiples of `unit` bytes.

    Returns None on a device other than CUDA.
    """
    with cuda_peak_bytes(device) as peak:
        fn()
    return None if peak[0] is None else peak[0] / unit


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """Return the command that ran `script` with `argv`, for the JSON record."""
    args = list(argv) if argv is not None else sys.argv[1:]
    return " ".join(["python", f"bench/{script}", *args])


def write_result(name: str, result: dict[str, Any], out: Path | None = None) -> Path:
    """Write `result` plus the hardware to `bench/results/<name>.json` (or `out`)."""
    path = out or RESULTS_DIR / f"{name}.json"
    record = {"benchmark": name, "hardware": hardware(), **result}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return path


def write_run(
    name: str,
    command: str,
    started: float,
    metadata: dict[str, Any],
    results: dict[str, Any],
    out: Path | None = None,
) -> Path:
    """Write a run's record with `write_result`, its fields in a fixed order.

    The record is `{"command", **metadata, "total_seconds", **results}`, where
    `total_seconds` is the time since `started`, a `time.perf_counter()` reading.
    """
    record = {"command": command, **metadata, "total_seconds": time.perf_counter() - started, **results}
    return write_result(name, record, out)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> None:
    """Print rows as a fixed-width table.

    Args:
        rows: one dict per row.
        columns: (key, header, format spec), e.g. ("ratio", "speed-up", ".2f"); a
            missing or None value prints as "-".
    """
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        line = []
        for key, _, spec in columns:
            value = row.get(key)
            line.append("-" if value is None else format(value, spec))
        cells.append(line)
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for index, line in enumerate(cells):
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


THREADS_HELP = (
    "torch intra-op CPU threads (default: 1; 0 keeps torch's choice). One thread gives stable"
    " ratios on a shared machine, where two OpenMP threads stall waiting for each other"
)


def set_threads(threads: int) -> None:
    """Set torch's intra-op threads; 0 keeps torch's default."""
    if threads < 0:
        raise ValueError(f"--threads must be >= 0, got {threads}")
    if threads > 0:
        torch.set_num_threads(threads)


def add_out_argument(parser: argparse.ArgumentParser, name: str, help_text: str | None = None) -> None:
    """Add `--out`, the JSON output path, whose default is `bench/results/<name>.json`."""
    help_text = help_text or f"JSON output (default: bench/results/{name}.json)"
    parser.add_argument("--out", type=Path, default=None, help=help_text)


def add_run_arguments(
    parser: argparse.ArgumentParser,
    name: str,
    *,
    repeats: int,
    dtype: bool = False,
    device_help: str = "cpu or cuda (default: cuda when available)",
    out_help: str | None = None,
) -> None:
    """Add the options of a timing script: --repeats, --dtype (when `dtype`), --threads, --device, --out.

    Args:
        parser: the script's parser.
        name: the result name, for the default of --out.
        repeats: default number of alternating rounds.
        dtype: add `--dtype {fp32,bf16}` for bf16 autocast on CUDA.
        device_help, out_help: help texts that replace the generic ones.
    """
    parser.add_argument("--repeats", type=int, default=repeats, help=f"alternating rounds (default: {repeats})")
    if dtype:
        parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 autocast (CUDA only)")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    parser.add_argument("--device", default=default_device(), help=device_help)
    add_out_argument(parser, name, out_help)


def start_run(args: argparse.Namespace, seed: int | None = 0) -> torch.device:
    """Apply `--threads`, seed torch's global generator unless `seed` is None, and return `--device`."""
    set_threads(args.threads)
    device = torch.device(args.device)
    if seed is not None:
        torch.manual_seed(seed)
    return device
