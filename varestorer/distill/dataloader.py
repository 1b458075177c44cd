"""The training data loader of a recipe: HQ crops with captions, in a reproducible order.

``data.dataset: skimage`` trains on the photos scikit-image ships (tiny recipe, tests),
``photos`` on the training split of the collection shipped with the package (the ``small`` base's
recipes and the demo); any other value is a folder written by ``varestorer prepare``. Batches are
``{"pixel_values": (B, 3, R, R) in [0, 1], "caption": [str], "index": (B,), "seed": (B,)}``: ``seed``
is each sample's degradation seed (:mod:`varestorer.data.seeds`). The order of an epoch depends only
on ``(train.seed, epoch)``, and every sample's crop and degradation only on
``(train.seed, epoch, index)``, whatever the number of processes: a resumed run sees the same
batches, and an 8-GPU run the same samples as a 1-GPU run at the same global batch.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler

from ..data.dataset import PreparedDataset
from ..data.photos import PhotoCollection
from ..data.samples import SampleImages
from ..errors import ConfigError
from .recipe import Recipe


class EpochShuffleSampler(Sampler[tuple[int, int]]):
    """A permutation of the dataset drawn from ``seed + epoch`` (no global RNG involved), as the
    dataset keys ``(epoch, index)``: the epoch travels with each key to the dataset (and its
    workers), so only this sampler needs ``set_epoch`` (which accelerate forwards to it)."""

    def __init__(self, length: int, seed: int = 0):
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter((self.epoch, i) for i in torch.randperm(self.length, generator=g).tolist())


def collate(items: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack([it["pixel_values"] for it in items]),
        "caption": [it["caption"] for it in items],
        "index": torch.tensor([it["index"] for it in items]),
        "seed": torch.tensor([it["seed"] for it in items], dtype=torch.int64),
    }


class RandomHFlip(torch.utils.data.Dataset):
    """``data.hflip``: each item's image flipped left-right with probability 1/2, drawn from the
    item's own seed (the released trainer flips every HQ image so; the degradation comes after)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key) -> dict:
        item = self.dataset[key]
        if torch.rand((), generator=torch.Generator().manual_seed(int(item["seed"]) + 3)) < 0.5:
            item = {**item, "pixel_values": item["pixel_values"].flip(-1)}
        return item


def build_dataset(recipe: Recipe):
    dataset = _dataset(recipe)
    return RandomHFlip(dataset) if recipe.data.hflip else dataset


def _dataset(recipe: Recipe):
    res, d = recipe.model.resolution, recipe.data
    if d.dataset in (None, "skimage"):
        return SampleImages(
            res, repeats=max(1, recipe.train.global_batch_size), seed=recipe.train.seed, random_crop=d.random_crop
        )
    if d.dataset == "photos":
        return PhotoCollection(
            res,
            split="train",
            repeats=max(1, recipe.train.global_batch_size),
            seed=recipe.train.seed,
            random_crop=d.random_crop,
        )

    return PreparedDataset(d.dataset, size=res, random_crop=d.random_crop, seed=recipe.train.seed)


def build_dataloader(recipe: Recipe, batch_size: int) -> DataLoader:
    dataset = build_dataset(recipe)
    if len(dataset) < recipe.train.global_batch_size:
        raise ConfigError(
            f"the dataset has {len(dataset)} images, fewer than one global batch ({recipe.train.global_batch_size})"
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffleSampler(len(dataset), recipe.train.seed),
        collate_fn=collate,
        drop_last=True,
        num_workers=recipe.data.num_workers,
        persistent_workers=False,
    )
