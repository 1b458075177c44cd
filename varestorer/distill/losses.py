"""The losses of VARestorer (paper Eq. 3 and 5) and of the teacher's next-scale training.

Bit logits are ``(B, L, d, 2)``: two logits per bit of every token, in token order over the
scales of a schedule (Infinity's bitwise head).
"""

from __future__ import annotations

import contextlib
import io

import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..tokenizer.schedules import Scale


def _scale_slices(schedule: list[Scale]):
    start = 0
    for h, w in schedule:
        yield slice(start, start + h * w)
        start += h * w


def bitwise_kl(teacher_logits: Tensor, student_logits: Tensor, schedule: list[Scale]) -> Tensor:
    """``sum_k KL(p_T(r_k) || p_S(r_k))``, each scale's KL a mean over tokens and bits.

    Each bit is a Bernoulli variable; the teacher's distribution is a target (no gradient).
    """
    log_t = F.log_softmax(teacher_logits.float().detach(), dim=-1)
    log_s = F.log_softmax(student_logits.float(), dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # (B, L, d)
    return sum(kl[:, sl].mean() for sl in _scale_slices(schedule))


def bitwise_cross_entropy(logits: Tensor, bit_labels: Tensor) -> Tensor:
    """Infinity's next-scale objective: cross-entropy of every bit, mean over tokens and bits."""
    return F.cross_entropy(logits.float().flatten(0, -2), bit_labels.flatten().long())


def bit_probabilities(logits: Tensor) -> Tensor:
    """``(B, L, d, 2)`` logits -> probability that each bit is 1, ``(B, L, d)``."""
    return logits.float().softmax(-1)[..., 1]


def build_lpips(net: str = "vgg", pretrained: bool = True):
    """A frozen LPIPS metric on images in [-1, 1].

    ``pretrained=True`` (what training uses) needs torchvision's ImageNet weights of the
    backbone. Without network access they must already be in the torch hub cache.
    """
    import lpips

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # lpips prints its set-up
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=not pretrained, verbose=False)
    except Exception as exc:  # a download that cannot happen offline
        raise ConfigError(
            f"LPIPS needs torchvision's ImageNet {net} weights and could not get them ({type(exc).__name__}: {exc}). "
            f"Run once with network access (python -c \"import lpips; lpips.LPIPS(net='{net}')\") or copy the "
            f"file into $TORCH_HOME/hub/checkpoints/ (default ~/.cache/torch/hub/checkpoints). "
            f"Only for offline smoke tests: set loss.lpips_pretrained=false."
        ) from exc
    return model.eval().requires_grad_(False)
