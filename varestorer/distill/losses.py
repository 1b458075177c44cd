"""The losses of VARestorer (paper Eq. 3 and 5) and of the teacher's next-scale training.

Bit logits are ``(B, L, d, 2)``: two logits per bit of every token, in token order over the
scales of a schedule (Infinity's bitwise head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..tokenizer.schedules import Scale
from ..transformer.sampling import gumbel_noise

#: Ways to weigh the tokens of the scales (``loss.scale_weighting``; see :func:`token_weights`).
SCALE_WEIGHTINGS = ("infinity", "per_scale", "flat")


def token_weights(schedule: list[Scale], weighting: str = "infinity") -> Tensor:
    """``(L,)`` weight of every token (in token order) in the KL and the cross-entropy.

    ``infinity``: Infinity's ``reweight_loss_by_scale`` (its train.sh sets it): a token of scale
    ``k`` weighs ``1 / sqrt(h_k w_k)``, normalised to sum 1. A scale then weighs in proportion to
    its side (the 32x32 scale 32x the 1x1 scale), a token of the 1x1 scale 32x a token of the 32x32
    one. ``per_scale``: each scale's mean, summed over scales (every scale weighs 1: a 1x1 token
    1024x a 32x32 one; sums to the number of scales). ``flat``: a plain mean over tokens.
    """
    sizes = [h * w for h, w in schedule]
    per_token = {"infinity": lambda n: n**-0.5, "per_scale": lambda n: 1 / n, "flat": lambda n: 1.0}.get(weighting)
    if per_token is None:
        raise ConfigError(
            f"loss.scale_weighting={weighting!r} is not valid; choose one of {', '.join(SCALE_WEIGHTINGS)}"
        )
    # built from Python numbers only (no data-dependent shapes: the memory estimate runs it on fake tensors)
    w = torch.cat([torch.full((n,), per_token(n), dtype=torch.float64) for n in sizes])
    if weighting != "per_scale":
        w = w / w.sum()
    return w.float()


def _weighted(per_bit: Tensor, schedule: list[Scale], weighting: str) -> Tensor:
    """``(B, L, d)`` per-bit values -> mean over bits, weighted sum over tokens, mean over the batch."""
    w = token_weights(schedule, weighting).to(per_bit.device)
    if per_bit.shape[1] != w.numel():
        raise ValueError(f"{per_bit.shape[1]} tokens do not fit a schedule of {w.numel()}")
    return (per_bit.mean(-1) * w).sum(-1).mean()


def bitwise_kl(
    teacher_logits: Tensor, student_logits: Tensor, schedule: list[Scale], weighting: str = "infinity"
) -> Tensor:
    """Forward ``KL(p_T || p_S)`` of every bit (a Bernoulli variable), weighted over scales.

    Paper Eq. 3 sums the KL over scales; how tokens and bits are normalised is not given. We use
    the weighting the teacher was trained with (:func:`token_weights`) so that, at lambda_KL = 0.1,
    the KL is in nats per bit like the teacher's own cross-entropy. The teacher's distribution is
    a target (no gradient).
    """
    log_t = F.log_softmax(teacher_logits.float().detach(), dim=-1)
    log_s = F.log_softmax(student_logits.float(), dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # (B, L, d)
    return _weighted(kl, schedule, weighting)


def bitwise_cross_entropy(
    logits: Tensor, bit_labels: Tensor, schedule: list[Scale], weighting: str = "infinity"
) -> Tensor:
    """Infinity's next-scale objective: cross-entropy of every bit, weighted over scales as Infinity."""
    ce = F.cross_entropy(logits.float().flatten(0, -2), bit_labels.flatten().long(), reduction="none")
    return _weighted(ce.view(bit_labels.shape), schedule, weighting)


def gumbel_straight_through_bits(logits: Tensor, tau: float, seeds: list[int]) -> Tensor:
    """The released trainer's image path (``logits_to_img`` with ``GumbelArgmax(logits, 0.5)``):
    ``(B, L, d, 2)`` logits -> ``(B, L, d)`` bits, hard forward, soft gradient.

    Per bit, Gumbel noise ``g = -log(-log(U + 1e-20) + 1e-20)`` on both logits,
    ``y = softmax((logits + g) / tau)``, the one-hot of its larger entry ``h``, and the bit is
    ``h_1 - y_1.detach() + y_1``: the sampled bit forward, the gradient of the perturbed soft
    probability backward. The release draws ``U`` from torch's global generator; here sample ``i``
    draws it from a generator seeded with ``seeds[i]`` (offset so that no other draw of the step
    shares it), so a step and a resumed step draw the same noise.
    """
    if len(seeds) != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} samples but {len(seeds)} seeds")
    u = torch.stack(
        [torch.rand(logits.shape[1:], generator=torch.Generator().manual_seed(int(s) + 2)) for s in seeds]
    ).to(logits.device)
    soft = F.softmax((logits.float() + gumbel_noise(u)) / tau, dim=-1)
    hard = torch.zeros_like(soft).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)
    return (hard - soft.detach() + soft)[..., 1]


def bit_probabilities(logits: Tensor) -> Tensor:
    """``(B, L, d, 2)`` logits -> probability that each bit is 1, ``(B, L, d)``."""
    return logits.float().softmax(-1)[..., 1]
