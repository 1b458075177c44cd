"""The student's LoRA: rank 32 on the attention projections of every block (PEFT).

``sa.mat_qkv, sa.proj, ca.mat_q, ca.mat_kv, ca.proj`` of all blocks of Infinity-2B: 27,262,976
trainable parameters. The targets are matched inside ``block_chunks`` only: the text pooling
(``text_proj_for_sos.ca``) also has a ``ca.mat_kv`` and ``ca.proj`` and is not adapted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

DEFAULT_TARGETS: tuple[str, ...] = ("sa.mat_qkv", "sa.proj", "ca.mat_q", "ca.mat_kv", "ca.proj")
DEFAULT_RANK = 32


def lora_config(rank: int = DEFAULT_RANK, alpha: float | None = None, dropout: float = 0.0,
                targets: Sequence[str] = DEFAULT_TARGETS, init: bool | str = True):
    """The ``peft.LoraConfig`` of VARestorer (``alpha`` defaults to ``rank``: scaling 1).

    ``init=False`` starts ``lora_B`` random instead of zero (tests only).
    """
    from peft import LoraConfig

    names = "|".join(re.escape(t) for t in targets)
    return LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, lora_dropout=dropout,
                      target_modules=rf"block_chunks\.\d+\.module\.\d+\.({names})", bias="none",
                      init_lora_weights=init)


def apply_lora(model: nn.Module, rank: int = DEFAULT_RANK, alpha: float | None = None, dropout: float = 0.0,
               targets: Sequence[str] = DEFAULT_TARGETS, **kwargs):
    """Wrap ``model`` in a ``peft.PeftModel`` with the LoRA adapters (base weights frozen).

    The wrapped model is called like the base one; ``with peft_model.disable_adapter():``
    gives the base model (the teacher) with the same weights.
    """
    from peft import get_peft_model

    return get_peft_model(model, lora_config(rank, alpha, dropout, targets, **kwargs))


def lora_trainable_params(model: nn.Module, **kwargs) -> int:
    """Trainable parameters of the default LoRA on ``model`` (build it on the meta device to count for free)."""
    peft_model = apply_lora(model, **kwargs)
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def base_model(model: nn.Module) -> nn.Module:
    """The transformer under a ``PeftModel`` (the model itself when it is not wrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def base_state_dict(model: nn.Module) -> dict:
    """The base weights of a (possibly PEFT-wrapped) transformer in the official key layout.

    Under a ``PeftModel`` the adapted layers hold their weights as ``....base_layer.weight``
    beside ``lora_A``/``lora_B``; this gives the plain ``....weight`` keys of the base model
    (with the adapters not merged, i.e. the teacher's weights).
    """
    base = base_model(model)
    out = {}
    for key, value in base.state_dict().items():
        if "lora_" in key:
            continue
        out[key.replace(".base_layer.", ".")] = value
    return out
