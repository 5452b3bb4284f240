"""unisep: UNITE and SCD generative models on PyTorch Lightning."""

__version__ = "0.1.0"
