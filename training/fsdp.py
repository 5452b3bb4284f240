"""Fully sharded data parallel training (FSDP2, `torch.distributed.fsdp.fully_shard`) for unisep modules.

`FullyShardedStrategy` is Lightning's `ModelParallelStrategy` with pure data
parallelism over all ranks and a sharding plan applied by the strategy itself, so the
LightningModules need no `configure_model`. The plan makes a sharding unit of every
module whose class is listed in `wrap_classes`, children before parents. A unit's
parameters are stored as dim-0 shards (`DTensor`) and gathered only while one of its
entry points runs: `forward`, plus the methods listed for its class in
`forward_methods` (UNITE calls `UniteNetwork.tokenize`, `denoise` and `decode`, never
`forward`).

Every trainable parameter must fall inside a unit: the optimizers cannot mix sharded
and plain tensors, so the strategy rejects a plan that leaves one out and names it.
Frozen modules outside the plan (a frame tokenizer, LPIPS) stay whole on every rank.

The EMA copy is a deep copy of the network made before sharding, so the same plan
shards it with the same layout, and `ExponentialMovingAverage.update` blends each
rank's local shards without gathering anything.

Every forward of a sharded module is a collective call over all ranks, so all ranks
must run the same forwards. Validation therefore needs the same number of batches on
every rank (an integer `limit_val_batches`, checked at the first validation). Sampling
on rank 0 alone hangs, which rules out the callbacks `SampleGrid`, `RunSummary`,
`VideoRollout` and `GenerationLatency`.

Sharded checkpoints are folders (one file per rank plus `.metadata` and Lightning's
`meta.pt`). They are written into a hidden staging folder and renamed into place, so a
kill during the write leaves the previous checkpoint as it was. `unisep checkpoint
consolidate` merges one into a single file.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

logger = logging.getLogger(__name__)

# Units for UNITE: the transformer blocks of the Generative Encoder and pixel decoder,
# then the whole network (embeddings, registers, norms, decoder head) around them.
UNITE_WRAP_CLASSES = (
    "unisep.networks.dit_block.DiTBlock",
    "unisep.networks.vit_block.ViTBlock",
    "unisep.networks.unite.UniteNetwork",
)
UNITE_FORWARD_METHODS = {"unisep.networks.unite.UniteNetwork": ["tokenize", "denoise", "decode"]}


@dataclass(frozen=True)
class ShardingUnit:
    """One module that `fully_shard` turns into a sharding unit.

    Attributes:
        name: Qualified module name inside the LightningModule ("" for the root).
        class_name: Import path of the module's class.
        forward_methods: Methods besides `forward` that gather the unit's parameters.
        num_parameters: Parameters owned by this unit (not by units nested in it).
    """

    name: str
    class_name: str
    forward_methods: tuple[str, ...]
    num_parameters: int


def import_class(path: str) -> type:
    """Import a class from its dotted path, e.g. ``"unisep.networks.dit_block.DiTBlock"``.

    Raises:
        ValueError: The path does not name a class.
    """
    module_name, _, class_name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"cannot import class {path!r} for the FSDP sharding plan: {error}") from error
    if not isinstance(found, type):
        raise ValueError(f"{path!r} is not a class")
    return found


def sharding_plan(
    module: nn.Module, wrap_classes: Sequence[str], forward_methods: Mapping[str, Sequence[str]] | None = None
) -> list[ShardingUnit]:
    """List the sharding units of ``module`` (not yet sharded), each after every unit nested inside it.

    Args:
        module: Usually the LightningModule.
        wrap_classes: Import paths of the classes whose instances become units.
        forward_methods: Import path of a class -> methods that gather its parameters.

    Raises:
        ValueError: A class path cannot be imported, or a listed method is missing.
    """
    classes = tuple(import_class(path) for path in wrap_classes)
    methods = {import_class(path): tuple(names) for path, names in (forward_methods or {}).items()}
    selected = [(name, child) for name, child in module.named_modules() if isinstance(child, classes)]
    selected_ids = {id(child) for _, child in selected}

    units = []
    # named_modules() lists parents before children, so the reversed order shards
    # every nested unit before the unit around it, as fully_shard requires.
    for name, child in reversed(selected):
        unit_methods = tuple(m for cls, names in methods.items() if isinstance(child, cls) for m in names)
        for method in unit_methods:
            if not callable(getattr(child, method, None)):
                raise ValueError(f"forward_methods lists {method!r}, but {name or 'the root'} has no such method")
        owned = _owned_parameters(child, selected_ids)
        class_name = f"{type(child).__module__}.{type(child).__qualname__}"
        units.append(ShardingUnit(name, class_name, unit_methods, sum(p.numel() for p in owned)))
    return units


def _owned_parameters(unit: nn.Module, unit_ids: set[int]) -> list[nn.Parameter]:
    """Parameters of ``unit`` that no unit nested inside it claims."""
    nested = [child for _, child in unit.named_modules() if child is not unit and id(child) in unit_ids]
    claimed = {id(p) for child in nested for p in child.parameters()}
    return [p for p in unit.parameters() if id(p) not in claimed]


def unsharded_trainable_parameters(module: nn.Module, plan: Sequence[ShardingUnit]) -> list[str]:
    """Name the parameters with ``requires_grad`` that no unit of ``plan`` covers."""
    modules = dict(module.named_modules())
    covered = {id(p) for unit in plan for p in modules[unit.name].parameters()}
    return [name for name, p in module.named_parameters() if p.requires_grad and id(p) not in covered]


class FullyShardedStrategy(ModelParallelStrategy):
    """FSDP2 over all ranks, with a sharding plan from class paths (see the module docstring).

    Args:
        wrap_classes: Import paths of the module classes to shard as units. Defaults
            to the UNITE plan. A class works as a unit only if its instances are
            entered through `forward` or a method in `forward_methods`. SCD runs its
            `DiTBlock`s through `frame_block_forward`, which calls the blocks'
            submodules directly, so SCD shards its encoder and decoder instead
            (`configs/scd_fsdp.yaml`).
        forward_methods: Import path of a class -> its entry methods besides `forward`;
            None gives UNITE's (`UniteNetwork.tokenize`, `denoise`, `decode`), which do
            nothing for a plan without `UniteNetwork`.
        param_dtype: Dtype of the gathered parameters in forward and backward
            (e.g. "bfloat16"); None computes in the stored dtype.
        reduce_dtype: Dtype of the gradient reduce-scatter; None uses `param_dtype`.
        output_dtype: Dtype that the units' outputs are cast to (e.g. "float32", so
            that losses are computed in full precision); None keeps the compute dtype.
        reshard_after_forward: Free gathered parameters after forward and gather again
            in backward (less memory, one more all-gather per unit).
        save_distributed_checkpoint: Write sharded checkpoint folders (one file per
            rank); False gathers a single file on rank 0.
        process_group_backend: "nccl", "gloo", ...; None picks the device's default.
        timeout: Timeout of collective operations.
    """

    def __init__(
        self,
        wrap_classes: Sequence[str] = UNITE_WRAP_CLASSES,
        forward_methods: Mapping[str, Sequence[str]] | None = None,
        param_dtype: str | None = None,
        reduce_dtype: str | None = None,
        output_dtype: str | None = None,
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        if not wrap_classes:
            raise ValueError("wrap_classes is empty; list the module classes to shard")
        self.wrap_classes = list(wrap_classes)
        self.forward_methods = dict(UNITE_FORWARD_METHODS if forward_methods is None else forward_methods)
        self.param_dtype = _dtype(param_dtype, "param_dtype")
        self.reduce_dtype = _dtype(reduce_dtype, "reduce_dtype")
        self.output_dtype = _dtype(output_dtype, "output_dtype")
        self.reshard_after_forward = reshard_after_forward
        self.plan: list[ShardingUnit] = []

    def setup_environment(self) -> None:
        # Pure data parallelism: one mesh dimension over every rank of every node.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def setup(self, trainer) -> None:
        """Shard the LightningModule by the plan, then set up devices, optimizers and precision.

        `ModelParallelStrategy.setup` requires a `configure_model` hook that shards the
        model; here the plan does it, then the same steps follow.
        """
        from torch.distributed.fsdp import FSDPModule

        assert self.model is not None and self.accelerator is not None
        self.accelerator.setup(trainer)
        module = self.lightning_module
        if any(isinstance(child, FSDPModule) for child in module.modules()):
            raise TypeError(
                f"{type(module).__name__} is already sharded (its configure_model calls fully_shard); "
                "use lightning's ModelParallelStrategy for a hand-written plan"
            )
        self.plan = self.shard(module)

        self.model = self.precision_plugin.convert_module(self.model)
        self.model_to_device()  # modules outside the plan, e.g. a frozen tokenizer
        self.barrier()
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
            _reject_matrix_optimizers(self.optimizers)
        self.setup_precision_plugin()
        if trainer.state.fn == TrainerFn.FITTING:
            _optimizers_to_device(self.optimizers, self.root_device)

    def shard(self, module: nn.Module) -> list[ShardingUnit]:
        """Apply `fully_shard` to every unit of the plan and return the plan.

        Raises:
            ValueError: The plan leaves trainable parameters out, or has no unit.
        """
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

        plan = sharding_plan(module, self.wrap_classes, self.forward_methods)
        if not plan:
            raise ValueError(f"no module of {type(module).__name__} is an instance of wrap_classes {self.wrap_classes}")
        missing = unsharded_trainable_parameters(module, plan)
        if missing:
            listed = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ValueError(
                f"FSDP would leave {len(missing)} trainable parameters unsharded ({listed}); add the class of "
                "the module that owns them to wrap_classes, with its entry methods in forward_methods if it is "
                "not called through forward"
            )

        mesh = self.device_mesh["data_parallel"]
        policy = MixedPrecisionPolicy(
            param_dtype=self.param_dtype, reduce_dtype=self.reduce_dtype, output_dtype=self.output_dtype
        )
        modules = dict(module.named_modules())
        for unit in plan:
            target = modules[unit.name]
            fully_shard(target, mesh=mesh, mp_policy=policy, reshard_after_forward=self.reshard_after_forward)
            for method in unit.forward_methods:
                register_fsdp_forward_method(target, method)
        total = sum(unit.num_parameters for unit in plan)
        logger.info("FSDP sharded %d units holding %d parameters over %d ranks", len(plan), total, mesh.size())
        return plan

    def on_validation_start(self) -> None:
        """Reject validation whose per-rank batch count is not fixed in advance.

        Every forward under FSDP gathers weights with collective calls, so all ranks
        must run the same number of validation batches. unisep's validation streams
        split shards over ranks, so ranks get different counts, and the streams have no
        length. An integer `limit_val_batches` no larger than the smallest rank's count
        makes every rank stop at the same batch.

        Raises:
            ValueError: `limit_val_batches` is a fraction and a validation loader has no length.
        """
        super().on_validation_start()
        trainer = self.lightning_module.trainer
        loaders = trainer.val_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        unsized = [loader for loader in loaders if loader is not None and not hasattr(loader, "__len__")]
        if isinstance(trainer.limit_val_batches, float) and unsized:
            raise ValueError(
                "FullyShardedStrategy needs the same number of validation batches on every rank, because each "
                "forward gathers weights from all ranks, but the validation loader has no length and "
                f"limit_val_batches={trainer.limit_val_batches} is a fraction. Set trainer.limit_val_batches to "
                "an integer no larger than the batches of the rank with the fewest validation samples (the "
                "datamodule logs the samples per rank), or 0 to skip validation"
            )

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: _PATH, storage_options: Any | None = None) -> None:
        """Write the checkpoint; sharded folders go to a staging folder that replaces the target when complete."""
        if not self._save_distributed_checkpoint:
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        target = Path(self.broadcast(filepath))
        staging = target.with_name(f".{target.name}.partial")
        if self.global_rank == 0 and staging.exists():
            shutil.rmtree(staging)  # left by a run killed mid-write
        self.barrier()
        super().save_checkpoint(checkpoint, staging, storage_options)
        if self.global_rank == 0:
            _replace_folder(staging, target)
        self.barrier()


def _replace_folder(staging: Path, target: Path) -> None:
    """Move the complete folder ``staging`` to ``target``, replacing a file, link or folder there."""
    if target.is_symlink() or target.is_file():
        target.unlink()
    if target.is_dir():
        # os.replace cannot overwrite a non-empty folder: move the old one aside first.
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


def _dtype(name: str | None, argument: str) -> torch.dtype | None:
    if name is None:
        return None
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{argument} must name a torch dtype such as 'bfloat16' or 'float32', got {name!r}")
    return dtype


def _reject_matrix_optimizers(optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """Raise for Muon, whose update orthogonalises whole weight matrices that FSDP splits across ranks."""
    muon = getattr(torch.optim, "Muon", None)
    pending = list(optimizers)
    while pending:
        optimizer = pending.pop()
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # LightningOptimizer wrapper
        pending.extend(getattr(optimizer, "optimizers", []))  # unisep's CombinedOptimizer
        if muon is not None and isinstance(optimizer, muon):
            raise ValueError(
                "optimizer 'muon' cannot run under FullyShardedStrategy: Muon orthogonalises whole weight "
                "matrices, and FSDP gives each rank a slice of each. Use optimizer: adamw, or the ddp strategy "
                "for Muon"
            )
