"""End-of-fit molecule evaluation: reconstruction and generation metrics, SDF and PNG.

At the end of `fit` this callback writes into the run folder (`trainer.log_dir`):

- `metrics.json` keys `match_rate`, `rmsd` (angstrom, mean over matched molecules),
  `rmsd_all`, `element_match_rate`, `validity`, `uniqueness`, `novelty`, `connected`,
  `atom_stability`, `molecule_stability`, `fcd`, the sample counts and
  `molecule_protocol` (sampler settings and metric conventions);
- `samples.sdf`: every generated molecule with its 3-D coordinates (bonds where valid);
- `samples.png`: 2-D depictions of the first generated molecules.

Reconstructions use the validation stream of the data module; generation draws
`num_samples` molecules with the model's EMA weights. Novelty is measured against the
training shards' SMILES and FCD against the validation shards' SMILES.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from unisep.callbacks.metrics_file import update_metrics_json
from unisep.datamodules.molecule_vocabulary import ElementVocabulary
from unisep.metrics.molecule_files import draw_molecule_grid, write_sdf
from unisep.metrics.molecule_reconstruction import DEFAULT_RMSD_THRESHOLD, MoleculeReconstruction
from unisep.metrics.molecule_report import generation_report
from unisep.metrics.molecules import FragmentRule, to_atom_clouds

logger = logging.getLogger(__name__)


class MoleculeMetrics(Callback):
    """Evaluate a molecule UNITE model at the end of fit and write the results.

    Args:
        num_samples: molecules to generate.
        batch_size: generation batch size.
        solver, steps, guidance_scale: sampling settings (None = the module's defaults).
        recon_batches: validation batches to reconstruct (None = all).
        rmsd_threshold: reconstruction match threshold in angstrom.
        fragments: validity rule, "largest" (EDM) or "single".
        fcd: compute FCD against the validation SMILES.
        grid_size: molecules drawn in `samples.png`.
        seed: noise seed of the samples.
    """

    def __init__(
        self,
        num_samples: int = 1000,
        batch_size: int = 250,
        solver: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        recon_batches: int | None = None,
        rmsd_threshold: float = DEFAULT_RMSD_THRESHOLD,
        fragments: FragmentRule = "largest",
        fcd: bool = True,
        grid_size: int = 32,
        seed: int = 0,
    ):
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.solver = solver
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.recon_batches = recon_batches
        self.rmsd_threshold = rmsd_threshold
        self.fragments = fragments
        self.fcd = fcd
        self.grid_size = grid_size
        self.seed = seed

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # NOTE: under DDP only rank 0 evaluates, and it reconstructs only its share of
        # the validation shards.
        run_dir = Path(trainer.log_dir or ".")
        datamodule = trainer.datamodule
        atomic_numbers = ElementVocabulary(pl_module.modality.elements).atomic_numbers
        start = time.perf_counter()

        metrics: dict[str, Any] = {"global_step": trainer.global_step}
        metrics.update(self._reconstruction(datamodule, pl_module))

        clouds = self._generate(pl_module, atomic_numbers)
        training_smiles = datamodule.training_smiles() if hasattr(datamodule, "training_smiles") else None
        reference = datamodule.validation_smiles() if self.fcd and hasattr(datamodule, "validation_smiles") else None
        report, checks = generation_report(
            clouds, training_smiles=training_smiles, fcd_reference_smiles=reference, fragments=self.fragments
        )
        metrics.update(report)
        metrics["molecule_protocol"] = self._protocol(pl_module, num_training=None if training_smiles is None else len(training_smiles))

        write_sdf(clouds, run_dir / "samples.sdf", checks)
        draw_molecule_grid(clouds, run_dir / "samples.png", checks, max_molecules=self.grid_size)
        update_metrics_json(run_dir, metrics)
        self._log(trainer, metrics)

        logger.info("Molecule evaluation took %.1f s", time.perf_counter() - start)
        print(f"\nRun folder: {run_dir.resolve()}")
        print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2, default=str))

    def _reconstruction(self, datamodule: Any, pl_module: LightningModule) -> dict[str, Any]:
        loader = datamodule.val_dataloader() if datamodule is not None else None
        if not loader:
            logger.warning("No validation stream: reconstruction metrics skipped")
            return {}
        metric = MoleculeReconstruction(self.rmsd_threshold).to(pl_module.device)
        for index, batch in enumerate(loader):
            if self.recon_batches is not None and index >= self.recon_batches:
                break
            batch = {k: v.to(pl_module.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            output = pl_module.reconstruct(batch)
            metric.update(output["elements"], output["positions"], batch["elements"], batch["positions"], batch["mask"])
        values = {name: float(value) for name, value in metric.compute().items()}
        values["num_reconstructed"] = int(metric.total)
        return values

    def _generate(self, pl_module: LightningModule, atomic_numbers: tuple[int, ...]) -> list:
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        clouds = []
        for start in range(0, self.num_samples, self.batch_size):
            count = min(self.batch_size, self.num_samples - start)
            labels = torch.zeros(count, dtype=torch.long)
            output = pl_module.generate(
                labels, solver=self.solver, steps=self.steps, guidance_scale=self.guidance_scale, generator=generator
            )
            clouds += to_atom_clouds(output["elements"], output["positions"], atomic_numbers)
        return clouds

    def _protocol(self, pl_module: LightningModule, num_training: int | None) -> dict[str, Any]:
        hp = pl_module.hparams
        return {
            "num_samples": self.num_samples,
            "solver": self.solver or hp.get("sample_solver"),
            "steps": self.steps or hp.get("sample_steps"),
            "guidance_scale": hp.get("guidance_scale") if self.guidance_scale is None else self.guidance_scale,
            "ema": bool(getattr(pl_module, "use_ema_for_eval", True)),
            "rmsd_threshold_angstrom": self.rmsd_threshold,
            "rmsd": "mean over matched molecules, Kabsch-aligned",
            "validity_fragments": self.fragments,
            "bonds": "RDKit DetermineBonds, van der Waals radii x 1.15, total charge 0",
            "validity": "sanitised, no radicals, formal charges within +-1, neutral hydrogens",
            "novelty_reference_molecules": num_training,
            "fcd_reference": "validation split" if self.fcd else None,
        }

    @staticmethod
    def _log(trainer: Trainer, metrics: dict[str, Any]) -> None:
        scalars = {
            f"molecules/{name}": float(value)
            for name, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        for experiment_logger in trainer.loggers:
            experiment_logger.log_metrics(scalars, step=trainer.global_step)
