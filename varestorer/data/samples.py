"""A tiny built-in training set: the colour photos scikit-image ships, with captions.

``data.dataset: skimage`` in a recipe trains on these (the tiny recipe, the demo, the tests),
so the whole pipeline runs on real photos on a machine without any download.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .seeds import sample_seeds, split_key

#: scikit-image sample -> caption (written in the style of BLIP's captions).
SAMPLES: dict[str, str] = {
    "astronaut": "a woman in a space suit standing in front of a flag",
    "chelsea": "a ginger tabby cat looking at the camera",
    "coffee": "a cup of coffee on a saucer with a spoon",
    "rocket": "a rocket on a launch pad under a blue sky",
    "hubble_deep_field": "many galaxies in deep space",
    "immunohistochemistry": "a microscope image of stained tissue",
    "retina": "a photograph of the back of a human eye",
    "camera": "a black and white photo of a man with a camera on a tripod",
    "brick": "a black and white photo of a brick wall",
    "gravel": "a close up of gravel on the ground",
}


def sample_image(name: str) -> torch.Tensor:
    """A scikit-image sample as a float tensor (3, H, W) in [0, 1]."""
    from skimage import data

    im = np.asarray(getattr(data, name)())
    if im.ndim == 2:
        im = np.stack([im] * 3, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(im[..., :3])).permute(2, 0, 1).float() / 255.0


class SampleImages(Dataset):
    """Crops of the scikit-image photos, ``{"pixel_values", "caption", "index", "seed"}`` per item.

    Each photo is resized so its short side is ``1.5 * size`` and cropped to ``size``; the
    crop position depends only on ``(seed, epoch, index)``, so a run is reproducible.
    ``repeats`` makes an epoch longer than the ten photos.
    """

    def __init__(self, size: int, repeats: int = 1, seed: int = 0, random_crop: bool = True):
        self.size, self.repeats, self.seed, self.random_crop = size, repeats, seed, random_crop
        self.names = list(SAMPLES)
        self._cache: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.names) * self.repeats

    def _photo(self, name: str) -> torch.Tensor:
        if name not in self._cache:
            im = sample_image(name)[None]
            scale = 1.5 * self.size / min(im.shape[-2:])
            size = (max(self.size, round(im.shape[-2] * scale)), max(self.size, round(im.shape[-1] * scale)))
            self._cache[name] = F.interpolate(im, size=size, mode="area")[0].clamp(0, 1)
        return self._cache[name]

    def __getitem__(self, key) -> dict:
        """``key``: an index, or the training sampler's ``(epoch, index)`` (see :mod:`.seeds`)."""
        epoch, index = split_key(key)
        seeds = sample_seeds(self.seed, epoch, index)
        name = self.names[index % len(self.names)]
        im = self._photo(name)
        h, w = im.shape[-2:]
        if self.random_crop:
            g = torch.Generator().manual_seed(seeds.crop)
            top = int(torch.randint(0, h - self.size + 1, (1,), generator=g))
            left = int(torch.randint(0, w - self.size + 1, (1,), generator=g))
        else:
            top, left = (h - self.size) // 2, (w - self.size) // 2
        crop = im[:, top : top + self.size, left : left + self.size].contiguous()
        return {"pixel_values": crop, "caption": SAMPLES[name], "index": index, "seed": seeds.degradation}
