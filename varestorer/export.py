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
:func:`find_export` finds it from a run folder, a checkpoint or the export folder itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .errors import ConfigError

CONFIG_FILE = "varestorer_config.json"
ENCODER_FILE = "encoder.safetensors"
TRANSFORMER_FILE = "transformer.safetensors"
MERGED_FILE = "merged_transformer.safetensors"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
BASE_TRANSFORMER_FILE = "base_transformer.safetensors"
BASE_VAE_FILE = "base_vae.safetensors"
FORMAT_VERSION = 1


def save_weights(state: dict, path: str | Path) -> None:
    """A state dict as safetensors (detached, contiguous, on the CPU: what safetensors needs)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path))


def export_config(model) -> dict:
    recipe, preset = model.recipe, model.recipe.model
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
        "scale_schedule": [list(s) for s in model.schedule],
        "upscale": recipe.degradation.scale,
        "attention": recipe.student.attention,
        "lq_input": recipe.student.lq_input,
        "keep_lq_scales": recipe.student.keep_lq_scales,
        "use_captions": recipe.data.use_captions,
        "has_adapter": hasattr(model.transformer, "peft_config"),
        "has_encoder": model.lq_encoder is not None,
        "recipe": recipe.to_dict(),
    }


def write_export(model, out: Path) -> Path:
    """Write ``model`` (a :class:`~varestorer.distill.model.VARestorerModel`) to ``out``."""
    from .transformer.lora import base_state_dict

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    transformer = model.transformer
    if hasattr(transformer, "peft_config"):
        transformer.save_pretrained(str(out))
    else:
        save_weights(model.base_transformer().state_dict(), out / TRANSFORMER_FILE)
    if model.lq_encoder is not None:
        save_weights({f"encoder.{k}": v for k, v in model.lq_encoder.state_dict().items()}, out / ENCODER_FILE)
    if model.recipe.model.random_init:
        # a random base can be downloaded from nowhere: it travels with the export
        if hasattr(transformer, "peft_config"):
            save_weights(base_state_dict(transformer), out / BASE_TRANSFORMER_FILE)
        save_weights(model.vae.state_dict(), out / BASE_VAE_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(export_config(model), indent=2))
    return out


def read_export_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{folder} is not a VARestorer export (no {CONFIG_FILE}); "
                          f"make one with: varestorer export CHECKPOINT OUT")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); re-export the model") from None
    version = config.get("format_version")
    if config.get("format") != "varestorer" or not isinstance(version, int) or version > FORMAT_VERSION:
        raise ConfigError(f"{path} is a format this varestorer does not read (format {config.get('format')!r}, "
                          f"version {version!r}; this version reads up to {FORMAT_VERSION}): upgrade varestorer")
    return config


def find_export(path: str | Path) -> Path:
    """The export folder of ``path``: an export folder, a ``checkpoint-STEP`` folder (its
    ``export/``), or a training output folder (its ``final/``, else its latest checkpoint)."""
    from .distill.checkpointing import list_checkpoints

    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"{path} does not exist; pass a training output folder, a checkpoint-STEP "
                          f"folder or an export folder")
    for candidate in (path, path / "export", path / "final"):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    found = [c / "export" for c in list_checkpoints(path) if (c / "export" / CONFIG_FILE).is_file()]
    if found:
        return found[-1]
    raise ConfigError(f"no trained model found in {path}: expected {CONFIG_FILE} in it, in its export/ or "
                      f"final/ folder, or a checkpoint-STEP/export folder (written by distill.py)")


def export_files(folder: str | Path) -> list[Path]:
    """The files of the export form in ``folder`` (what ``varestorer export`` copies)."""
    folder = Path(folder)
    names = (CONFIG_FILE, ENCODER_FILE, TRANSFORMER_FILE, MERGED_FILE, BASE_TRANSFORMER_FILE, BASE_VAE_FILE,
             *ADAPTER_FILES)
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

    from .presets import get_preset
    from .tokenizer.loading import load_vae
    from .transformer.loading import load_transformer

    preset = get_preset(preset)
    out = Path(out) if out is not None else preset.weights_dir()
    if out is None:
        raise ConfigError(f"preset {preset.name!r} ships no weights: pass --out")
    out.mkdir(parents=True, exist_ok=True)
    vae = load_vae(preset, vae_checkpoint)
    transformer = load_transformer(preset, transformer_checkpoint)
    for model, name in ((vae, preset.vae_file), (transformer, preset.transformer_file)):
        save_weights({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in model.state_dict().items()},
                     out / name)
    return out
