"""Restoring images larger than the model's resolution: overlapping tiles, blended.

Tiles of ``tile`` pixels step by ``tile - overlap``; the last tile of a row/column is
aligned to the border. Each tile's output is weighted by a ramp that falls linearly to a
small floor over the overlap, so neighbouring tiles cross-fade and the weights sum to one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


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


def restore_tiled(
    image: Tensor, restore: Callable[[Tensor], Tensor], tile: int, overlap: int = 64, batch_size: int = 4
) -> Tensor:
    """Apply ``restore`` ((N, 3, tile, tile) -> same) over ``image`` (1, 3, H, W), H and W >= tile."""
    _, c, h, w = image.shape
    if h < tile or w < tile:
        raise ValueError(f"image {h}x{w} is smaller than a tile ({tile}); resize it instead")
    boxes = [(y, x) for y in tile_starts(h, tile, overlap) for x in tile_starts(w, tile, overlap)]
    out = torch.zeros(1, c, h, w, device=image.device, dtype=torch.float32)
    weight = torch.zeros(1, 1, h, w, device=image.device, dtype=torch.float32)
    ramp = _ramp(tile, overlap, image.device, torch.float32)
    mask = (ramp[:, None] * ramp[None, :])[None, None]
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i : i + batch_size]
        tiles = torch.cat([image[:, :, y : y + tile, x : x + tile] for y, x in chunk])
        restored = restore(tiles).float()
        for (y, x), r in zip(chunk, restored):
            out[:, :, y : y + tile, x : x + tile] += r[None] * mask
            weight[:, :, y : y + tile, x : x + tile] += mask
    return out / weight
