"""Plain `nn.Module` networks. Nothing here imports Lightning or data code."""

from unisep.networks.generative_encoder import GenerativeEncoder
from unisep.networks.modality import DecoderSize, Modality, modality_from_config
from unisep.networks.pixel import ImageModality, PixelDecoder
from unisep.networks.presets import UNITE_PRESETS, UniteSize, unite_preset
from unisep.networks.unite import UniteNetwork

__all__ = [
    "DecoderSize",
    "GenerativeEncoder",
    "ImageModality",
    "Modality",
    "PixelDecoder",
    "UNITE_PRESETS",
    "UniteNetwork",
    "UniteSize",
    "modality_from_config",
    "unite_preset",
]
