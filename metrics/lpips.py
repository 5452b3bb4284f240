"""LPIPS perceptual distance (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep
Features as a Perceptual Metric"), VGG16 variant, in plain torch.

Two files are needed and both are loaded from paths, never downloaded:

- the VGG16 ImageNet backbone in torchvision's layout (`vgg16-397923af.pth`, keys
  `features.<i>.weight`); copy it from a machine with internet;
- the LPIPS v0.1 linear heads (`vgg.pth`), which the `lpips` package ships inside
  `lpips/weights/v0.1/` (`pip install --no-deps lpips`).

torchvision is not used: its PyPI wheels do not import next to every torch build.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# VGG16 "D" configuration: channel counts, "M" = 2x2 max pool.
_VGG16_LAYERS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
# LPIPS reads the activations after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3:
# indices into torchvision's `features` Sequential.
_TAP_INDICES = (3, 8, 15, 22, 29)
_TAP_CHANNELS = (64, 128, 256, 512, 512)
# Input normalisation of LPIPS ("ScalingLayer"), for images in [-1, 1].
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def packaged_head_path() -> Path | None:
    """Path of the VGG heads file shipped by the `lpips` package, if it is installed."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "weights" / "v0.1" / "vgg.pth"
    return path if path.exists() else None


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for item in _VGG16_LAYERS:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            in_channels = item
    return nn.Sequential(*layers)


def _require_file(path: str | Path | None, what: str, how: str) -> Path:
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(f"{what} not found at {path!r}. {how}")
    return Path(path)


class LPIPS(nn.Module):
    """LPIPS-VGG distance between images in [-1, 1]; returns one value per image.

    Args:
        vgg_path: torchvision VGG16 ImageNet weights (`vgg16-397923af.pth`).
        head_path: LPIPS v0.1 `vgg.pth` heads; default: the file the `lpips` package ships.
    """

    def __init__(self, vgg_path: str | Path, head_path: str | Path | None = None):
        super().__init__()
        vgg_file = _require_file(
            vgg_path,
            "VGG16 backbone for LPIPS",
            "Copy torchvision's vgg16-397923af.pth (from download.pytorch.org/models) to this "
            "machine and pass its path, or set the LPIPS weight to 0.",
        )
        head_file = _require_file(
            head_path or packaged_head_path(),
            "LPIPS linear heads (vgg.pth, v0.1)",
            "Install them with `pip install --no-deps lpips` or pass the file's path.",
        )
        self.features = _vgg16_features()[: _TAP_INDICES[-1] + 1]
        state = torch.load(vgg_file, map_location="cpu", weights_only=True)
        features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        self.features.load_state_dict(features, strict=False)
        missing = [k for k in self.features.state_dict() if k not in features]
        if missing:
            raise ValueError(f"{vgg_file} is not a torchvision VGG16 file: missing keys {missing[:4]}")

        heads = torch.load(head_file, map_location="cpu", weights_only=True)
        self.heads = nn.ParameterList(
            [nn.Parameter(heads[f"lin{i}.model.1.weight"], requires_grad=False) for i in range(len(_TAP_CHANNELS))]
        )
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)

    def _taps(self, x: Tensor) -> list[Tensor]:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _TAP_INDICES:
                taps.append(x)
        return taps

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Distance between x and y, (batch, C, H, W) in [-1, 1] with C = 1 or 3.

        Returns:
            (batch,) LPIPS distances. Gradients flow to x and y, not to the weights.
        """
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        x = (x - self.shift) / self.scale
        y = (y - self.shift) / self.scale
        distance = x.new_zeros(x.shape[0])
        for feat_x, feat_y, head in zip(self._taps(x), self._taps(y), self.heads):
            diff = (F.normalize(feat_x, dim=1, eps=1e-10) - F.normalize(feat_y, dim=1, eps=1e-10)) ** 2
            distance = distance + F.conv2d(diff, head.to(diff.dtype)).mean(dim=(1, 2, 3))
        return distance
