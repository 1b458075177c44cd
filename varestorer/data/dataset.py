"""Reading a prepared dataset (``varestorer prepare``) for training.

    from varestorer.data.dataset import PreparedDataset, iter_prepared
    ds = PreparedDataset("data/lsdir-512", size=512)            # a torch Dataset
    ds[0]  # {"pixel_values": (3, 512, 512) float in [0, 1], "caption": str, "index": 0}
    loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=4)
    for image, caption in iter_prepared("data/lsdir-512", size=512): ...

Recipes point ``data.dataset`` at the folder. Images larger than ``size`` are cropped (a random
crop, a function of ``(seed, epoch, index)`` only, or the center crop); smaller ones (not
written by ``prepare``, which skips them) are resized up. ``datasets.load_from_disk(folder)``
opens the same folder as a plain ``datasets.Dataset`` (``.to_iterable_dataset()`` streams it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import ConfigError
from .images import to_tensor
from .seeds import sample_seeds, split_key


def open_prepared(path: str | Path):
    """The prepared folder as a ``datasets.Dataset`` (memory-mapped Arrow shards)."""
    import datasets

    path = Path(path)
    if not (path / "state.json").exists():
        hint = " (the preparation has not finished a shard yet)" if (path / "prepare.json").exists() else ""
        raise ConfigError(f"{path} is not a dataset written by varestorer prepare{hint}")
    return datasets.load_from_disk(str(path))


def fit_crop(
    image: torch.Tensor, size: int, random_crop: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(3, H, W) -> (3, size, size): resize up if smaller, then a random or the center crop."""
    h, w = image.shape[-2:]
    if min(h, w) < size:
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        image = F.interpolate(image[None], size=(nh, nw), mode="bicubic", align_corners=False)[0].clamp(0, 1)
        h, w = nh, nw
    if random_crop:
        top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    else:
        top, left = (h - size) // 2, (w - size) // 2
    return image[:, top : top + size, left : left + size].contiguous()


class PreparedDataset(Dataset):
    """A prepared folder as training items ``{"pixel_values", "caption", "index", "seed"}`` (module docstring)."""

    def __init__(self, path: str | Path, size: int = 512, random_crop: bool = True, seed: int = 0):
        self.path, self.size, self.random_crop, self.seed = Path(path), int(size), random_crop, int(seed)
        self._ds = open_prepared(self.path)

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, key) -> dict:
        """``key``: an index, or the training sampler's ``(epoch, index)`` (see :mod:`.seeds`)."""
        epoch, index = split_key(key)
        seeds = sample_seeds(self.seed, epoch, index)
        row = self._ds[index]
        crop = torch.Generator().manual_seed(seeds.crop)
        image = fit_crop(to_tensor(row["image"]), self.size, self.random_crop, crop)
        return {"pixel_values": image, "caption": row["caption"] or "", "index": index, "seed": seeds.degradation}


def iter_prepared(
    path: str | Path, size: int = 512, random_crop: bool = True, seed: int = 0, shuffle: bool = False
) -> Iterator[tuple[torch.Tensor, str]]:
    """Yield ``(image (3, size, size) in [0, 1], caption)`` for every row of a prepared folder."""
    ds = PreparedDataset(path, size=size, random_crop=random_crop, seed=seed)
    order = range(len(ds))
    if shuffle:
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed)).tolist()
    for i in order:
        item = ds[i]
        yield item["pixel_values"], item["caption"]
