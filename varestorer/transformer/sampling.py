"""Scale-by-scale sampling of Infinity with a KV cache (the multi-step teacher baseline).

As Infinity's ``autoregressive_infer_cfg`` in the released configuration: at scale ``k`` the
logits are divided by the temperature ``tau_k``; with classifier-free guidance
(``cfg_k != 1`` at any scale) the batch is doubled with the unconditional branch (captions
replaced by ``cfg_uncond``, or a negative prompt) and the logits are combined as
``cfg_k * cond + (1 - cfg_k) * uncond`` (``cfg_insertion_layer=0``: guidance on the logits);
each bit is drawn from its two logits after top-k / top-p filtering, with a seeded generator.
The next scale's input is the sum of the codes so far at full latent size, resized to the
next scale with Infinity's trilinear rule (the tokenizer's teacher-forcing inputs use the same
rule, so sampling with given bits reproduces teacher forcing).

``given_bits`` injects known bits for the first ``num_given`` scales instead of sampling
them (Infinity's ``gt_leak``; the zero-shot upsampling baseline injects LQ tokens).
``guidance`` changes each later scale's logits before its bits are drawn (the training-free
measurement guidance of :mod:`varestorer.inference.guidance`); ``greedy`` takes the most likely
bits instead of drawing them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..presets import OFFICIAL_SAMPLER
from ..tokenizer.quantizer import MultiScaleBSQ, trilinear_resize
from ..tokenizer.schedules import Scale
from .text import TextFeatures


@dataclass
class SampleOutput:
    """Sampled bits per scale ``(B, h, w, d)`` (int64), their summed codes ``(B, d, H, W)``
    (decode with ``vae.decode_latent``), and, if asked for, the logits ``(B, h*w, d, 2)``
    each scale's bits were drawn from (after temperature and guidance)."""

    bits: list[Tensor]
    latent: Tensor
    logits: list[Tensor] | None = None


def _per_scale(value, n: int, name: str) -> list[float]:
    values = [float(value)] * n if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) < n:
        raise ValueError(f"{name} has {len(values)} values for {n} scales")
    return values[:n]


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 0.0) -> Tensor:
    """Infinity's top-k / top-p filtering over the last dimension (a copy; removed entries -inf)."""
    logits = logits.float().clone()
    V = logits.shape[-1]
    if 0 < top_k < V:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, order = logits.sort(dim=-1, descending=False)
        remove = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
        remove[..., -1] = False  # the most likely value always stays
        logits = logits.masked_fill(remove.scatter(-1, order, remove), -torch.inf)
    return logits


def sample_bits(logits: Tensor, top_k: int = 0, top_p: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """Bit logits ``(..., d, 2)`` -> sampled bits ``(..., d)`` (int64 0/1)."""
    probs = filter_logits(logits, top_k, top_p).softmax(-1)
    return torch.multinomial(probs.reshape(-1, 2), 1, generator=generator).view(probs.shape[:-1])


def gumbel_noise(u: Tensor) -> Tensor:
    """Gumbel noise from uniform draws ``u``, as the released VARestorer's ``GumbelArgmax`` makes it:
    ``-log(-log(u + 1e-20) + 1e-20)`` (its inference and its trainer's image path)."""
    return -torch.log(-torch.log(u + 1e-20) + 1e-20)


def next_scale_input(summed: Tensor, size: Scale) -> Tensor:
    """Summed codes ``(B, d, H, W)`` -> the next scale's input tokens ``(B, h*w, d)`` (trilinear)."""
    return trilinear_resize(summed, tuple(size)).flatten(2).transpose(1, 2)


@torch.no_grad()
def sample(  # noqa: C901
    model,
    text: TextFeatures,
    schedule: Sequence[Scale],
    *,
    cfg: float | Sequence[float] = OFFICIAL_SAMPLER.cfg,
    tau: float | Sequence[float] = OFFICIAL_SAMPLER.tau,
    top_k: int = OFFICIAL_SAMPLER.top_k,
    top_p: float = OFFICIAL_SAMPLER.top_p,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    given_bits: Sequence[Tensor] | None = None,
    num_given: int | None = None,
    negative: TextFeatures | None = None,
    return_logits: bool = False,
    guidance: Callable[[int, Tensor, Tensor | None], Tensor] | None = None,
    greedy: bool = False,
    prefix: Tensor | None = None,
) -> SampleOutput:
    """Sample every scale of ``schedule`` for a batch of captions (see the module doc).

    Args:
        model: an :class:`InfinityTransformer` (or a PEFT model wrapping one).
        cfg, tau: guidance scale and temperature, one value or one per scale.
        top_k, top_p: filtering of each bit's two values (0: off).
            The defaults are Infinity's released settings (:data:`~varestorer.presets.OFFICIAL_SAMPLER`:
            cfg 4, tau 0.5, top_k 900, top_p 0.97); ``cfg=1, tau=1, top_k=0, top_p=0`` samples the
            plain conditional distribution.
        seed / generator: the random draws (``seed`` makes a generator on the model's device).
        given_bits: per scale ``(B, h, w, d)`` bits to use instead of sampling for the first
            ``num_given`` scales (default: as many as given).
        negative: text of the unconditional branch instead of ``cfg_uncond``.
        guidance: ``(k, logits (B, h*w, d, 2), summed latent of the scales before k or None) ->
            logits``, called at every scale that is not given, after temperature and guidance.
        greedy: the most likely bits (after ``guidance``) instead of random draws.
        prefix: VARSR's prefix tokens ``(B, h_K * w_K, d)``, which every scale attends to.
    """
    schedule = [tuple(s) for s in schedule]
    K, B = len(schedule), len(text)
    cfgs, taus = _per_scale(cfg, K, "cfg"), _per_scale(tau, K, "tau")
    given = list(given_bits or [])
    num_given = len(given) if num_given is None else num_given
    if num_given > len(given) or num_given > K:
        raise ValueError(f"num_given={num_given} but {len(given)} scales of bits are given for {K} scales")
    d = model.config.codebook_dim
    device = next(model.parameters()).device
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    guided = any(c != 1 for c in cfgs)
    text = text.to(device)
    if guided:
        uncond = negative.to(device) if negative is not None else text.with_drop(True)
        if len(uncond) != B:
            raise ValueError(f"{len(uncond)} negative prompts for {B} captions")
        text = TextFeatures.cat([text, uncond])
    quantizer = MultiScaleBSQ(d).to(device)
    full = schedule[-1]
    if prefix is not None:
        prefix = prefix.to(device)
        prefix = torch.cat((prefix, prefix)) if guided else prefix
    state = model.start_decoding(text, schedule, prefix=prefix)
    inputs, summed, bits_out, logits_out = None, None, [], []
    for k, (h, w) in enumerate(schedule):
        logits = model.decode_scale(state, inputs) / taus[k]
        if guided:
            logits = cfgs[k] * logits[:B] + (1 - cfgs[k]) * logits[B:] if cfgs[k] != 1 else logits[:B]
        if k < num_given:
            bits = given[k].to(device).long()
            if tuple(bits.shape) != (B, h, w, d):
                raise ValueError(f"given bits of scale {k} are {tuple(bits.shape)}, expected {(B, h, w, d)}")
        else:
            if guidance is not None:
                logits = guidance(k, logits, summed)
            bits = (logits.argmax(-1) if greedy else sample_bits(logits, top_k, top_p, generator)).view(B, h, w, d)
        bits_out.append(bits)
        if return_logits:
            logits_out.append(logits)
        codes = quantizer.bits_to_latent([bits], size=full)
        summed = codes if summed is None else summed + codes
        if k + 1 < K:
            inputs = next_scale_input(summed, schedule[k + 1])
            if guided:
                inputs = torch.cat((inputs, inputs))
    return SampleOutput(bits_out, summed, logits_out if return_logits else None)
