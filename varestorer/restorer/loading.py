"""Loading DiffBIR's SwinIR checkpoint (``general_swinir_v1.ckpt``) into :class:`SwinIR`, and
saving one in this project's form.

DiffBIR's file is read as the release's ``load_swinir_model`` reads it: the weights under
``"state_dict"`` (or flat), keys prefixed by ``module.`` (DDP) or not; BasicSR's ``"params_ema"``
/ ``"params"`` (SwinIR's own releases) are accepted too. The architecture is inferred from the
keys and shapes (:func:`restorer_config_from_state`) unless a config is given, and loading is
strict: a missing, unexpected or mis-shaped key is a :class:`CheckpointError` naming it.

:func:`save_restorer` writes safetensors with the model's config in the file's metadata (under
``"swinir_config"``), which :func:`load_restorer` then uses instead of inferring.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..checkpoints import _TORCH_SUFFIXES, cast_floats, load_strict, read_file, resolve_file, select_state_dict
from ..errors import CheckpointError
from .swinir import RELEASE_CONFIG, SwinIR

#: The restorer's file in a folder (an export, a ``mode: restorer`` run's ``final/``).
RESTORER_FILE = "restorer.safetensors"
_METADATA_KEY = "swinir_config"
_STATE_KEYS = ("state_dict", "params_ema", "params")
_PREFIX = "module."


def _strip(key: str) -> str:
    return key[len(_PREFIX) :] if key.startswith(_PREFIX) else key


def restorer_config_from_state(state: Mapping[str, torch.Tensor]) -> dict:
    """The :class:`SwinIR` arguments of a state dict, from its keys and shapes (a ``module.``
    prefix is ignored): width from ``conv_first``, groups and blocks from the ``layers.{i}`` /
    ``blocks.{j}`` keys, heads and window from the bias tables (``((2w - 1)**2, heads)``), MLP
    ratio from ``mlp.fc1``, unshuffle scale from ``conv_first``'s input channels, ``sf`` from the
    number of ``conv_up{n}``, ``img_size`` from a stored ``attn_mask`` (``((img / w)**2, w*w, w*w)``).
    ``img_range`` and ``residual`` are not in a state dict: the release's 1.0 and ``False``."""
    shapes = {_strip(k): tuple(v.shape) for k, v in state.items()}

    def shape(key: str) -> tuple:
        if key not in shapes:
            raise CheckpointError(f"SwinIR checkpoint has no {key!r}, needed to infer its architecture")
        return shapes[key]

    if "conv_up1.weight" not in shapes or any(re.match(r"layers\.\d+\.conv\.\d+\.", k) for k in shapes):
        raise CheckpointError(
            "SwinIR checkpoint is not of the 'nearest+conv' / '1conv' kind (no conv_up1, or a '3conv' "
            "residual): only DiffBIR's layout is implemented"
        )
    unshuffled = "conv_first.weight" not in shapes  # a missing conv_first is named as DiffBIR's
    embed_dim, cin = shape("conv_first.1.weight" if unshuffled else "conv_first.weight")[:2]
    in_chans = shape("conv_last.weight")[0]
    unshuffle_scale = math.isqrt(cin // in_chans) if unshuffled else None
    if unshuffled and in_chans * unshuffle_scale**2 != cin:
        raise CheckpointError(f"SwinIR conv_first takes {cin} channels, not {in_chans} x a square unshuffle scale")
    blocks: dict[int, set[int]] = {}
    for key in shapes:
        if m := re.match(r"layers\.(\d+)\.residual_group\.blocks\.(\d+)\.", key):
            blocks.setdefault(int(m[1]), set()).add(int(m[2]))
    if not blocks:
        raise CheckpointError("SwinIR checkpoint has no layers.{i}.residual_group.blocks.{j} keys")
    depths = tuple(max(blocks.get(i, {-1})) + 1 for i in range(max(blocks) + 1))
    tables = [
        shape(f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table") for i in range(len(depths))
    ]
    window = (math.isqrt(tables[0][0]) + 1) // 2
    hidden = shape("layers.0.residual_group.blocks.0.mlp.fc1.weight")[0]
    mlp_ratio = hidden / embed_dim
    if int(embed_dim * mlp_ratio) != hidden:  # the model truncates embed_dim * mlp_ratio, as the reference
        mlp_ratio = math.nextafter(mlp_ratio, math.inf)
    mask = shapes.get("layers.0.residual_group.blocks.1.attn_mask")
    return dict(
        embed_dim=embed_dim,
        depths=depths,
        num_heads=tuple(t[1] for t in tables),
        window_size=window,
        mlp_ratio=mlp_ratio,
        img_size=window * math.isqrt(mask[0]) if mask else RELEASE_CONFIG["img_size"],
        sf=2 ** sum(f"conv_up{n}.weight" in shapes for n in (1, 2, 3)),
        unshuffle_scale=unshuffle_scale,
        in_chans=in_chans,
        img_range=RELEASE_CONFIG["img_range"],
        qkv_bias="layers.0.residual_group.blocks.0.attn.qkv.bias" in shapes,
        upsampler="nearest+conv",
        resi_connection="1conv",
        residual=False,  # not in a state dict: the reference's (ours are saved with their config)
    )


def _metadata_config(path: Path) -> dict | None:
    if path.suffix in _TORCH_SUFFIXES:
        return None
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        text = (f.metadata() or {}).get(_METADATA_KEY)
    try:
        return json.loads(text) if text else None
    except ValueError as exc:
        raise CheckpointError(
            f"SwinIR checkpoint {path}: its {_METADATA_KEY} metadata is not valid JSON ({exc}); get the file "
            f"again or re-export the model"
        ) from None


def load_restorer(
    path: str | os.PathLike,
    config: Mapping | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SwinIR:
    """A :class:`SwinIR` (eval mode, no gradients) with the weights of ``path`` loaded strictly.

    ``path``: a checkpoint file (DiffBIR's ``.ckpt``, BasicSR's, a :func:`save_restorer` file) or a
    folder holding :data:`RESTORER_FILE`. ``config``: the model's arguments; by default those in the
    file's metadata (a file of :func:`save_restorer`), else inferred from the state dict
    (:func:`restorer_config_from_state`).
    The model is built on the meta device and gets the file's tensors assigned.
    """
    path = resolve_file(path, RESTORER_FILE)
    state, unused = select_state_dict(read_file(path), _STATE_KEYS)
    if config is None:
        config = _metadata_config(path) or restorer_config_from_state(state)
    try:
        with torch.device("meta"):
            model = SwinIR(**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"SwinIR checkpoint {path}: no model fits its config {dict(config)}: {exc}") from exc
    load_strict(
        model,
        cast_floats(state, dtype),
        what="SwinIR",
        source=str(path),
        rename=_strip,
        unused_top_level=unused,
    )
    return model.to(device).eval().requires_grad_(False)  # already in dtype (cast_floats)


def save_restorer(model: SwinIR, path: str | os.PathLike, state: Mapping | None = None) -> None:
    """``model``'s weights (``state``, by default its own state dict) as safetensors, its config
    (JSON) in the metadata."""
    from safetensors.torch import save_file

    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    state = {k: v.detach().contiguous().cpu() for k, v in (model.state_dict() if state is None else state).items()}
    save_file(state, str(path), metadata={_METADATA_KEY: json.dumps(config)})
