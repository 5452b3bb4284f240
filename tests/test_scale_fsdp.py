"""FSDP sharding plans, checks and checkpoint helpers that run without a process group.

The two-process FSDP run itself is in `test_scale_distributed.py`.
"""

from __future__ import annotations

import pytest
import torch
import yaml

from scale_helpers import REPO
from unisep.cli import main
from unisep.lightning_modules import UNITE
from unisep.lightning_modules.optim import build_optimizer
from unisep.lightning_modules.scd import SCD
from unisep.networks import ImageModality
from unisep.networks.frame_tokenizer import PatchTokenizer
from unisep.training.consolidate import consolidate_checkpoint, optimizer_state_by_index
from unisep.training.fsdp import (
    UNITE_FORWARD_METHODS,
    UNITE_WRAP_CLASSES,
    FullyShardedStrategy,
    _reject_matrix_optimizers,
    _replace_folder,
    sharding_plan,
    unsharded_trainable_parameters,
)


def _strategy_args(config: str) -> dict:
    return yaml.safe_load((REPO / config).read_text())["trainer"]["strategy"]["init_args"]


@pytest.fixture(scope="module")
def unite() -> UNITE:
    return UNITE(modality=ImageModality(image_size=16, patch_size=4, channels=1), preset="unite_tiny", num_classes=10)


def test_unite_plan_shards_blocks_then_networks(unite):
    args = _strategy_args("configs/unite_large_fsdp.yaml")
    plan = sharding_plan(unite, args["wrap_classes"], args["forward_methods"])
    names = [unit.name for unit in plan]

    # unite_tiny: 4 GE blocks and 2 decoder blocks, in the network and in its EMA copy.
    assert sum(unit.class_name.endswith("DiTBlock") for unit in plan) == 2 * 4
    assert sum(unit.class_name.endswith("ViTBlock") for unit in plan) == 2 * 2
    assert {"network", "ema.module"} <= set(names)
    for position, name in enumerate(names):
        nested = [other for other in names if other.startswith(f"{name}.")]
        assert all(names.index(other) < position for other in nested), f"{name} comes before a unit inside it"
    assert plan[names.index("network")].forward_methods == ("tokenize", "denoise", "decode")
    assert unsharded_trainable_parameters(unite, plan) == []
    assert sum(unit.num_parameters for unit in plan) == sum(p.numel() for p in unite.parameters())


def test_plan_defaults_match_shipped_unite_config():
    args = _strategy_args("configs/unite_large_fsdp.yaml")

    assert tuple(args["wrap_classes"]) == UNITE_WRAP_CLASSES
    assert args["forward_methods"] == UNITE_FORWARD_METHODS


def test_blocks_only_plan_leaves_parameters_out(unite):
    plan = sharding_plan(unite, ["unisep.networks.dit_block.DiTBlock"])
    missing = unsharded_trainable_parameters(unite, plan)

    assert "network.register_pos" in missing
    assert all(not name.startswith("ema.") for name in missing)  # the EMA copy is frozen


def test_scd_plan_covers_encoder_and_decoder():
    scd = SCD(tokenizer=PatchTokenizer(image_size=16, channels=1, patch_size=8), preset="scd_tiny")
    args = _strategy_args("configs/scd_fsdp.yaml")
    plan = sharding_plan(scd, args["wrap_classes"], args["forward_methods"])

    assert sorted(unit.name for unit in plan) == ["ema.module.decoder", "ema.module.encoder", "network.decoder", "network.encoder"]
    assert unsharded_trainable_parameters(scd, plan) == []


def test_plan_rejects_unknown_class_and_method(unite):
    with pytest.raises(ValueError, match="cannot import class 'unisep.networks.nothing.Block'"):
        sharding_plan(unite, ["unisep.networks.nothing.Block"])
    with pytest.raises(ValueError, match="forward_methods lists 'sample'"):
        sharding_plan(unite, UNITE_WRAP_CLASSES, {"unisep.networks.unite.UniteNetwork": ["sample"]})


def test_strategy_rejects_bad_settings():
    with pytest.raises(ValueError, match="wrap_classes is empty"):
        FullyShardedStrategy(wrap_classes=[])
    with pytest.raises(ValueError, match="param_dtype must name a torch dtype"):
        FullyShardedStrategy(param_dtype="bf16")
    strategy = FullyShardedStrategy(param_dtype="bfloat16", reduce_dtype="float32")
    assert (strategy.param_dtype, strategy.reduce_dtype) == (torch.bfloat16, torch.float32)


def test_muon_is_rejected(unite):
    if not hasattr(torch.optim, "Muon"):
        pytest.skip("torch.optim.Muon needs PyTorch >= 2.9")
    _reject_matrix_optimizers([build_optimizer(unite.network.named_parameters(), "adamw")])

    with pytest.raises(ValueError, match="optimizer 'muon' cannot run under FullyShardedStrategy"):
        _reject_matrix_optimizers([build_optimizer(unite.network.named_parameters(), "muon")])


def test_replace_folder_swaps_complete_checkpoint(tmp_path):
    target, staging = tmp_path / "last.ckpt", tmp_path / ".last.ckpt.partial"
    for folder, text in ((target, "old"), (staging, "new")):
        folder.mkdir()
        (folder / "meta.pt").write_text(text)

    _replace_folder(staging, target)

    assert (target / "meta.pt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_optimizer_state_ids_follow_group_order():
    state = {
        "state": {"b.weight": {"step": 1}, "a.weight": {"step": 2}},
        "param_groups": [{"lr": 0.1, "params": ["b.weight"]}, {"lr": 0.2, "params": ["a.weight", "c.bias"]}],
    }

    converted = optimizer_state_by_index(state)

    assert converted["param_groups"] == [{"lr": 0.1, "params": [0]}, {"lr": 0.2, "params": [1, 2]}]
    assert converted["state"] == {0: {"step": 1}, 1: {"step": 2}}


def test_consolidate_rejects_unfinished_folder(tmp_path):
    sharded = tmp_path / "step=10.ckpt"
    sharded.mkdir()
    (sharded / "meta.pt").write_bytes(b"")

    with pytest.raises(FileNotFoundError, match=r"\.metadata is missing"):
        consolidate_checkpoint(sharded, tmp_path / "out.ckpt")


@pytest.mark.parametrize("config", ["configs/unite_large_fsdp.yaml", "configs/scd_fsdp.yaml"])
def test_fsdp_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["strategy"]["class_path"] == "unisep.training.fsdp.FullyShardedStrategy"
    assert isinstance(printed["trainer"]["limit_val_batches"], int)


def test_bf16_precision_clips_fused_optimizer():
    from lightning.pytorch.plugins.precision import MixedPrecision

    from unisep.training.precision import BF16MixedPrecision

    weight = torch.nn.Parameter(torch.zeros(4))
    weight.grad = torch.full((4,), 10.0)
    optimizer = torch.optim.AdamW([weight], fused=True)
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
        MixedPrecision("bf16-mixed", device="cpu").clip_gradients(optimizer, 1.0)

    BF16MixedPrecision(device="cpu").clip_gradients(optimizer, 1.0)

    torch.testing.assert_close(weight.grad.norm(), torch.tensor(1.0), rtol=1e-4, atol=1e-4)
