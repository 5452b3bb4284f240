"""Fréchet Video Distance (Unterthiner et al. 2018) from a local TorchScript I3D file.

FVD is the Fréchet distance between Gaussians fitted to I3D features of real and
generated videos. No I3D network ships with a package that installs offline, so the
feature extractor is a TorchScript file that the user provides, for example the
`i3d_torchscript.pt` export used by common FVD implementations. It is called as
`model(videos, **call_kwargs)` on videos (batch, 3, frames, 224, 224) in [-1, 1] and must
return features (batch, dim).

NOTE: the export's keyword arguments (e.g. `rescale=False, resize=True,
return_features=True`) and its expected value range differ between exports and were
not checked here against a real file; pass them through `call_kwargs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unisep.metrics.frechet import frechet_distance, mean_and_covariance

I3D_INPUT_SIZE = 224


class I3DFeatures(nn.Module):
    """Frozen TorchScript I3D that maps videos to feature vectors.

    Args:
        path: TorchScript file (`torch.jit.save` output).
        call_kwargs: keyword arguments passed on every call.
        input_size: side the frames are resized to (bilinear).
    """

    def __init__(self, path: str | Path, call_kwargs: dict[str, Any] | None = None, input_size: int = I3D_INPUT_SIZE):
        super().__init__()
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(
                f"I3D file for FVD not found: {file}. Copy a TorchScript I3D export (for example"
                " i3d_torchscript.pt) to this machine and pass its path, or leave the FVD path unset"
                " to skip FVD"
            )
        self.model = torch.jit.load(str(file), map_location="cpu").eval()
        self.call_kwargs = dict(call_kwargs or {})
        self.input_size = input_size

    def train(self, mode: bool = True) -> "I3DFeatures":
        return super().train(False)

    @torch.no_grad()
    def forward(self, videos: Tensor) -> Tensor:
        """Embed videos (batch, frames, channels, H, W) in [-1, 1]; grayscale is repeated to RGB.

        Returns:
            (batch, dim) float32 features.
        """
        batch, frames, channels, height, width = videos.shape
        if channels == 1:
            videos = videos.expand(-1, -1, 3, -1, -1)
        flat = videos.reshape(batch * frames, 3, height, width).float()
        if (height, width) != (self.input_size, self.input_size):
            flat = F.interpolate(flat, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        clips = flat.view(batch, frames, 3, self.input_size, self.input_size).permute(0, 2, 1, 3, 4)
        return self.model(clips.contiguous(), **self.call_kwargs).float().reshape(batch, -1)


def frechet_video_distance(real_features: Tensor, fake_features: Tensor) -> float:
    """FVD between two feature sets (num_videos, dim), each with at least 2 videos."""
    mu_real, sigma_real = mean_and_covariance(real_features)
    mu_fake, sigma_fake = mean_and_covariance(fake_features)
    return frechet_distance(mu_real, sigma_real, mu_fake, sigma_fake)
