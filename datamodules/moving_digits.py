"""Moving digits: a synthetic video set built from scikit-learn's handwritten digits.

Each video shows `digits_per_video` real 8 x 8 digits from `sklearn.datasets.load_digits`,
upsampled to `digit_size` pixels, moving in straight lines on a black square canvas and
bouncing off its borders, the construction of Moving MNIST (Srivastava et al. 2015) on
a smaller canvas. Overlapping digits combine with a pixel-wise maximum. Everything is
drawn from one seed, so the same arguments give the same videos.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from unisep.datamodules.digits import digits_to_uint8


def _bounce(position: float, velocity: float, limit: float) -> tuple[float, float]:
    """Advance one step and reflect off the borders of [0, limit], as often as needed."""
    if limit <= 0:
        return 0.0, velocity
    position += velocity
    # A step longer than the interval reflects more than once; each pass shortens the overshoot.
    while position < 0 or position > limit:
        if position < 0:
            position, velocity = -position, -velocity
        else:
            position, velocity = 2 * limit - position, -velocity
    return position, velocity


def make_moving_digits(
    num_videos: int,
    num_frames: int,
    image_size: int = 32,
    digit_size: int | None = None,
    digits_per_video: int = 1,
    max_speed: float = 2.5,
    seed: int = 0,
    digit_indices: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render moving-digit videos.

    Args:
        num_videos: number of videos.
        num_frames: frames per video.
        image_size: side of the square canvas in pixels.
        digit_size: side of each upsampled digit in pixels, at most `image_size`; None
            uses 7/16 of the canvas (14 px on 32 px).
        digits_per_video: digits moving in each video.
        max_speed: maximum speed along each axis, in pixels per frame. Each digit's
            speed is drawn uniformly from [max_speed / 3, max_speed] per axis with a
            random sign, so every digit moves.
        seed: seed of every random choice.
        digit_indices: indices into `load_digits()` that may be drawn (e.g. a train or
            validation split); None allows all 1,797.

    Returns:
        `videos` uint8 (num_videos, num_frames, image_size, image_size, 1) and
        `labels` int64 (num_videos, digits_per_video), the classes of the digits shown.
    """
    if digit_size is None:
        digit_size = max(8, image_size * 7 // 16)
    if digit_size > image_size:
        raise ValueError(f"digit_size {digit_size} must not exceed image_size {image_size}")
    if min(num_videos, num_frames, digits_per_video) < 1:
        raise ValueError(
            f"num_videos, num_frames and digits_per_video must be >= 1, got {num_videos}, {num_frames}, {digits_per_video}"
        )
    digits = load_digits()
    pool = np.arange(len(digits.target)) if digit_indices is None else np.asarray(digit_indices)
    sprites = digits_to_uint8(digits.images[pool], digit_size)

    rng = np.random.default_rng(seed)
    limit = float(image_size - digit_size)
    videos = np.zeros((num_videos, num_frames, image_size, image_size, 1), dtype=np.uint8)
    labels = np.zeros((num_videos, digits_per_video), dtype=np.int64)
    for video in range(num_videos):
        for slot in range(digits_per_video):
            choice = rng.integers(len(pool))
            labels[video, slot] = digits.target[pool[choice]]
            y, x = rng.uniform(0, limit, size=2)
            vy, vx = rng.uniform(max_speed / 3, max_speed, size=2) * rng.choice([-1.0, 1.0], size=2)
            for frame in range(num_frames):
                top, left = int(round(y)), int(round(x))
                window = videos[video, frame, top : top + digit_size, left : left + digit_size, 0]
                np.maximum(window, sprites[choice], out=window)
                y, vy = _bounce(y, vy, limit)
                x, vx = _bounce(x, vx, limit)
    return videos, labels
