"""Inference: the one-step restoration pipeline, tiling, comparison images."""

from .pipeline import METHODS, VARestorerPipeline

__all__ = ["METHODS", "VARestorerPipeline"]
