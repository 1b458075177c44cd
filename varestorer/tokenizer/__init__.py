"""The tokenizer: Infinity's BSQ-VAE and its multi-scale bitwise quantization."""

from .quantizer import BSQ, MultiScaleBSQ, MultiScaleTokens
from .schedules import SQUARE_SIDES, num_tokens, scale_schedule
from .vae import BSQVAE

__all__ = ["BSQ", "BSQVAE", "MultiScaleBSQ", "MultiScaleTokens", "SQUARE_SIDES", "num_tokens", "scale_schedule"]
