"""Lightning callbacks: sample grids, run summaries and evaluation."""

from unisep.callbacks.run_summary import RunSummary
from unisep.callbacks.sample_grid import SampleGrid

__all__ = ["RunSummary", "SampleGrid"]
