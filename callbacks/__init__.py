"""Lightning callbacks: sample grids, run summaries, evaluation and timing."""

from unisep.callbacks.fid import GenerationFID, ReconstructionFID
from unisep.callbacks.run_summary import RunSummary
from unisep.callbacks.sample_grid import SampleGrid
from unisep.callbacks.throughput import Throughput
from unisep.callbacks.torch_threads import TorchThreads

__all__ = ["GenerationFID", "ReconstructionFID", "RunSummary", "SampleGrid", "Throughput", "TorchThreads"]
