"""The `unisep` command.

- `unisep fit|validate|test|predict --config CONFIG.yaml [--key value ...]`: training
  and evaluation through LightningCLI; any LightningModule and LightningDataModule can
  be named in the config with `class_path`.
- `unisep data ...`: turn raw data into WebDataset shards.
- `unisep sample ...`: generate class-conditional samples from a checkpoint.
- `unisep eval ...`: score samples (FID, digits classifier check).
- `unisep checkpoint consolidate ...`: merge a sharded (FSDP) checkpoint into one file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI

TRAINING_COMMANDS = ("fit", "validate", "test", "predict")
TOOL_GROUPS = ("data", "eval", "checkpoint")


class UnisepCLI(LightningCLI):
    """LightningCLI with model and data given by `class_path` in the config.

    On top of LightningCLI, every run gets:

    - `Throughput` (throughput and peak memory), `StepSeeding` (per-batch seeds, for
      exact resume) and `NonFiniteLossGuard` (stop at a NaN loss) callbacks, each added
      when the config names none;
    - `AtomicCheckpointIO`, so a kill during a checkpoint write never damages the
      previous checkpoint, unless the config names another `CheckpointIO`;
    - under `precision: bf16-mixed`, gradient clipping that works with the fused AdamW
      kernel (`unisep.training.precision.BF16MixedPrecision`);
    - Lightning's rich progress bar labelled `Epoch 7` instead of `Epoch 7/-2` in runs
      limited by `max_steps`;
    - under SLURM, the logger version `slurm-<job id>` (when the config leaves it
      unset) and `default_root_dir` in that run folder, so a requeued job logs, and
      Lightning writes its requeue checkpoint, into the same folder;
    - automatic resume: `fit` without `--ckpt_path` resumes from the checkpoint with the
      highest global step in the run folder (a fixed logger version or a
      `ModelCheckpoint` dirpath names it) or, under SLURM, from Lightning's
      `hpc_ckpt_*.ckpt`. `--auto_resume false` turns this off.
    """

    def __init__(self, args: list[str] | None = None, **kwargs):
        super().__init__(
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--auto_resume",
            type=bool,
            default=True,
            help="fit only: without --ckpt_path, resume from the newest checkpoint of the run folder",
        )

    def before_instantiate_classes(self) -> None:
        from unisep.training.resume import slurm_run_version

        if self.subcommand != "fit":
            return
        version = slurm_run_version()
        if version is None:
            return
        trainer_config = self.config[self.subcommand].trainer
        run_folder = _pin_logger_version(trainer_config, version)
        if run_folder is not None and trainer_config.get("default_root_dir") is None:
            trainer_config.default_root_dir = str(run_folder)

    def instantiate_trainer(self, **kwargs):
        from lightning.pytorch.plugins.io import TorchCheckpointIO

        from unisep.callbacks.nonfinite_loss import NonFiniteLossGuard
        from unisep.callbacks.step_seeding import StepSeeding
        from unisep.callbacks.throughput import Throughput
        from unisep.training.checkpoint_io import AtomicCheckpointIO

        trainer = super().instantiate_trainer(**kwargs)
        for callback_type in (Throughput, StepSeeding, NonFiniteLossGuard):
            if not any(isinstance(callback, callback_type) for callback in trainer.callbacks):
                _insert_before_checkpointing(trainer, callback_type())
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        _allow_clipping_under_bf16(trainer)
        _label_step_limited_progress(trainer)
        return trainer

    def fit(self, model, datamodule=None, ckpt_path=None, **kwargs: Any) -> None:
        """Run `Trainer.fit`, resuming from the run folder's newest checkpoint when none is given."""
        import logging

        from lightning.fabric.plugins.environments import SLURMEnvironment

        from unisep.training.resume import find_resume_checkpoint

        config = self.config[self.subcommand]
        if ckpt_path is None and config.get("auto_resume", True):
            hpc_folders = [self.trainer.default_root_dir] if SLURMEnvironment.detect() else []
            found = find_resume_checkpoint(_checkpoint_folders(self.trainer, config.trainer), hpc_folders)
            if found is not None:
                if self.trainer.is_global_zero:
                    logging.getLogger(__name__).info(
                        "Resuming from %s (global step %d, the newest of %d checkpoints in the run folder). "
                        "Pass --ckpt_path to choose another or --auto_resume false to start from scratch.",
                        found.path,
                        found.global_step,
                        found.candidates,
                    )
                ckpt_path = str(found.path)
        self.trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)


def _allow_clipping_under_bf16(trainer) -> None:
    """Swap Lightning's `bf16-mixed` plugin for one that clips gradients of fused optimizers.

    The modules pick the fused AdamW kernel where it exists. Lightning 2.6 refuses to
    clip gradients of such optimizers under any mixed precision, because with fp16 they
    are still multiplied by the GradScaler's scale when clipping runs. bf16 uses no
    scaler, so clipping is correct; `BF16MixedPrecision` is the same autocast without
    the refusal. Plugins given in the config (FSDP's among them) are left alone.
    """
    from lightning.pytorch.plugins.precision import MixedPrecision

    from unisep.training.precision import BF16MixedPrecision

    plugin = trainer.strategy.precision_plugin
    if type(plugin) is MixedPrecision and plugin.precision == "bf16-mixed":
        trainer.strategy.precision_plugin = BF16MixedPrecision(device=plugin.device)


def _label_step_limited_progress(trainer) -> None:
    """Replace Lightning's default rich progress bar, which prints `Epoch 7/-2` under max_steps."""
    from lightning.pytorch.callbacks import RichProgressBar

    from unisep.callbacks.progress_bar import StepLimitedRichProgressBar

    for callback in trainer.callbacks:
        if type(callback) is RichProgressBar:
            # The subclass adds no state, so switching the class keeps a configured
            # bar's theme and refresh rate.
            callback.__class__ = StepLimitedRichProgressBar


def _logger_configs(trainer_config) -> list:
    """Return the logger entries of a parsed trainer config that have `class_path` and `init_args`."""
    loggers = trainer_config.get("logger")
    loggers = loggers if isinstance(loggers, list) else [loggers]
    return [entry for entry in loggers if hasattr(entry, "init_args") and entry.init_args is not None]


def _pin_logger_version(trainer_config, version: str) -> Path | None:
    """Set `version` on loggers that leave it unset; return the first logger's run folder, if known.

    The run folder is `save_dir/name/version`, the `log_dir` of Lightning's
    TensorBoard and CSV loggers.
    """
    run_folder = None
    for index, entry in enumerate(_logger_configs(trainer_config)):
        init_args = entry.init_args
        if "version" not in init_args or init_args.get("version") is not None:
            continue
        init_args.version = version
        if index == 0 and init_args.get("save_dir"):
            run_folder = Path(init_args.save_dir) / str(init_args.get("name") or "") / version
    return run_folder


def _checkpoint_folders(trainer, trainer_config) -> list[Path]:
    """Return the folders that the trainer's `ModelCheckpoint`s write to, where fixed before fit.

    A `ModelCheckpoint` without `dirpath` writes to `save_dir/name/version/checkpoints`
    of the first logger. That folder is fixed before fit only when the config or the
    SLURM job id sets the version. Otherwise the logger picks a new `version_<n>` folder
    at fit time, and there is nothing to resume.
    """
    configured = [entry.init_args.get("version") for entry in _logger_configs(trainer_config)[:1]]
    version_fixed = bool(configured) and configured[0] is not None
    folders = []
    for callback in trainer.checkpoint_callbacks:
        dirpath = getattr(callback, "dirpath", None)
        if dirpath:
            folders.append(Path(dirpath))
        elif version_fixed and trainer.loggers:
            logger = trainer.loggers[0]
            version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
            folders.append(Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version / "checkpoints")
    return folders


def _insert_before_checkpointing(trainer, callback) -> None:
    """Add `callback` ahead of the `ModelCheckpoint`s, so its batch-end hook runs before they save."""
    from lightning.pytorch.callbacks import Checkpoint

    position = next((i for i, existing in enumerate(trainer.callbacks) if isinstance(existing, Checkpoint)), None)
    if position is None:
        trainer.callbacks.append(callback)
    else:
        trainer.callbacks.insert(position, callback)


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
        "checkpoint": {
            "consolidate": ("unisep.training.consolidate", "merge a sharded (FSDP) checkpoint folder into one file"),
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
    import logging

    # Show unisep's INFO lines (cache reuse, skipped inputs) next to Lightning's.
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("unisep").setLevel(logging.INFO)
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TOOL_GROUPS:
        return _run_tool(argv[0], argv[1:])
    if argv and argv[0] == "sample":
        from unisep.lightning_modules import sample_command

        parser = argparse.ArgumentParser(prog="unisep sample", description=sample_command.__doc__)
        sample_command.add_arguments(parser)
        return int(sample_command.run(parser.parse_args(argv[1:])) or 0)
    if argv and argv[0] not in TRAINING_COMMANDS and not argv[0].startswith("-"):
        print(
            f"unisep: unknown command {argv[0]!r}. Commands: {', '.join(TRAINING_COMMANDS)}, data, sample, eval, checkpoint.",
            file=sys.stderr,
        )
        return 2
    # LightningCLI reads sys.argv itself; pass `args` only for calls from Python.
    UnisepCLI(args=None if from_command_line else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
