"""The student's LoRA: rank 32 on the attention projections of every block (PEFT, added in
place through diffusers' ``PeftAdapterMixin``; saved and read in PEFT's own adapter format).

``sa.mat_qkv, sa.proj, ca.mat_q, ca.mat_kv, ca.proj`` of all blocks of Infinity-2B: 27,262,976
trainable parameters. The targets are matched inside ``block_chunks`` only: the text pooling
(``text_proj_for_sos.ca``) also has a ``ca.mat_kv`` and ``ca.proj`` and is not adapted.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from torch import nn

from ..checkpoints import read_file, refuse_nonfinite
from ..errors import CheckpointError

DEFAULT_TARGETS: tuple[str, ...] = ("sa.mat_qkv", "sa.proj", "ca.mat_q", "ca.mat_kv", "ca.proj")
DEFAULT_RANK = 32
PEFT_PREFIX = "base_model.model."  # the keys of PEFT's adapter files start with it
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"


def lora_config(
    rank: int = DEFAULT_RANK,
    alpha: float | None = None,
    dropout: float = 0.0,
    targets: Sequence[str] = DEFAULT_TARGETS,
    init: bool | str = True,
):
    """The ``peft.LoraConfig`` of VARestorer (``alpha`` defaults to ``rank``: scaling 1).

    ``init=False`` starts ``lora_B`` random instead of zero (tests only).
    """
    from peft import LoraConfig

    names = "|".join(re.escape(t) for t in targets)
    return LoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=rf"block_chunks\.\d+\.module\.\d+\.({names})",
        bias="none",
        init_lora_weights=init,
    )


def apply_lora(
    model: nn.Module,
    rank: int = DEFAULT_RANK,
    alpha: float | None = None,
    dropout: float = 0.0,
    targets: Sequence[str] = DEFAULT_TARGETS,
    **kwargs,
):
    """Add the LoRA adapters to ``model`` in place (diffusers' ``PeftAdapterMixin.add_adapter``:
    the model stays the model, no wrapper) and freeze every other weight; returns ``model``.

    ``with adapters_disabled(model):`` gives the base model (the teacher) with the same weights.
    """
    model.requires_grad_(False)
    model.add_adapter(lora_config(rank, alpha, dropout, targets, **kwargs))
    return model


def lora_trainable_params(model: nn.Module, **kwargs) -> int:
    """Trainable parameters of the default LoRA on ``model`` (build it on the meta device to count for free)."""
    apply_lora(model, **kwargs)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_rank(model: nn.Module) -> int:
    """The rank of ``model``'s LoRA adapter."""
    return int(model.peft_config["default"].r)


def is_adapted(model: nn.Module) -> bool:
    """Whether ``model`` carries LoRA adapters."""
    return bool(getattr(model, "_hf_peft_config_loaded", False))


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """The base model (the teacher): ``model`` with its adapters switched off, then on again."""
    if not is_adapted(model):
        yield model
        return
    model.disable_adapters()
    try:
        yield model
    finally:
        model.enable_adapters()


def adapter_state_dict(model: nn.Module, state_dict: dict | None = None) -> dict:
    """The adapter's weights (from ``state_dict``, by default the model's own) under the keys of
    PEFT's file format (``base_model.model.<module>.lora_A.weight``: what ``PeftModel.save_pretrained``
    writes and ``PeftModel.from_pretrained`` reads)."""
    from peft.utils import get_peft_model_state_dict

    return {PEFT_PREFIX + k: v for k, v in get_peft_model_state_dict(model, state_dict=state_dict).items()}


def save_adapter(model: nn.Module, out, state_dict: dict | None = None) -> None:
    """``adapter_model.safetensors`` + ``adapter_config.json`` in PEFT's format (the weights from
    ``state_dict``, by default the model's own)."""
    from safetensors.torch import save_file

    config = copy.copy(model.peft_config["default"])
    config.inference_mode = True
    config.save_pretrained(str(out))
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in adapter_state_dict(model, state_dict).items()},
        str(Path(out) / ADAPTER_WEIGHTS_FILE),
        metadata={"format": "pt"},
    )


def read_adapter_config(folder):
    """The ``peft.LoraConfig`` of ``folder/adapter_config.json``; a :class:`CheckpointError` naming
    the file and what is wrong with it (missing, not JSON, not a LoRA, values PEFT refuses)."""
    import json

    from peft import LoraConfig

    path = Path(folder) / ADAPTER_CONFIG_FILE

    def bad(problem: str) -> CheckpointError:
        return CheckpointError(
            f"{path} {problem}, so the LoRA adapter beside it cannot be loaded; re-export the model "
            f"(varestorer export RUN OUT), or copy the file again from where the model came from"
        )

    if not path.is_file():
        raise bad("does not exist")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise bad(f"holds a JSON {type(data).__name__}, not the object PEFT writes")
    if data.get("peft_type") != "LORA":
        raise bad(f"describes an adapter of type {data.get('peft_type')!r}, not a LoRA (peft_type: LORA)")
    try:
        config = LoraConfig.from_pretrained(str(folder))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise bad(f"is not a valid LoRA configuration ({type(exc).__name__}: {exc})") from None
    if not isinstance(config.r, int) or isinstance(config.r, bool) or config.r <= 0:
        raise bad(f"gives the rank r={config.r!r}, not a positive integer")
    return config


def load_adapter(model: nn.Module, folder) -> nn.Module:
    """Add the PEFT-format adapter in ``folder`` to ``model`` (in place). Raises ``ValueError``
    when its weights do not fit the model (another base, another rank), a
    :class:`~varestorer.errors.CheckpointError` when its files are damaged or its weights not finite."""
    from peft.utils import set_peft_model_state_dict

    config = read_adapter_config(folder)
    path = Path(folder) / ADAPTER_WEIGHTS_FILE
    weights = read_file(path)
    refuse_nonfinite(weights, "LoRA adapter", str(path))
    model.add_adapter(config)
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in weights.items()}
    result = set_peft_model_state_dict(model, state)
    if result.unexpected_keys:
        raise ValueError(
            f"{len(result.unexpected_keys)} adapter weights fit no module of this model "
            f"(first: {result.unexpected_keys[0]})"
        )
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise ValueError(f"{len(missing)} adapter weights are missing (first: {missing[0]})")
    return model.requires_grad_(False)


def base_weights(state: dict) -> dict:
    """The base weights in a transformer-with-adapters' ``state`` in the official key layout.

    An adapted layer holds its weight as ``....base_layer.weight`` beside ``lora_A``/``lora_B``;
    this gives the plain ``....weight`` keys of the base model (the adapters not fused: the
    teacher's weights; fused, the merged model's).
    """
    return {k.replace(".base_layer.", "."): v for k, v in state.items() if "lora_" not in k}


def base_state_dict(model: nn.Module) -> dict:
    """:func:`base_weights` of ``model``'s own state dict."""
    return base_weights(model.state_dict())
