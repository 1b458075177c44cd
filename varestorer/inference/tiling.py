"""Restoring images larger than the model's resolution: overlapping tiles, blended.

Tiles of ``tile`` pixels step by ``tile - overlap``; the last tile of a row/column is
aligned to the border. ``weights="linear"``: each tile's output is weighted by a ramp that falls
linearly to a small floor over the overlap, so neighbouring tiles cross-fade and the weights sum
to one. ``weights="gaussian"`` (the released VARestorer's ``--tiled``): the image is first
reflect-padded by the overlap on every side, each tile is weighted by a 2-D Gaussian centred on it
(sigma 0.1 tile), and the padding is cropped off after blending.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..export.config import TILE_WEIGHTS


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    if stride <= 0:
        raise ValueError(f"overlap ({overlap}) must be smaller than the tile ({tile})")
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _ramp(tile: int, overlap: int, device, dtype) -> Tensor:
    w = torch.ones(tile, device=device, dtype=dtype)
    if overlap > 0:
        edge = torch.linspace(0.0, 1.0, overlap + 2, device=device, dtype=dtype)[1:-1]
        w[:overlap] = edge
        w[-overlap:] = edge.flip(0)
    return w


def _gaussian(tile: int, overlap: int, device, dtype) -> Tensor:
    """The release's tile weights along one axis: ``exp(-(x - (T-1)/2)^2 / T^2 / 0.02)``, divided
    by their maximum (so is the 2-D weight, their outer product)."""
    x = torch.arange(tile, device=device, dtype=dtype)
    g = torch.exp(-((x - (tile - 1) / 2) ** 2) / tile**2 / (2 * 0.01))
    return g / g.max()


def restore_tiled(
    image: Tensor,
    restore: Callable[[Tensor], Tensor],
    tile: int,
    overlap: int = 64,
    batch_size: int = 4,
    weights: str = "linear",
) -> Tensor:
    """Apply ``restore`` ((N, 3, tile, tile) -> same) over ``image`` (1, 3, H, W), H and W >= tile,
    blending the tiles with ``weights`` (``linear`` or ``gaussian``, see the module doc)."""
    if weights not in TILE_WEIGHTS:
        raise ValueError(f"weights must be one of {TILE_WEIGHTS}, got {weights!r}")
    _, c, h, w = image.shape
    if h < tile or w < tile:
        raise ValueError(f"image {h}x{w} is smaller than a tile ({tile}); resize it instead")
    pad = overlap if weights == "gaussian" else 0
    if pad:
        image = F.pad(image, (pad,) * 4, mode="reflect")
    H, W = image.shape[-2:]
    boxes = [(y, x) for y in tile_starts(H, tile, overlap) for x in tile_starts(W, tile, overlap)]
    out = torch.zeros(1, c, H, W, device=image.device, dtype=torch.float32)
    weight = torch.zeros(1, 1, H, W, device=image.device, dtype=torch.float32)
    ramp = (_ramp if weights == "linear" else _gaussian)(tile, overlap, image.device, torch.float32)
    mask = (ramp[:, None] * ramp[None, :])[None, None]
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i : i + batch_size]
        tiles = torch.cat([image[:, :, y : y + tile, x : x + tile] for y, x in chunk])
        restored = restore(tiles).float()
        for (y, x), r in zip(chunk, restored):
            out[:, :, y : y + tile, x : x + tile] += r[None] * mask
            weight[:, :, y : y + tile, x : x + tile] += mask
    return (out / weight.clamp_min(1e-8))[:, :, pad : pad + h, pad : pad + w]
