"""Seeds and worker identity shared by the data streams.

Every random choice of a stream (shard order, shuffle buffer, flips, clip starts) is
seeded from integers such as ``(seed, epoch, rank, worker)``, so a run is reproducible
and a resumed run can rebuild the stream of an interrupted epoch.
"""

from __future__ import annotations

import numpy as np
import torch


def worker_info() -> tuple[int, int]:
    """Return ``(worker_id, num_workers)`` of the current DataLoader worker, ``(0, 1)`` outside one."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def derive_seed(*parts: int) -> int:
    """Mix integers into one 64-bit seed with numpy's SeedSequence (well spread for nearby inputs)."""
    return int(np.random.SeedSequence([p % (1 << 64) for p in parts]).generate_state(1, np.uint64)[0])
