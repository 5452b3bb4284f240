"""The `unisep` command.

- `unisep fit|validate|test|predict --config CONFIG.yaml [--key value ...]`: training
  and evaluation through LightningCLI; any LightningModule and LightningDataModule can
  be named in the config with `class_path`.
- `unisep data ...`: turn raw data into WebDataset shards.
- `unisep sample ...`: generate class-conditional samples from a checkpoint.
- `unisep eval ...`: score samples (FID, digits classifier check).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from lightning.pytorch.cli import LightningCLI

TRAINING_COMMANDS = ("fit", "validate", "test", "predict")


class UnisepCLI(LightningCLI):
    """LightningCLI with model and data given by `class_path` in the config.

    Every fit logs throughput and peak memory: a `Throughput` callback is added when
    the config names none.
    """

    def __init__(self, args: list[str] | None = None, **kwargs):
        super().__init__(
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            **kwargs,
        )

    def instantiate_trainer(self, **kwargs):
        from unisep.callbacks.throughput import Throughput

        trainer = super().instantiate_trainer(**kwargs)
        if not any(isinstance(callback, Throughput) for callback in trainer.callbacks):
            trainer.callbacks.append(Throughput())
        return trainer


def _tool_commands() -> dict[str, dict[str, tuple[str, str]]]:
    """Map `group -> name -> (module, help)` of the non-training commands.

    Modules are imported only when their command runs, so `unisep fit` does not pay
    for RDKit or PyAV imports.
    """
    return {
        "data": {
            "images": ("unisep.datamodules.image_writer", "write an image folder with class sub-folders as shards"),
            "molecules": ("unisep.datamodules.molecule_writer", "write QM9 / SDF / XYZ / SMILES molecules as shards"),
            "videos": ("unisep.datamodules.video_writer", "write MP4 files or .npy frame arrays as shards"),
        },
        "eval": {
            "fid": ("unisep.metrics.fid_eval", "FID of a checkpoint, image folder or .npz against reference statistics"),
            "digits": ("unisep.metrics.digits_eval", "classify generated digits with a classifier trained on real digits"),
        },
    }


def _run_tool(group: str, argv: list[str]) -> int:
    import importlib

    commands = _tool_commands()[group]
    parser = argparse.ArgumentParser(prog=f"unisep {group}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in commands.items():
        command_parser = sub.add_parser(name, help=help_text)
        command_parser.set_defaults(module_name=module_name)
        if argv[:1] == [name]:
            importlib.import_module(module_name).add_arguments(command_parser)
    args = parser.parse_args(argv)
    run: Callable = importlib.import_module(args.module_name).run
    return int(run(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `unisep` console script."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("data", "eval"):
        return _run_tool(argv[0], argv[1:])
    if argv and argv[0] == "sample":
        from unisep.lightning_modules import sample_command

        parser = argparse.ArgumentParser(prog="unisep sample", description=sample_command.__doc__)
        sample_command.add_arguments(parser)
        return int(sample_command.run(parser.parse_args(argv[1:])) or 0)
    if argv and argv[0] not in TRAINING_COMMANDS and not argv[0].startswith("-"):
        print(
            f"unisep: unknown command {argv[0]!r}. Commands: {', '.join(TRAINING_COMMANDS)}, data, sample, eval.",
            file=sys.stderr,
        )
        return 2
    # LightningCLI reads sys.argv itself; pass `args` only for calls from Python.
    UnisepCLI(args=None if from_command_line else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
