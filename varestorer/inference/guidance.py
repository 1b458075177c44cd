"""Training-free measurement guidance: the ``guided`` restoration method.

The solver of "Training-free image reconstruction with visual autoregressive models"
(``shared/papers/training-free-var-reconstruction.txt``, Algorithm 1), for super-resolution
with Infinity's bitwise tokens:

- scales ``k < gamma`` (1-indexed): hard token injection, the tokens of the bicubic-upsampled LQ
  image replace the sampled ones (every position is observed in SR);
- scales ``k >= gamma``: the transformer's logits ``L`` are moved one gradient step against the
  measurement loss, ``L - alpha * dL_meas/dL`` with ``L_meas = ||A(D(z<=k)) - y||^2``, then the
  most likely bits are taken (the paper's deterministic decoding). ``D`` is the frozen VAE
  decoder of the codes so far (this scale's bits straight-through: the most likely bits forward,
  the gradient through their probabilities), ``A`` the SR operator: a box (area) downsampling
  by the upscale factor, and ``y = A(bicubic-upsampled LQ)`` (the paper also upsamples ``y``
  before applying ``A``, Sec. 4).

The paper's defaults are ``gamma = 8`` of VAR's ``K = 10`` scales and ``alpha = 1`` with one
gradient step per scale; here ``gamma`` keeps that share of the schedule:
``round(0.8 * K)``: 8 of the 10 scales at 512 px (the paper's own K = 10), 10 of 13 at 1024 px,
4 of the tiny preset's 5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

#: The paper's gamma / K (8 of 10 scales) and alpha.
INJECTED_SHARE = 0.8
DEFAULT_ALPHA = 1.0


def default_gamma(num_scales: int) -> int:
    """The first guided scale (1-indexed) for a schedule of ``num_scales``: the paper's 8 of 10."""
    return max(1, min(num_scales, round(INJECTED_SHARE * num_scales)))


def measure(x: Tensor, factor: float) -> Tensor:
    """The SR operator ``A``: images ``(B, 3, H, W)`` -> box-downsampled by ``factor``."""
    h, w = x.shape[-2:]
    return F.interpolate(x, size=(max(1, round(h / factor)), max(1, round(w / factor))), mode="area")


class MeasurementGuidance:
    """``sample(..., guidance=MeasurementGuidance(...))``: one gradient step on each scale's logits.

    Args:
        vae: the frozen BSQ-VAE (its quantizer turns bits into codes, its decoder codes into images).
        observed: the bicubic-upsampled LQ images ``(B, 3, R, R)`` in [0, 1].
        schedule: the scale schedule being sampled.
        factor: the upscale factor of ``A``.
        alpha: the step size on the logits.
    """

    def __init__(self, vae, observed: Tensor, schedule, factor: float, alpha: float = DEFAULT_ALPHA):
        if alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {alpha}")
        self.vae, self.schedule, self.factor, self.alpha = vae, [tuple(s) for s in schedule], factor, float(alpha)
        self.y = measure(observed.float(), factor)
        self.losses: list[float] = []  # L_meas before each step, for inspection

    def loss(self, logits: Tensor, k: int, summed: Tensor | None) -> Tensor:
        """``L_meas`` of the codes before scale ``k`` plus scale ``k``'s most likely bits (summed over the batch)."""
        h, w = self.schedule[k]
        bits = logits.float().softmax(-1)[..., 1].unflatten(1, (h, w))
        codes = self.vae.quantizer.bits_to_latent([bits], straight_through=True, size=self.schedule[-1])
        latent = codes if summed is None else summed.float() + codes
        x = (self.vae.decode_latent(latent).float() + 1) / 2
        return (measure(x, self.factor) - self.y.to(x.device)).pow(2).sum()

    def __call__(self, k: int, logits: Tensor, summed: Tensor | None) -> Tensor:
        with torch.enable_grad(), torch.autocast(logits.device.type, enabled=False):
            L = logits.detach().float().requires_grad_(True)
            loss = self.loss(L, k, summed)
            (grad,) = torch.autograd.grad(loss, L)
        self.losses.append(loss.item())
        return (L - self.alpha * grad).detach().to(logits.dtype)
