"""The export form of a trained model: a self-describing folder, no pickles.

    adapter_model.safetensors, adapter_config.json   the LoRA adapter (PEFT format; loads with
                                                     peft.PeftModel.from_pretrained on the base)
    transformer.safetensors                          instead of the adapter, for full fine-tuning
                                                     and teacher mode (official key layout)
    encoder.safetensors                              the fine-tuned VAE encoder (``encoder.*`` keys
                                                     of Infinity's VAE layout)
    varestorer_config.json                           the base model, resolution, scale schedule,
                                                     attention mode and the recipe used
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_FILE = "varestorer_config.json"
ENCODER_FILE = "encoder.safetensors"
TRANSFORMER_FILE = "transformer.safetensors"


def _contiguous_cpu(state: dict) -> dict:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def export_config(model) -> dict:
    recipe, preset = model.recipe, model.recipe.model
    return {
        "format": "varestorer",
        "format_version": 1,
        "mode": recipe.mode,
        "base_preset": preset.preset,
        "base_transformer": preset.transformer,  # None: the preset's official checkpoint
        "base_vae": preset.vae,
        "text_encoder": preset.text_encoder,
        "random_init_base": preset.random_init,
        "resolution": preset.resolution,
        "scale_schedule": [list(s) for s in model.schedule],
        "attention": recipe.student.attention,
        "use_captions": recipe.data.use_captions,
        "has_adapter": hasattr(model.transformer, "peft_config"),
        "has_encoder": model.lq_encoder is not None,
        "recipe": recipe.to_dict(),
    }


def write_export(model, out: Path) -> Path:
    """Write ``model`` (a :class:`~varestorer.distill.model.VARestorerModel`) to ``out``."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    transformer = model.transformer
    if hasattr(transformer, "peft_config"):
        transformer.save_pretrained(str(out))
    else:
        save_file(_contiguous_cpu(model.base_transformer().state_dict()), str(out / TRANSFORMER_FILE))
    if model.lq_encoder is not None:
        save_file(_contiguous_cpu({f"encoder.{k}": v for k, v in model.lq_encoder.state_dict().items()}),
                  str(out / ENCODER_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(export_config(model), indent=2))
    return out
