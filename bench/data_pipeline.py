"""Image data pipeline: samples/s from WebDataset shards through decoding, against the model.

The source images are the two photographs that scikit-learn ships (427 x 640 JPEG),
cut into random crops of 280 to 420 pixels, so every sample is a distinct real photo
region that the ADM centre crop must resize. They are written once, as PNG and as JPEG
shards, with `unisep.datamodules.image_writer.write_image_shards`, and read back with
`ImageDataModule` (shuffle buffer, decoding, centre crop, flips, collation) at several
DataLoader worker counts. A reader's rate is timed from its first batch to its last,
so starting the workers is left out.

In the same run, and alternating with the readers, a UNITE training step at the same
image size gives the model's consumption in images/s; `headroom` is a reader's rate
over it and must stay above 1 for the loader never to be the bottleneck.

    python bench/data_pipeline.py               # about 2 minutes on a 2-core CPU
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from common import add_run_arguments, command_line, median, print_table, start_run, time_call, write_run
from setups import build_unite, image_batch, unite_optimizer, unite_train_step
from unisep.datamodules.image_writer import write_image_shards
from unisep.datamodules.images import ImageDataModule


def write_source_folder(folder: Path, count: int, seed: int = 0) -> None:
    """Write `count` random crops of scikit-learn's sample photos, one class per photo."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    rng = random.Random(seed)
    for index in range(count):
        photo_index = index % len(photos.images)
        photo = Image.fromarray(photos.images[photo_index])
        side = rng.randint(280, 420)
        left = rng.randint(0, photo.width - side)
        top = rng.randint(0, photo.height - side)
        class_folder = folder / Path(photos.filenames[photo_index]).stem
        class_folder.mkdir(parents=True, exist_ok=True)
        photo.crop((left, top, left + side, top + side)).save(class_folder / f"{index:05d}.png")


def reader_rate(shards: Path, image_size: int, batch_size: int, workers: int, batches: int) -> float:
    """Return samples/s of `batches` training batches, timed after the first batch."""
    datamodule = ImageDataModule(
        train_shards=str(shards),
        image_size=image_size,
        batch_size=batch_size,
        num_workers=workers,
        shuffle_buffer=4 * batch_size,
        batches_per_epoch=batches + 1,
        random_flip=True,
    )
    datamodule.setup("fit")
    iterator = iter(datamodule.train_dataloader())
    next(iterator)
    start = time.perf_counter()
    samples = sum(batch["image"].shape[0] for batch in iterator)
    return samples / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=256, help="stored and loaded image side (default: 256)")
    parser.add_argument("--samples", type=int, default=256, help="distinct source images written (default: 256)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per batch (default: 32)")
    parser.add_argument("--batches", type=int, default=8, help="timed batches per reader and round (default: 8)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts")
    parser.add_argument("--formats", nargs="+", default=["png", "jpg"], choices=["png", "jpg"], help="stored formats")
    parser.add_argument("--model-preset", default="unite_tiny", help="UNITE preset whose consumption is measured")
    parser.add_argument("--model-patch-size", type=int, default=16, help="patch side of that model (default: 16)")
    parser.add_argument("--model-batch-size", type=int, default=8, help="images per model step (default: 8)")
    add_run_arguments(parser, "data_pipeline", repeats=2, device_help="device of the model step: cpu or cuda")
    args = parser.parse_args(argv)

    device = start_run(args, seed=None)
    started = time.perf_counter()
    scratch = tempfile.TemporaryDirectory(prefix="unisep-bench-data-")
    root = Path(scratch.name)
    write_source_folder(root / "source", args.samples)
    shards = {}
    for image_format in args.formats:
        shards[image_format] = root / image_format
        write_image_shards(
            root / "source", shards[image_format], image_size=args.image_size, image_format=image_format,
            max_samples_per_shard=max(1, args.samples // 4), progress=False,
        )
    print(f"wrote shards ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    module = build_unite(args.model_preset, args.image_size, args.model_patch_size, device)
    batch = image_batch(args.model_batch_size, args.image_size, module.num_classes, device)
    step = unite_train_step(module, unite_optimizer(module), batch)
    step()

    rates: dict[tuple[str, int], list[float]] = {(f, w): [] for f in args.formats for w in args.workers}
    model_rates: list[float] = []
    for _ in range(args.repeats):
        for key in rates:
            rates[key].append(reader_rate(shards[key[0]], args.image_size, args.batch_size, key[1], args.batches))
        model_rates.append(args.model_batch_size / time_call(step, device))
    model_rate = median(model_rates)

    rows = [
        {
            "format": image_format,
            "workers": workers,
            "samples_per_sec": median(values),
            "headroom": median(values) / model_rate,
        }
        for (image_format, workers), values in rates.items()
    ]
    print_table(
        rows,
        [
            ("format", "format", "s"),
            ("workers", "workers", "d"),
            ("samples_per_sec", "samples/s", ".1f"),
            ("headroom", "over model", ".2f"),
        ],
    )
    print(f"model ({args.model_preset}, {args.image_size} px, patch {args.model_patch_size}): {model_rate:.1f} images/s")
    write_run(
        "data_pipeline",
        command_line("data_pipeline.py", argv),
        started,
        {
            "settings": {
                "image_size": args.image_size,
                "source": "random crops of scikit-learn's china.jpg and flower.jpg",
                "samples": args.samples,
                "batch_size": args.batch_size,
                "timed_batches": args.batches,
                "pipeline": "ImageDataModule train loader: shuffle buffer, decode, ADM centre crop, random flip, collate",
                "model": {
                    "preset": args.model_preset,
                    "patch_size": args.model_patch_size,
                    "batch_size": args.model_batch_size,
                    "device": str(device),
                },
                "repeats": args.repeats,
            },
            "model_images_per_sec": model_rate,
        },
        {"rows": rows},
        args.out,
    )
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
