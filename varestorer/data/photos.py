"""The photo collection that ships with the package: what the ``small`` base was pre-trained on
and what the demo distils and evaluates on, with no download.

42 photos from scikit-image, matplotlib and Debian's wallpaper packages (each one's source,
author and licence in ``assets/photos/photos.json`` and the base's model card), stored with the
short side at 256 px, and split once: ``train`` (36) and ``heldout`` (6; never seen by the base
or by the demo's distillation). None comes from RealSR, DRealSR or DIV2K: those are for evaluation.

- ``data.dataset: photos`` in a recipe trains on :class:`PhotoCollection` (``train`` split):
  random crops at a random scale (short side resized to ``[size, 2 * size]``), random flips, a
  function of ``(seed, epoch, index)`` only.
- :func:`heldout_crops` gives the fixed evaluation crops (two per held-out photo).
- ``python -m varestorer.data.photos --root DIR`` rebuilds the folder from the extracted sources
  (docs/small-base.md, "Rebuilding the small base", says how to get them).
"""

from __future__ import annotations

import argparse
import json
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import ConfigError
from .images import to_tensor
from .seeds import sample_seeds, split_key

PHOTOS_DIR = Path(__file__).resolve().parent.parent / "assets" / "photos"
MANIFEST = "photos.json"
SPLITS = ("train", "heldout")
STORED_SHORT_SIDE = 256


@cache
def manifest() -> tuple[dict, ...]:
    """The collection's entries: ``name, file, split, caption, source, source_path, author, licence``."""
    path = PHOTOS_DIR / MANIFEST
    if not path.is_file():
        raise ConfigError(f"the photo collection is not installed ({path} is missing): reinstall varestorer")
    return tuple(json.loads(path.read_text()))


def entries(split: str) -> list[dict]:
    if split not in SPLITS:
        raise ConfigError(f"unknown photo split {split!r}; one of {', '.join(SPLITS)}")
    return [e for e in manifest() if e["split"] == split]


@cache
def load_photo(file: str) -> torch.Tensor:
    """A stored photo as (3, H, W) float32 in [0, 1]."""
    from PIL import Image

    with Image.open(PHOTOS_DIR / file) as im:
        return to_tensor(im)


def _resize_short(image: torch.Tensor, short: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    scale = short / min(h, w)
    size = (max(short, round(h * scale)), max(short, round(w * scale)))
    return F.interpolate(
        image[None], size=size, mode="area" if scale < 1 else "bicubic", align_corners=None if scale < 1 else False
    )[0].clamp(0, 1)


class PhotoCollection(Dataset):
    """Random crops of one split, ``{"pixel_values", "caption", "index", "seed"}`` per item (module doc).

    ``repeats`` makes an epoch longer than the photos (each repeat draws new crops)."""

    def __init__(self, size: int, split: str = "train", repeats: int = 1, seed: int = 0, random_crop: bool = True):
        if size > STORED_SHORT_SIDE:
            raise ConfigError(
                f"the photo collection is stored at {STORED_SHORT_SIDE} px: model.resolution={size} "
                f"is too large for data.dataset=photos (use a folder written by varestorer prepare)"
            )
        self.size, self.repeats, self.seed, self.random_crop = size, repeats, seed, random_crop
        self.items = entries(split)

    def __len__(self) -> int:
        return len(self.items) * self.repeats

    def __getitem__(self, key) -> dict:
        """``key``: an index, or the training sampler's ``(epoch, index)`` (see :mod:`.seeds`)."""
        epoch, index = split_key(key)
        seeds = sample_seeds(self.seed, epoch, index)
        entry = self.items[index % len(self.items)]
        item = {"caption": entry["caption"], "index": index, "seed": seeds.degradation}
        photo = load_photo(entry["file"])
        if not self.random_crop:
            return {"pixel_values": _center(photo, self.size), **item}
        g = torch.Generator().manual_seed(seeds.crop)
        short = int(torch.randint(self.size, min(2 * self.size, STORED_SHORT_SIDE) + 1, (1,), generator=g))
        im = _resize_short(photo, short)
        h, w = im.shape[-2:]
        top = int(torch.randint(0, h - self.size + 1, (1,), generator=g))
        left = int(torch.randint(0, w - self.size + 1, (1,), generator=g))
        crop = im[:, top : top + self.size, left : left + self.size]
        if torch.rand((), generator=g) < 0.5:
            crop = crop.flip(-1)
        return {"pixel_values": crop.contiguous(), **item}


def _center(photo: torch.Tensor, size: int) -> torch.Tensor:
    im = _resize_short(photo, size)
    h, w = im.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return im[:, top : top + size, left : left + size].contiguous()


def heldout_crops(size: int = 128) -> list[tuple[str, torch.Tensor, str]]:
    """The evaluation set: per held-out photo, its short side resized to ``1.25 * size`` and the
    two ``size`` crops at the long side's ends (``NAME-a``, ``NAME-b``), with its caption."""
    out = []
    for entry in entries("heldout"):
        im = _resize_short(load_photo(entry["file"]), round(1.25 * size))
        h, w = im.shape[-2:]
        for tag, (top, left) in (("a", (0, 0)), ("b", (h - size, w - size))):
            out.append(
                (f"{entry['name']}-{tag}", im[:, top : top + size, left : left + size].contiguous(), entry["caption"])
            )
    return out


# ---------------------------------------------------------------------- rebuilding the folder
def _source_image(entry: dict, root: Path):
    from PIL import Image

    if entry["source"] == "skimage":
        import numpy as np
        from skimage import data

        return Image.fromarray(np.asarray(getattr(data, entry["source_path"])())[..., :3])
    if entry["source"] == "matplotlib":
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data(entry["source_path"]) as f:
            return Image.open(f).convert("RGB")
    path = root / entry["source_path"]
    if not path.is_file():
        raise ConfigError(
            f"{path} is missing: extract the Debian package {entry['source']} into {root} "
            f"(apt-get download {entry['source']} && dpkg -x {entry['source']}_*.deb {root})"
        )
    return Image.open(path).convert("RGB")


def collect(root: str | Path, out: str | Path = PHOTOS_DIR) -> list[Path]:
    """Re-create every photo of the manifest from its source (``root``: the extracted packages)."""
    from PIL import Image

    out = Path(out)
    written = []
    for entry in manifest():
        im = _source_image(entry, Path(root))
        scale = STORED_SHORT_SIDE / min(im.size)
        im = im.resize(
            (max(STORED_SHORT_SIDE, round(im.width * scale)), max(STORED_SHORT_SIDE, round(im.height * scale))),
            Image.Resampling.LANCZOS,
        )
        path = out / entry["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        im.save(path, quality=92)
        written.append(path)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m varestorer.data.photos", description=collect.__doc__)
    p.add_argument("--root", required=True, help="folder the Debian wallpaper packages were extracted into (dpkg -x)")
    p.add_argument("--out", default=str(PHOTOS_DIR), help="where to write (default: the package's assets/photos)")
    args = p.parse_args(argv)
    for path in collect(args.root, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
