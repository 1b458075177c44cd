"""Loading Infinity's official transformer checkpoint (``infinity_2b_reg.pth``).

The released file is a flat state dict (``tools/run_infinity.py`` passes ``torch.load``'s
result straight to ``load_state_dict``); a training checkpoint holds it under
``["trainer"]["gpt_fsdp"]`` (or ``"gpt_ema_fsdp"``), which loads too. Keys prefixed by
``module.`` (DDP) or ``_orig_mod.`` (``torch.compile``) are accepted, and a ``cfg_uncond`` of
another text length is cut or extended as Infinity's ``load_state_dict`` does; the constant
``zero_k_bias`` buffers are filled in when absent.

Loading is strict where Infinity's is not (``strict=False``): the only extra keys accepted are
those of :data:`KNOWN_EXTRAS`, buffers that Infinity (or VAR, which it grew from) registered
and that its own ``load_state_dict`` drops (``lvl_1L``, ``attn_bias_for_masking``, ...). They
are ignored and named, with their reasons, in one info log note. Any other extra, missing or
mis-shaped key is an error listing the keys.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

import torch

from ..checkpoints import cast_floats, load_strict, read_file, resolve_file, select_state_dict
from ..errors import CheckpointError
from ..presets import PRESETS, Preset, get_preset
from .infinity import InfinityTransformer

#: Extra top-level keys of an official checkpoint that are ignored, with the reason. Infinity's
#: ``Infinity.load_state_dict`` (infinity/models/infinity.py) pops exactly these four; none of them
#: holds a learned weight. (Infinity's RoPE table ``rope2d_freqs_grid`` is a plain attribute, never in
#: a state dict; its ``ln_wo_grad`` norms have no state with the 2B's LayerNorm.)
KNOWN_EXTRAS: dict[str, str] = {
    "lvl_1L": "scale index of each token, a buffer of VAR and older Infinity; recomputed from the scale schedule",
    "attn_bias_for_masking": "block-causal attention mask, a buffer of VAR and older Infinity; built per schedule",
    "Infinity_visible_kvlen": "flash-attention mask lengths of an older Infinity; unused (full or causal masks here)",
    "Infinity_invisible_qlen": "flash-attention mask lengths of an older Infinity; unused (full or causal masks here)",
}
_PREFIXES = ("module.", "_orig_mod.")


def build_transformer(preset: str | Preset) -> InfinityTransformer:
    """The preset's transformer with freshly initialised weights (on the current default device)."""
    return InfinityTransformer(**get_preset(preset).transformer)


#: Infinity's scaling-study layer configurations (``tools/run_infinity.py``), with the 2B's
#: text encoder and d32 tokenizer; no public weights. Used to name a checkpoint's layout.
INFINITY_LAYER_CONFIGS: dict[str, dict] = {
    f"infinity-layer{depth}": dict(depth=depth, embed_dim=width, num_heads=heads, num_block_chunks=4)
    for depth, width, heads in (
        (12, 768, 8),
        (16, 1152, 12),
        (24, 1536, 16),
        (32, 2080, 20),
        (40, 2688, 24),
        (48, 3360, 28),
    )
}


@functools.cache
def _layout(kwargs: tuple) -> dict[str, tuple]:
    with torch.device("meta"):
        model = InfinityTransformer(**dict(kwargs))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def candidate_layouts() -> dict[str, dict[str, tuple]]:
    """``{name: {key: shape}}`` of every preset's transformer and Infinity's layer configurations."""
    configs = {name: p.transformer for name, p in PRESETS.items() if p.transformer}
    configs.update(INFINITY_LAYER_CONFIGS)
    return {name: _layout(tuple(sorted(kw.items()))) for name, kw in configs.items()}


def _transformer_weights(obj: Mapping) -> tuple[dict, list[str]]:
    trainer = obj.get("trainer") if isinstance(obj, Mapping) else None
    if isinstance(trainer, Mapping):
        for key in ("gpt_fsdp", "gpt_ema_fsdp", "gpt_wo_ddp"):
            if isinstance(trainer.get(key), Mapping):
                return dict(trainer[key]), [k for k in obj if k != "trainer"]
    return select_state_dict(obj, ("gpt_fsdp", "gpt_ema_fsdp", "gpt_wo_ddp", "state_dict", "model", "module"))


def _fit_cfg_uncond(state: dict, model: InfinityTransformer) -> dict:
    """Infinity's rule: a longer ``cfg_uncond`` is cut, a shorter one completed with the default init."""
    old = state.get("cfg_uncond")
    maxlen, channels = model.config.text_maxlen, model.config.text_channels
    if old is None or old.ndim != 2 or old.shape[1] != channels or old.shape[0] == maxlen:
        return state
    if old.shape[0] > maxlen:
        new = old[:maxlen]
    else:
        default = InfinityTransformer.default_cfg_uncond(maxlen, channels)
        new = torch.cat((old.to(default.dtype), default[old.shape[0] :]))
    return {**state, "cfg_uncond": new}


def _rename(key: str) -> str:
    for prefix in _PREFIXES:
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def load_transformer_state(
    model: InfinityTransformer,
    state_dict: Mapping,
    source: str = "<state dict>",
    unused_top_level=(),
    check_finite: bool = True,
) -> None:
    """Strictly load an official-layout state dict into ``model`` (see the module doc);
    ``check_finite=False``: the caller checks the values (``load_strict``)."""
    state = {_rename(k): v for k, v in state_dict.items()}
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"transformer checkpoint {source} holds entries that are not tensors")
    has_blocks = any(k.startswith("block_chunks.") for k in state)
    for key in model.state_dict():  # constant zero buffers; a file saved without buffers may lack them
        if has_blocks and key.endswith("zero_k_bias") and key not in state:
            state[key] = torch.zeros(model.config.embed_dim)
    load_strict(
        model,
        _fit_cfg_uncond(state, model),
        what="transformer",
        source=source,
        candidates=candidate_layouts(),
        unused_top_level=list(unused_top_level),
        known_extras=KNOWN_EXTRAS,
        check_finite=check_finite,
    )


def load_transformer(
    preset: str | Preset = "infinity-2b",
    checkpoint: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    blocks_dtype: torch.dtype | None = None,
) -> InfinityTransformer:
    """Build the preset's transformer and load its weights.

    ``checkpoint`` is a local file (``.pth`` read with ``weights_only=True``, or
    safetensors), a folder holding the preset's transformer file, or a Hub repo id; by
    default the preset's official Hub repo. The model is built on the meta device and the
    checkpoint's tensors are assigned (no time spent on a random initialisation).
    ``blocks_dtype``: the blocks read in it and the rest float32, as
    :meth:`~InfinityTransformer.cast_blocks` holds them (``dtype`` is then ignored); each tensor
    is cast as it is read, so no float32 copy of the blocks is ever made.
    """
    preset = get_preset(preset)
    source = checkpoint if checkpoint is not None else preset.default_weights(preset.transformer_file)
    path = resolve_file(source, preset.transformer_file)
    with torch.device("meta"):
        model = build_transformer(preset)
    wanted = dtype  # the dtype asked for, whatever the file's (a shipped base is float16)
    if blocks_dtype is not None:
        held = {k: v.dtype for k, v in model.cast_blocks(blocks_dtype).state_dict().items()}
        wanted = lambda key: held.get(_rename(key), torch.float32)  # noqa: E731 - per key, as read
    state, unused = _transformer_weights(read_file(path, wanted))  # cast tensor by tensor
    state = cast_floats(state, wanted)  # a torch file's nested state dict
    load_transformer_state(model, state, source=str(path), unused_top_level=unused)
    if blocks_dtype is not None or dtype == torch.float32:
        model = model.to(device)
    else:
        model = model.to(device=device, dtype=dtype)
    return model.eval()
