"""Loading Infinity's official VAE checkpoint (``infinity_vae_d32reg.pth``) into :class:`BSQVAE`.

The file holds its weights under the top-level key ``"vae"`` (``"ema"`` is accepted too).
Keys are either in the layout of the released model code (``encoder.conv_in.conv.weight``,
``...norm1.norm.weight``) or in the plain layout Infinity's own loader also accepts
(``encoder.conv_in.weight``, ``...norm1.weight``); both load. ``quantize.*`` duplicates
``quantizer.*`` (a module alias in the original code) and is not needed.
"""

from __future__ import annotations

import functools
import os

import torch

from ..checkpoints import cast_floats, load_strict, read_file, resolve_file, select_state_dict
from ..presets import PRESETS, Preset, get_preset
from .vae import BSQVAE

_WRAPPED = (".conv", ".norm")


def build_vae(preset: str | Preset) -> BSQVAE:
    """The preset's BSQ-VAE with freshly initialised weights (on the current default device)."""
    return BSQVAE(**get_preset(preset).vae)


@functools.cache
def _model_keys(preset_name: str) -> dict[str, tuple]:
    with torch.device("meta"):
        vae = build_vae(PRESETS[preset_name])
    return {k: tuple(v.shape) for k, v in vae.state_dict().items()}


def _renamer(model_keys: set[str]):
    def rename(key: str) -> str | None:
        if key.startswith("quantize."):
            return None
        if key in model_keys:
            return key
        stem, _, leaf = key.rpartition(".")
        for wrap in _WRAPPED:
            if f"{stem}{wrap}.{leaf}" in model_keys:
                return f"{stem}{wrap}.{leaf}"
        return key

    return rename


def load_vae_state(vae: BSQVAE, state_dict: dict, source: str = "<state dict>", unused_top_level=()) -> None:
    """Strictly load an official-layout VAE state dict into ``vae`` (see the module doc)."""
    load_strict(
        vae,
        state_dict,
        what="VAE",
        source=source,
        rename=_renamer(set(vae.state_dict())),
        candidates={name: _model_keys(name) for name in PRESETS},
        unused_top_level=list(unused_top_level),
    )


def load_vae(
    preset: str | Preset = "infinity-2b",
    checkpoint: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> BSQVAE:
    """Build the preset's VAE and load its weights.

    ``checkpoint`` is a local file, a folder holding the preset's VAE file, or a Hub repo id;
    by default the preset's official Hub repo. The model is built on the meta device and
    the checkpoint's tensors are assigned, so no random initialisation is spent.
    """
    preset = get_preset(preset)
    source = checkpoint if checkpoint is not None else preset.default_weights(preset.vae_file)
    path = resolve_file(source, preset.vae_file)
    state, unused = select_state_dict(read_file(path), ("vae", "ema", "state_dict", "model"))
    state = cast_floats(state, dtype)  # the dtype asked for, whatever the file's (a shipped base is float16)
    with torch.device("meta"):
        vae = build_vae(preset)
    load_vae_state(vae, state, source=str(path), unused_top_level=unused)
    vae = vae.to(device) if dtype == torch.float32 else vae.to(device=device, dtype=dtype)
    return vae.eval().requires_grad_(False)
