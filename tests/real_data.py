"""Small batches of real data for tests."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def real_digits(count: int, size: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch of real scikit-learn digits upsampled to `size`, in [-1, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    index = np.random.default_rng(seed).choice(len(digits.images), count, replace=False)
    images = [
        np.asarray(Image.fromarray((digits.images[i] / 16.0 * 255).astype(np.float32)).resize((size, size), Image.BICUBIC))
        for i in index
    ]
    images = torch.tensor(np.clip(np.stack(images), 0, 255) / 127.5 - 1.0, dtype=torch.float32)
    return {"image": images[:, None], "label": torch.tensor(digits.target[index], dtype=torch.long)}
