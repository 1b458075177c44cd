"""Multi-scale bitwise spherical quantization (BSQ), as Infinity's tokenizer does it.

One scale quantizes a latent to ``d`` bits per position: the latent vector is projected on
the unit sphere and each coordinate becomes ``+-1/sqrt(d)``. The multi-scale quantizer is a
residual quantizer over a scale schedule: at scale ``k`` the residual is area-downsampled to
``(h_k, w_k)`` (Infinity's ``z_interplote_down``), quantized, upsampled back with trilinear
interpolation of the 5-D latent ``(B, d, 1, h, w)`` (``z_interplote_up``) and subtracted.
Infinity's transformer is taught with the bits of every scale as labels and, as the input at
scale ``k``, the codes accumulated up to scale ``k - 1`` resized to scale ``k`` with the same
trilinear rule (``flip_requant`` in Infinity's trainer, and its sampler).

The student of VARestorer reads the LQ image's *pyramid* instead: at scale ``k`` the codes
accumulated through scale ``k`` itself, resized to scale ``k`` (see :meth:`MultiScaleTokens.pyramid_sequence`).

Bit tensors are ``(B, h, w, d)`` per scale (Infinity's ``bit_indices`` layout); flattening
``h, w`` row-major gives the token order of the transformer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .schedules import Scale


def _resize_down(x: Tensor, size: Scale) -> Tensor:
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="area")


def trilinear_resize(x: Tensor, size: Scale) -> Tensor:
    """Infinity's ``z_interplote_up``: trilinear interpolation of ``(B, d, 1, h, w)`` to ``(1, *size)``.

    Used for every resize of codes *up* to the full latent and of accumulated codes to the next
    scale (which may be smaller than the full latent: it is still this rule, not ``area``)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x.unsqueeze(2), size=(1, *size), mode="trilinear", align_corners=False).squeeze(2)


@dataclass
class MultiScaleTokens:
    """What the multi-scale quantizer gives for a batch of latents.

    Attributes:
        bits: per scale, the bit labels ``(B, h_k, w_k, d)`` as ``int64`` 0/1.
        codes: per scale, the quantized codes ``(B, d, h_k, w_k)`` (values ``+-1/sqrt(d)``).
        teacher_inputs: per scale ``k >= 1``, the codes accumulated up to scale ``k - 1``
            at full latent size and resized to scale ``k`` (trilinear): ``(B, d, h_k, w_k)``.
            This is Infinity's teacher-forcing input (the first scale's input is the
            text start token, so the list has one entry fewer than the schedule).
        pyramid: per scale ``k >= 1``, the codes accumulated through scale ``k`` at full latent
            size and resized to scale ``k`` (trilinear): ``(B, d, h_k, w_k)``. The student's
            pyramid conditioning; the last entry is the whole quantized latent.
        quantized: the accumulated quantized latent ``(B, d, H, W)`` at full latent size.
        schedule: the scale schedule used.
        inputs: per scale, what was quantized: the residual resized to the scale and
            L2-normalised over ``d``, ``(B, d, h_k, w_k)`` (the commitment and entropy terms of
            tokenizer training are taken on these).
    """

    bits: list[Tensor]
    codes: list[Tensor]
    teacher_inputs: list[Tensor]
    pyramid: list[Tensor]
    quantized: Tensor
    schedule: list[Scale]
    inputs: list[Tensor] = field(default_factory=list)

    def bit_labels(self) -> Tensor:
        """All scales' bits concatenated in token order: ``(B, L, d)``."""
        return torch.cat([b.flatten(1, 2) for b in self.bits], dim=1)

    def teacher_input_sequence(self) -> Tensor:
        """Teacher-forcing inputs of scales ``1..K-1`` in token order: ``(B, L - 1, d)``."""
        return _sequence(self.teacher_inputs)

    def pyramid_sequence(self) -> Tensor:
        """The pyramid of scales ``1..K-1`` in token order: ``(B, L - 1, d)``.

        Position ``k`` holds what the image's tokens of scales ``0..k`` reconstruct, at scale ``k``'s
        size; the same shape as :meth:`teacher_input_sequence`, one scale more of information."""
        return _sequence(self.pyramid)

    def lq_input_sequence(self, form: str = "pyramid") -> Tensor:
        """The student's conditioning on these (LQ) tokens: ``"pyramid"`` (the paper's),
        ``"shifted"`` (the teacher-forcing form, which never shows the finest scale), or
        ``"tokens"``: every scale's own token map, negated, all ``L`` tokens (the first scale's
        joins the start token). Negated because the base predicts what is still to be added to
        its input: given a scale's codes it predicts their opposite bits, given their negation
        their own bits, so the untrained student starts by copying the LQ tokens (on the small
        base: 91, 88, 83, 78, 74, 72% of scales 2-7's bits agree with the HQ tokens, as the LQ
        tokens themselves do; the pyramid form starts at 22-33%). ``"shifted_latent"`` (the released
        VARestorer's ``long_flip_requant``): the shifted form followed by one extra block holding the
        whole quantized latent at the last scale's size (``L - 1 + h_K * w_K`` tokens; the
        transformer reads the extra block as level ``K``)."""
        if form == "pyramid":
            return self.pyramid_sequence()
        if form == "shifted":
            return self.teacher_input_sequence()
        if form == "tokens":
            return -self.code_sequence()
        if form == "shifted_latent":
            return torch.cat((self.teacher_input_sequence(), self.prefix_sequence()), dim=1)
        raise ValueError(f"LQ input form must be one of {LQ_INPUT_FORMS}, got {form!r}")

    def prefix_sequence(self) -> Tensor:
        """The whole quantized latent as one map of the last scale's size, in token order:
        ``(B, h_K * w_K, d)``: VARSR's prefix tokens (the image as the condition of every scale)."""
        return self.quantized.flatten(2).transpose(1, 2)

    def keep_scales(self, bits: list[Tensor], n: int) -> list[Tensor]:
        """``bits`` (per scale ``(B, h_k, w_k, d)``, hard or probabilities) with the first ``n``
        scales replaced by these tokens' own bits (the student's ``keep_lq_scales``). They are
        exactly the hard bits, and pass the codes' straight-through gradient on to the encoder."""
        own = []
        for b, c in zip(self.bits[:n], self.codes[:n]):
            soft = (c.permute(0, 2, 3, 1) * math.sqrt(c.shape[1]) + 1) / 2
            own.append(b.to(soft.dtype) + (soft - soft.detach()))
        return own + list(bits[n:])

    def code_sequence(self) -> Tensor:
        """Every scale's own codes in token order: ``(B, L, d)``."""
        return torch.cat([c.flatten(2).transpose(1, 2) for c in self.codes], dim=1)


#: How the student reads the LQ tokens (``student.lq_input`` of a recipe).
LQ_INPUT_FORMS = ("pyramid", "shifted", "tokens", "shifted_latent")


def _sequence(maps: list[Tensor]) -> Tensor:
    return torch.cat([x.flatten(2).transpose(1, 2) for x in maps], dim=1)


class BSQ(nn.Module):
    """Binary spherical quantization of one scale (Infinity's ``BSQ`` with ``new_quant``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.scale = 1.0 / math.sqrt(dim)
        # Kept for state-dict parity with the official checkpoint (``quantizer.lfq.mask``).
        self.register_buffer("mask", 2 ** torch.arange(dim - 1, -1, -1))

    def bits_to_codes(self, bits: Tensor) -> Tensor:
        """``(..., d)`` bits (hard 0/1 or probabilities) -> codes ``+-1/sqrt(d)`` (linear in bits)."""
        return (bits * 2 - 1) * self.scale

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Quantize ``(B, d, h, w)``; returns codes (straight-through to ``x``), bits and the
        L2-normalised input the codes approximate."""
        z = F.normalize(x.float(), dim=1)
        bits = (z > 0).long()
        hard = self.bits_to_codes(bits.to(z.dtype))
        # hard + (z - z.detach()): exactly ``hard`` forward, identity gradient to ``z``.
        codes = hard + (z - z.detach()) if z.requires_grad else hard
        return codes, bits.permute(0, 2, 3, 1), z


class ChannelLayerNorm(nn.Module):
    """Infinity's ``ln_before_quant`` LayerNorm over the channels of ``(B, d, H, W)``, its weight
    initialised to ``1/sqrt(d)`` (``ln_init_by_sqrt``): each position's latent starts at norm ~1."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim) / math.sqrt(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * (x - mean) / torch.sqrt(var + self.eps) + self.bias[:, None, None]


class MultiScaleBSQ(nn.Module):
    """Residual quantization of a latent over a scale schedule (Infinity's ``MultiScaleBSQ``).

    ``ln_before_quant`` (an option of Infinity's, off in its released d32 VAE): a LayerNorm puts
    every position's latent at norm ~1 before the residual loop, so that each scale quantizes what
    the earlier ones left. Without it the latent's norm is never trained (the codes see only its
    direction), and a VAE trained from scratch can let it grow until every scale repeats the same
    signs: the small base's tokenizer did (norm 12 against codes of norm 1; see its model card)."""

    def __init__(self, dim: int, ln_before_quant: bool = False):
        super().__init__()
        self.dim = dim
        self.lfq = BSQ(dim)
        self.layernorm = ChannelLayerNorm(dim) if ln_before_quant else None

    def forward(self, latent: Tensor, schedule: list[Scale], flips: list[Tensor] | None = None) -> MultiScaleTokens:
        """Quantize ``(B, d, H, W)``; the last scale of ``schedule`` must be ``(H, W)``.

        ``flips`` (Infinity's Bitwise Self-Correction): per scale, for the first ``len(flips)``
        scales, a bool mask ``(B, h_k, w_k, d)`` of bits to flip. The flipped bits are what the
        later scales' inputs accumulate (and their residuals are taken against), so the later
        labels correct the flips; each scale's own labels stay the true bits.
        """
        if latent.ndim != 4 or latent.shape[1] != self.dim:
            raise ValueError(f"expected a latent (B, {self.dim}, H, W), got {tuple(latent.shape)}")
        full = tuple(latent.shape[-2:])
        if tuple(schedule[-1]) != full:
            raise ValueError(f"the schedule ends at {tuple(schedule[-1])} but the latent is {full}")
        residual = latent.float() if self.layernorm is None else self.layernorm(latent.float())
        accumulated = torch.zeros_like(residual)
        bits, codes, teacher_inputs, pyramid, inputs = [], [], [], [], []
        for k, size in enumerate(schedule):
            code, bit, z = self.lfq(_resize_down(residual, size))
            inputs.append(z)
            if flips is not None and k < len(flips):
                code = self.lfq.bits_to_codes((bit ^ flips[k].to(bit.device).long()).to(code.dtype)).permute(0, 3, 1, 2)
            up = trilinear_resize(code, full)
            residual = residual - up.detach()
            accumulated = accumulated + up
            bits.append(bit)
            codes.append(code)
            if k > 0:
                pyramid.append(trilinear_resize(accumulated, size))
            if k + 1 < len(schedule):
                teacher_inputs.append(trilinear_resize(accumulated, schedule[k + 1]))
        return MultiScaleTokens(bits, codes, teacher_inputs, pyramid, accumulated, list(schedule), inputs)

    def bits_to_latent(self, bits: list[Tensor], straight_through: bool = False, size: Scale | None = None) -> Tensor:
        """Per-scale bits ``(B, h_k, w_k, d)`` -> the accumulated latent ``(B, d, H, W)``.

        ``(H, W)`` is the last scale's size unless ``size`` is given (to decode only the
        first scales of a schedule at full latent size).

        ``bits`` may be hard 0/1 labels or probabilities of a bit being 1. With
        ``straight_through`` the most likely bits go forward and the gradient reaches the
        probabilities (``hard + (p - p.detach())``); without it, probabilities are used as they
        are (a soft, differentiable relaxation).
        """
        full = tuple(size) if size is not None else tuple(bits[-1].shape[1:3])
        latent = None
        for b in bits:
            b = b.float()
            if straight_through:
                b = (b > 0.5).float() + (b - b.detach())  # exactly the hard bits forward
            code = self.lfq.bits_to_codes(b).permute(0, 3, 1, 2)
            up = trilinear_resize(code, full)
            latent = up if latent is None else latent + up
        return latent

    @staticmethod
    def split_sequence(seq: Tensor, schedule: list[Scale]) -> list[Tensor]:
        """``(B, L, d)`` in token order -> per scale ``(B, h_k, w_k, d)``."""
        sizes = [h * w for h, w in schedule]
        if seq.shape[1] != sum(sizes):
            raise ValueError(f"sequence of {seq.shape[1]} tokens does not fit a schedule of {sum(sizes)}")
        return [chunk.reshape(seq.shape[0], h, w, -1) for chunk, (h, w) in zip(seq.split(sizes, dim=1), schedule)]
