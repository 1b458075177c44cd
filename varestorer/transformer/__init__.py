"""Infinity's next-scale transformer, its T5 text encoder, sampling and LoRA."""

from .infinity import DecodeState, InfinityTransformer, TextContext
from .text import TextEncoder, TextFeatures

__all__ = ["DecodeState", "InfinityTransformer", "TextContext", "TextEncoder", "TextFeatures"]
