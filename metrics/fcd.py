"""Fréchet ChemNet Distance (FCD) between two sets of SMILES, offline.

FCD is the Fréchet distance between Gaussians fitted to the penultimate ChemNet
activations (512-d) of two molecule sets. The `fcd-torch` package (MIT, version 1.0.7
checked) ships the ChemNet weights as `ChemNet_v0.13_pretrained.pt` beside its code,
so nothing is downloaded. This module locates that file and fails with instructions
when it is missing.

Both sets are canonicalised by fcd-torch before embedding. The distance itself is
computed by `frechet_distance` (eigenvalue form, float64) instead of fcd-torch's
`scipy.linalg.sqrtm`, which takes seconds per call on 512 x 512 rank-deficient
covariances. With few samples the covariance estimate is poor and FCD is biased
upwards; compare values only at equal sample counts.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from unisep.metrics.frechet import frechet_distance, mean_and_covariance

CHEMNET_FILE = "ChemNet_v0.13_pretrained.pt"


def default_chemnet_path() -> Path:
    """Return the path of the ChemNet weights shipped with `fcd-torch`.

    Raises:
        FileNotFoundError: if `fcd-torch` is not installed or lacks the file.
    """
    spec = importlib.util.find_spec("fcd_torch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the ChemNet weights for FCD ({CHEMNET_FILE}) were not found because the "
            "package fcd-torch is not installed; install it with `pip install --no-deps fcd-torch` "
            "or pass the path of the file as chemnet_path"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / CHEMNET_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"the ChemNet weights for FCD were not found at {path}; reinstall fcd-torch "
            "(`pip install --no-deps --force-reinstall fcd-torch`) or pass the file's path as chemnet_path"
        )
    return path


@lru_cache(maxsize=2)
def _load_fcd(path: str, device: str, batch_size: int):
    from fcd_torch import FCD

    return FCD(device=device, n_jobs=1, batch_size=batch_size, model_path=path)


def frechet_chemnet_distance(
    generated_smiles: Sequence[str],
    reference_smiles: Sequence[str],
    *,
    chemnet_path: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 512,
) -> float:
    """Compute FCD between generated and reference SMILES.

    Args:
        generated_smiles: SMILES of the (valid) generated molecules.
        reference_smiles: SMILES of reference molecules, e.g. the test split.
        chemnet_path: ChemNet weight file; the one shipped with fcd-torch when None.
        device: torch device for ChemNet, e.g. "cpu" or "cuda:0".
        batch_size: SMILES per ChemNet forward pass.

    Returns:
        The distance, or NaN when either set has fewer than two molecules (no
        covariance can be estimated).
    """
    path = Path(chemnet_path) if chemnet_path is not None else default_chemnet_path()
    if not path.is_file():
        raise FileNotFoundError(f"ChemNet weight file {path} does not exist; pass the path of {CHEMNET_FILE}")
    if len(generated_smiles) < 2 or len(reference_smiles) < 2:
        return math.nan
    fcd = _load_fcd(str(path), device, batch_size)
    generated = mean_and_covariance(fcd.get_predictions(list(generated_smiles)))
    reference = mean_and_covariance(fcd.get_predictions(list(reference_smiles)))
    return frechet_distance(*generated, *reference)
