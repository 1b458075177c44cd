"""Colour correction of a restoration against its input, as StableSR, OSEDiff and InvSR offer it.

A generative restorer may shift colours (a tint, a brighter sky) while the layout is right. Both
corrections take the colour from the input (upsampled to the output's size) and the detail from
the restoration:

- ``adain``: each channel of the restoration gets the input's mean and standard deviation
  (adaptive instance normalisation over the whole image);
- ``wavelet``: the restoration's high frequencies plus the input's lowest band (five levels of
  a dilated 3x3 binomial blur, radii 1, 2, 4, 8, 16: structures above ~60 px keep the input's
  colour, everything finer is the restoration's);
- ``none``: the restoration as it is.

:data:`DEFAULT_COLOR_FIX` is the one that measured best on the small base's held-out photos
(``wavelet``: the one-step student 24.16 dB / SSIM 0.634 / colour error 6.3 against 22.83 / 0.629 /
17.9 without, AdaIN between; docs/evaluation.md, "Colour correction"). Each export records the one
its restorations get (``ExportConfig.color_fix``): the default when it was made, ``none`` for a
model imported from the authors' release (it restores as the release does) or exported before
colour correction existed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..export.config import COLOR_FIXES, DEFAULT_COLOR_FIX

__all__ = ["COLOR_FIXES", "DEFAULT_COLOR_FIX", "check_color_fix", "color_fix"]
WAVELET_LEVELS = 5


def check_color_fix(name: str) -> str:
    if name not in COLOR_FIXES:
        raise ConfigError(f"color_fix must be one of {', '.join(COLOR_FIXES)}, got {name!r}")
    return name


def _mean_std(x: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    flat = x.flatten(-2)
    return flat.mean(-1)[..., None, None], (flat.var(-1) + eps).sqrt()[..., None, None]


def adain(image: Tensor, reference: Tensor) -> Tensor:
    """``image`` (..., C, H, W) with each channel's mean and std taken from ``reference`` (any size)."""
    mean, std = _mean_std(image)
    ref_mean, ref_std = _mean_std(reference)
    return (image - mean) / std * ref_std + ref_mean


def _blur(x: Tensor, radius: int) -> Tensor:
    """The 3x3 binomial kernel, dilated by ``radius``, edges replicated."""
    k = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    kernel = (k[:, None] * k[None, :] / 16).expand(x.shape[-3], 1, 3, 3)
    padded = F.pad(x, (radius,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=x.shape[-3], dilation=radius)


def wavelet_split(x: Tensor, levels: int = WAVELET_LEVELS) -> tuple[Tensor, Tensor]:
    """``(high, low)`` with ``high + low == x``: ``low`` is ``x`` blurred at radii 1, 2, ... 2^(levels-1)."""
    low = x
    for i in range(levels):
        low = _blur(low, 2**i)
    return x - low, low


def wavelet(image: Tensor, reference: Tensor) -> Tensor:
    """``image``'s high frequencies plus ``reference``'s low band (both (N, C, H, W), same size)."""
    return wavelet_split(image)[0] + wavelet_split(reference)[1]


def color_fix(image: Tensor, reference: Tensor, method: str) -> Tensor:
    """``image`` (3, H, W) or (N, 3, H, W) in [0, 1], its colour corrected against ``reference``
    (the input upsampled to the same size) by ``method`` (:data:`COLOR_FIXES`), clamped to [0, 1]."""
    check_color_fix(method)
    if method == "none":
        return image
    if reference.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"reference {tuple(reference.shape)} and image {tuple(image.shape)} differ in size")
    single = image.ndim == 3
    x, ref = (t[None] if single else t for t in (image.float(), reference.float().to(image.device)))
    out = (adain if method == "adain" else wavelet)(x, ref).clamp(0, 1)
    return out[0] if single else out
