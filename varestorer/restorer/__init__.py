"""The coarse stage-1 restorer: DiffBIR's SwinIR, run on a degraded image before the VAE."""

from .loading import RESTORER_FILE, load_restorer, restorer_config_from_state, save_restorer
from .swinir import ARCHITECTURES, RELEASE_CONFIG, SwinIR

__all__ = [
    "ARCHITECTURES",
    "RELEASE_CONFIG",
    "RESTORER_FILE",
    "SwinIR",
    "load_restorer",
    "restorer_config_from_state",
    "save_restorer",
]
