"""Check generated digits with a classifier trained on the real scikit-learn digits.

A sample counts as correct when a logistic-regression classifier, trained on the real
digits at the samples' resolution, predicts the label the sample was generated for.
It is a sanity check for the demo, not a standard metric.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def _resize_digits(size: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Same pipeline as the demo shards: 0..16 -> 0..255, bicubic upsampling.
    images = (digits.images / 16.0 * 255.0).astype(np.float32)
    resized = np.stack(
        [np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC)) for img in images]
    )
    return np.clip(resized, 0, 255) / 255.0, digits.target


def digits_classifier_accuracy(images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of generated digits classified as their requested label.

    Args:
        images: uint8 (N, H, W) or (N, H, W, 1), square.
        labels: (N,) requested labels in 0..9.
    """
    from sklearn.linear_model import LogisticRegression

    images = np.asarray(images)
    if images.ndim == 4:
        images = images[..., 0]
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    real, targets = _resize_digits(images.shape[1])
    classifier = LogisticRegression(max_iter=2000)
    classifier.fit(real.reshape(len(real), -1), targets)
    predictions = classifier.predict(images.reshape(len(images), -1).astype(np.float32) / 255.0)
    return float((predictions == np.asarray(labels)).mean())
