"""Throughput callback: window arithmetic, logged values, fit summary and the GPU peak table."""

from __future__ import annotations

import json

import pytest
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from unisep.callbacks.throughput import Throughput, batch_size_of, peak_bf16_flops, peak_memory_gib


class Regression(LightningModule):
    """Linear regression on random data, with the optional attributes Throughput reads."""

    tokens_per_sample = 4
    flops_per_sample = 6 * 8

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return torch.nn.functional.mse_loss(self.layer(inputs), targets)

    def validation_step(self, batch, batch_idx):
        inputs, targets = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(inputs), targets))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader(batches: int, batch_size: int = 5) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(batches * batch_size, 8, generator=generator), torch.randn(batches * batch_size, 1, generator=generator))
    return DataLoader(data, batch_size=batch_size)


@pytest.fixture
def fitted(tmp_path) -> tuple[Throughput, Trainer]:
    callback = Throughput(log_every_n_steps=3, peak_flops_per_device=1e9)
    trainer = Trainer(
        max_epochs=1, accelerator="cpu", logger=CSVLogger(tmp_path), callbacks=[callback], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, val_check_interval=5, num_sanity_val_steps=0,
    )
    trainer.fit(Regression(), loader(9), loader(2))
    return callback, trainer


def test_window_values_are_logged(fitted):
    callback, trainer = fitted

    values = callback.last_values

    assert values["throughput/samples_per_sec"] > 0
    assert values["throughput/samples_per_sec_per_device"] == pytest.approx(values["throughput/samples_per_sec"])
    assert values["throughput/tokens_per_sec"] == pytest.approx(4 * values["throughput/samples_per_sec"])
    assert values["throughput/step_time_ms"] == pytest.approx(1000 * 5 / values["throughput/samples_per_sec"])
    assert values["throughput/mfu"] == pytest.approx(values["throughput/samples_per_sec_per_device"] * 48 / 1e9)
    assert values["memory/peak_gib"] > 0
    assert "throughput/samples_per_sec" in trainer.progress_bar_metrics


def test_logger_receives_every_window(fitted):
    _, trainer = fitted

    with open(f"{trainer.logger.log_dir}/metrics.csv") as handle:
        rows = handle.read().splitlines()

    header = rows[0].split(",")
    column = header.index("throughput/samples_per_sec")
    logged = [row.split(",")[column] for row in rows[1:] if row.split(",")[column]]
    assert len(logged) == 3  # 9 batches in windows of 3


def test_fit_summary_in_metrics_json(fitted):
    _, trainer = fitted

    summary = json.loads(open(trainer.log_dir + "/metrics.json").read())["throughput"]

    assert summary["measured_batches"] == 6  # the first window is left out
    assert summary["samples_per_sec"] > 0
    assert summary["peak_memory_kind"] == "process_peak_rss"
    assert summary["peak_memory_gib"] > 0.01


def test_fit_summary_line_is_printed(tmp_path, caplog):
    trainer = Trainer(
        max_steps=4, accelerator="cpu", logger=False, callbacks=[Throughput(log_every_n_steps=2)], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
    )

    with caplog.at_level("INFO"):
        trainer.fit(Regression(), loader(4))

    assert "Throughput:" in caplog.text
    assert "samples/s" in caplog.text
    assert "peak memory" in caplog.text


def test_batch_size_of_nested_batches():
    assert batch_size_of({"image": torch.zeros(7, 3), "label": torch.zeros(7)}) == 7
    assert batch_size_of([torch.zeros(3, 2), torch.zeros(3)]) == 3
    assert batch_size_of({"meta": "x", "frames": [torch.zeros(2, 5)]}) == 2


@pytest.mark.parametrize(
    ("name", "flops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989.4e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA L40S", None),
        ("NVIDIA GeForce RTX 3090", None),
    ],
)
def test_peak_flops_table(name, flops):
    assert peak_bf16_flops(name) == flops


def test_cpu_peak_memory_is_process_rss():
    memory, kind = peak_memory_gib(torch.device("cpu"))

    assert kind == "process_peak_rss"
    assert 0.01 < memory < 1024


def test_rejects_bad_interval():
    with pytest.raises(ValueError, match="log_every_n_steps"):
        Throughput(log_every_n_steps=0)
