"""The export form of a trained model: a self-describing folder, no pickles.

    adapter_model.safetensors, adapter_config.json   the LoRA adapter (PEFT format; loads with
                                                     peft.PeftModel.from_pretrained on the base)
    transformer.safetensors                          instead of the adapter, for full fine-tuning
                                                     and teacher mode (official key layout)
    encoder.safetensors                              the fine-tuned VAE encoder (``encoder.*`` keys
                                                     of Infinity's VAE layout)
    varestorer_config.json                           the base model, resolution, scale schedule,
                                                     attention mode and the recipe used
    merged_transformer.safetensors                   optional (``varestorer export --merge``): the
                                                     base with the LoRA merged in, official layout
    base_transformer.safetensors, base_vae.safetensors
                                                     only for a base built with random weights
                                                     (tiny preset, demo): they exist nowhere else

Training writes this form into every ``checkpoint-STEP/export`` and into ``OUTPUT_DIR/final``;
:func:`find_export` finds it from a run folder, a checkpoint or the export folder itself. A
``tokenizer``-mode run writes ``vae.safetensors`` and ``tokenizer_config.json`` instead
(:func:`write_tokenizer_export`).

The format is the library's: :func:`write_export` takes the trained parts and their weights
(gathered first when training is sharded), not a training module, and this module imports nothing
of the trainer; the trainer's checkpoint hooks (``distill/checkpointing.py``) call it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .checkpoints import list_checkpoints
from .errors import ConfigError
from .presets import get_preset
from .tokenizer.loading import load_vae
from .transformer.loading import load_transformer
from .transformer.lora import base_weights, is_adapted, save_adapter

CONFIG_FILE = "varestorer_config.json"
ENCODER_FILE = "encoder.safetensors"
TRANSFORMER_FILE = "transformer.safetensors"
MERGED_FILE = "merged_transformer.safetensors"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
BASE_TRANSFORMER_FILE = "base_transformer.safetensors"
BASE_VAE_FILE = "base_vae.safetensors"
FORMAT_VERSION = 1
TOKENIZER_VAE_FILE = "vae.safetensors"  # a tokenizer-mode run's export (write_tokenizer_export)
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def save_weights(state: dict, path: str | Path) -> None:
    """A state dict as safetensors (detached, contiguous, on the CPU: what safetensors needs)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path))


def export_config(recipe, schedule, *, has_adapter: bool, has_encoder: bool) -> dict:
    """``varestorer_config.json``: what the trained parts apply to (the base, its resolution and
    scale schedule), how the student reads its input, and the whole recipe."""
    preset = recipe.model
    return {
        "format": "varestorer",
        "format_version": FORMAT_VERSION,
        "mode": recipe.mode,
        "base_preset": preset.preset,
        "base_transformer": preset.transformer,  # None: the preset's official checkpoint
        "base_vae": preset.vae,
        "text_encoder": preset.text_encoder,
        "random_init_base": preset.random_init,
        "resolution": preset.resolution,
        "scale_schedule": [list(s) for s in schedule],
        "upscale": recipe.degradation.scale,
        "attention": recipe.student.attention,
        "lq_input": recipe.student.lq_input,
        "keep_lq_scales": recipe.student.keep_lq_scales,
        "use_captions": recipe.data.use_captions,
        "has_adapter": has_adapter,
        "has_encoder": has_encoder,
        "recipe": recipe.to_dict(),
    }


def write_export(
    out: str | Path,
    *,
    transformer,
    config: dict,
    transformer_state: dict | None = None,
    encoder_state: dict | None = None,
    base_vae_state: dict | None = None,
) -> Path:
    """Write the export form into ``out`` from the trained parts' weights.

    Args:
        transformer: the student's transformer (its adapter configuration, if it has adapters).
        config: :func:`export_config` of the run.
        transformer_state: its weights (by default its own ``state_dict()``): with LoRA adapters
            the adapter is written from them (and, with ``base_vae_state``, the base); otherwise
            (full fine-tuning, teacher mode) all of them, official layout.
        encoder_state: the fine-tuned LQ encoder's weights, if the run has one.
        base_vae_state: the base's VAE when the base has random weights (the tiny preset): such a
            base can be downloaded from nowhere, so it travels with the export (with the base transformer).
    """
    state = transformer.state_dict() if transformer_state is None else transformer_state
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if is_adapted(transformer):
        save_adapter(transformer, out, state)
        if base_vae_state is not None:
            save_weights(base_weights(state), out / BASE_TRANSFORMER_FILE)
    else:
        save_weights(state, out / TRANSFORMER_FILE)
    if encoder_state is not None:
        save_weights({f"encoder.{k}": v for k, v in encoder_state.items()}, out / ENCODER_FILE)
    if base_vae_state is not None:
        save_weights(base_vae_state, out / BASE_VAE_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return out


def write_tokenizer_export(out: str | Path, *, vae, recipe, schedule, vae_state: dict | None = None) -> Path:
    """A ``tokenizer``-mode run's export form: ``vae.safetensors`` (the official key layout:
    ``load_vae(preset, path)`` reads it) and ``tokenizer_config.json`` (preset, architecture,
    resolution, scale schedule, the recipe)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = vae.state_dict() if vae_state is None else vae_state
    save_weights({k: v.clone() for k, v in state.items()}, out / TOKENIZER_VAE_FILE)
    config = {
        "format": "varestorer-tokenizer",
        "format_version": 1,
        "base_preset": recipe.model.preset,
        "vae": dict(vae.config),
        "resolution": recipe.model.resolution,
        "scale_schedule": [list(s) for s in schedule],
        "recipe": recipe.to_dict(),
    }
    (out / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2, default=list))
    return out


def read_export_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(
            f"{folder} is not a VARestorer export (no {CONFIG_FILE}); make one with: varestorer export CHECKPOINT OUT"
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); re-export the model") from None
    version = config.get("format_version")
    if config.get("format") != "varestorer" or not isinstance(version, int) or version > FORMAT_VERSION:
        raise ConfigError(
            f"{path} is a format this varestorer does not read (format {config.get('format')!r}, "
            f"version {version!r}; this version reads up to {FORMAT_VERSION}): upgrade varestorer"
        )
    return config


def find_export(path: str | Path) -> Path:
    """The export folder of ``path``: an export folder, a ``checkpoint-STEP`` folder (its
    ``export/``), or a training output folder (its ``final/``, else its latest checkpoint)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(
            f"{path} does not exist; pass a training output folder, a checkpoint-STEP folder or an export folder"
        )
    for candidate in (path, path / "export", path / "final"):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    found = [c / "export" for c in list_checkpoints(path) if (c / "export" / CONFIG_FILE).is_file()]
    if found:
        return found[-1]
    raise ConfigError(
        f"no trained model found in {path}: expected {CONFIG_FILE} in it, in its export/ or "
        f"final/ folder, or a checkpoint-STEP/export folder (written by distill.py)"
    )


def export_files(folder: str | Path) -> list[Path]:
    """The files of the export form in ``folder`` (what ``varestorer export`` copies)."""
    folder = Path(folder)
    names = (
        CONFIG_FILE,
        ENCODER_FILE,
        TRANSFORMER_FILE,
        MERGED_FILE,
        BASE_TRANSFORMER_FILE,
        BASE_VAE_FILE,
        *ADAPTER_FILES,
    )
    return [folder / n for n in names if (folder / n).is_file()]


def copy_export(src: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Copy the export form found in ``src`` (see :func:`find_export`) into the folder ``out``."""
    src, out = find_export(src), Path(out).expanduser()
    if out.resolve() == src.resolve():
        return out
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty; choose another folder or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    for f in export_files(src):
        shutil.copy2(f, out / f.name)
    return out


def bundle_base(preset, vae_checkpoint, transformer_checkpoint, out: str | Path | None = None) -> Path:
    """Write a pre-trained base into the preset's shipped folder (``out``: elsewhere) as float16
    safetensors, the form ``preset: NAME`` loads with no download: ``vae.safetensors`` and
    ``transformer.safetensors`` (from a ``tokenizer``-mode and a ``teacher``-mode run)."""
    import torch

    preset = get_preset(preset)
    out = Path(out) if out is not None else preset.weights_dir()
    if out is None:
        raise ConfigError(f"preset {preset.name!r} ships no weights: pass --out")
    out.mkdir(parents=True, exist_ok=True)
    vae = load_vae(preset, vae_checkpoint)
    transformer = load_transformer(preset, transformer_checkpoint)
    for model, name in ((vae, preset.vae_file), (transformer, preset.transformer_file)):
        save_weights(
            {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in model.state_dict().items()}, out / name
        )
    return out
