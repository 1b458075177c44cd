"""Every training sample's randomness, drawn in one place from ``(seed, epoch, index)``.

The training sampler (:class:`varestorer.distill.dataloader.EpochShuffleSampler`) hands the dataset keys
``(epoch, index)``. The dataset draws the sample's crop from :func:`sample_seeds`' ``crop`` seed
and puts its ``degradation`` seed in the batch (``"seed"``), from which the model draws the
sample's Real-ESRGAN degradation, caption dropout and bit flips. No object keeps the epoch as
state: accelerate forwards ``set_epoch`` to the sampler, but not to the dataset when it shards the
loader over processes, so an epoch kept by the dataset stayed 0 on every GPU.

The seeds are words of NumPy's ``SeedSequence`` over the three numbers, which hashes them: no two
``(epoch, index)`` pairs share a draw (an additive mix such as ``epoch * 7919 + index`` repeats
sample ``i + 7919`` of epoch 0 as sample ``i`` of epoch 1).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class SampleSeeds(NamedTuple):
    crop: int  #: the crop position, scale and flip
    degradation: int  #: the degradation, caption dropout and bit flips (the batch's ``"seed"``)


def sample_seeds(seed: int, epoch: int, index: int) -> SampleSeeds:
    """The two 63-bit seeds of one sample: a function of ``(seed, epoch, index)`` only."""
    words = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(2, np.uint64)
    return SampleSeeds(*(int(w) >> 1 for w in words))


def split_key(key) -> tuple[int, int]:
    """A dataset key -> ``(epoch, index)``: the sampler's ``(epoch, index)`` pair, or a plain
    index (epoch 0), as ``dataset[i]`` and a loader without our sampler give it."""
    if isinstance(key, (tuple, list)):
        epoch, index = key
        return int(epoch), int(index)
    return 0, int(key)
