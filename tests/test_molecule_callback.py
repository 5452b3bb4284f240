"""End-to-end check of the molecule metrics callback on a two-step fit."""

from __future__ import annotations

import json

import torch
from lightning import Trainer
from lightning.pytorch.loggers import CSVLogger
from rdkit import Chem

from unisep.callbacks.molecule_metrics import MoleculeMetrics
from unisep.datamodules.molecule_sources import load_qm9pack_table
from unisep.datamodules.molecule_writer import write_molecule_shards
from unisep.datamodules.molecules import MoleculeDataModule
from unisep.lightning_modules import UNITE
from unisep.networks.molecule import MoleculeModality

REQUIRED_KEYS = (
    "match_rate",
    "rmsd",
    "validity",
    "uniqueness",
    "novelty",
    "atom_stability",
    "molecule_stability",
    "fcd",
)


def test_callback_writes_metrics_and_files(tmp_path):
    table = load_qm9pack_table()
    for split, count in (("train", 40), ("val", 16)):
        write_molecule_shards("qm9pack", None, tmp_path / split, split=split, limit=count, qm9pack_table=table, progress=False)
    datamodule = MoleculeDataModule(
        train_shards=str(tmp_path / "train"), val_shards=str(tmp_path / "val"), batch_size=8, num_workers=0
    )
    torch.manual_seed(0)
    model = UNITE(MoleculeModality(), preset="unite_tiny_qm9", num_classes=1, lr=1e-3, sample_steps=2)
    trainer = Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=CSVLogger(tmp_path / "runs"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[MoleculeMetrics(num_samples=12, batch_size=6, solver="euler", steps=2, grid_size=6)],
    )

    trainer.fit(model, datamodule=datamodule)

    run_dir = tmp_path / "runs" / "lightning_logs" / "version_0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in REQUIRED_KEYS:
        assert key in metrics, key
    assert metrics["num_samples"] == 12
    assert metrics["num_reconstructed"] == 16
    assert 0.0 <= metrics["match_rate"] <= 1.0
    assert metrics["molecule_protocol"]["solver"] == "euler"
    assert metrics["molecule_protocol"]["novelty_reference_molecules"] == 40
    records = list(Chem.SDMolSupplier(str(run_dir / "samples.sdf"), sanitize=False, removeHs=False))
    assert len(records) == 12
    assert (run_dir / "samples.png").stat().st_size > 1000
