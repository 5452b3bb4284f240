"""The `unisep` command: config printing, bad keys, and an end-to-end demo fit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from unisep.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_print_config_shows_unite_b_recipe(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs/unite.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    model = printed["model"]["init_args"]
    assert model["preset"] == "unite_base"
    assert model["denoising_passes"] == 3
    assert model["optimizer"] == "muon"
    assert model["ema_decay"] == 0.9978
    assert model["modality"]["init_args"]["image_size"] == 256
    assert printed["trainer"]["gradient_clip_val"] == 3.0


def test_unknown_config_key_is_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs/demo/unite_digits.yaml"), "--model.init_args.denoising_pases", "2"])
    assert exit_info.value.code != 0
    assert "denoising_pases" in capsys.readouterr().err


def test_unknown_command_is_rejected(capsys):
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_missing_shards_error_names_path_and_command(tmp_path, capsys):
    config = yaml.safe_load((REPO / "configs/demo/unite_digits.yaml").read_text())
    data = config["data"]["init_args"]
    data.pop("demo")
    data["train_shards"] = str(tmp_path / "nowhere")
    data["val_shards"] = str(tmp_path / "nowhere")
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(FileNotFoundError) as error:
        main(["fit", "--config", str(path)])
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message
    assert "unisep data images" in message


@pytest.mark.slow
def test_demo_fit_writes_run_folder(tmp_path, capsys):
    config = yaml.safe_load((REPO / "configs/demo/unite_digits.yaml").read_text())
    config["trainer"]["max_steps"] = 12
    config["trainer"]["check_val_every_n_epoch"] = 1
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    config["data"]["init_args"]["demo_root"] = str(tmp_path / "data")
    config["data"]["init_args"]["batches_per_epoch"] = 6
    config["data"]["init_args"]["batch_size"] = 16
    # FID has its own tests; Inception on CPU would dominate this run's time.
    config["trainer"]["callbacks"] = [
        callback for callback in config["trainer"]["callbacks"] if not callback["class_path"].endswith("FID")
    ]
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("RunSummary"):
            callback["init_args"].update(per_class=3, grid_per_class=3, steps=2, recon_batches=2)
        if callback["class_path"].endswith("SampleGrid"):
            callback["init_args"].update(steps=2, per_class=2)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))

    main(["fit", "--config", str(path)])

    run = tmp_path / "runs" / "unite_digits" / "version_0"
    assert f"Run folder: {run.resolve()}" in capsys.readouterr().out
    for name in ("config.yaml", "samples.png", "samples/final.png", "reconstructions.png", "metrics.json", "samples.npz", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(metrics["recon_psnr"])
    assert "train/recon/l1" in metrics
    assert 0.0 <= metrics["sample_accuracy"] <= 1.0
    samples = np.load(run / "samples.npz")
    assert samples["images"].dtype == np.uint8
    assert samples["images"].shape == (30, 16, 16, 1)
    assert sorted(set(samples["labels"].tolist())) == list(range(10))

    # The checkpoint feeds `unisep sample`.
    out = tmp_path / "sampled.npz"
    assert main(["sample", "--ckpt", str(run / "checkpoints/last.ckpt"), "--per-class", "2", "--steps", "2", "--out", str(out)]) == 0
    sampled = np.load(out)
    assert sampled["images"].shape == (20, 16, 16, 1)
    assert out.with_suffix(".png").is_file()


def test_bf16_mixed_fit_clips_fused_adamw(tmp_path):
    """The GPU recipes set bf16-mixed, gradient clipping and the fused AdamW kernel.

    Lightning 2.6 alone raises at the first clip ("Are you using a 'fused' optimizer?");
    the CLI swaps in a plugin that clips. Run here on the CPU with bf16 autocast.
    """
    config = yaml.safe_load((REPO / "configs/demo/unite_digits.yaml").read_text())
    trainer = config["trainer"]
    trainer.update(max_steps=2, precision="bf16-mixed", gradient_clip_val=0.5, check_val_every_n_epoch=100)
    trainer["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    trainer["callbacks"] = [c for c in trainer["callbacks"] if c["class_path"].endswith("TorchThreads")]
    trainer["enable_checkpointing"] = False
    config["data"]["init_args"].update(demo_root=str(tmp_path / "data"), batches_per_epoch=2, batch_size=8)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))

    from unisep.cli import UnisepCLI
    from unisep.lightning_modules.optim import adamw_kernel
    from unisep.training.precision import BF16MixedPrecision

    cli = UnisepCLI(args=["fit", "--config", str(path)])

    assert type(cli.trainer.precision_plugin) is BF16MixedPrecision
    assert cli.trainer.global_step == 2
    assert adamw_kernel(cli.model.parameters()) == {"fused": True}


def test_cli_labels_step_limited_progress(tmp_path):
    from unisep.callbacks.progress_bar import StepLimitedRichProgressBar
    from unisep.cli import UnisepCLI

    config = yaml.safe_load((REPO / "configs/demo/unite_digits.yaml").read_text())
    config["data"]["init_args"]["demo_root"] = str(tmp_path / "data")
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))

    cli = UnisepCLI(args=["--config", str(path)], run=False)

    bars = [callback for callback in cli.trainer.callbacks if isinstance(callback, StepLimitedRichProgressBar)]
    assert len(bars) == 1
