"""``varestorer info --preset NAME [--json]``: a preset's facts, counted on the meta device."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser(
        "info",
        help="facts of a model preset (parameter counts, scale schedules)",
        description="Print the facts of a preset without allocating its weights.",
    )
    p.add_argument("--preset", default="infinity-2b", help="preset name (default: infinity-2b)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def vae_facts(preset) -> dict:
    import torch

    from ..tokenizer import num_tokens, scale_schedule
    from ..tokenizer.loading import build_vae
    from ..tokenizer.schedules import LISTED_SIDES, latent_resolutions

    with torch.device("meta"):
        vae = build_vae(preset)
    schedules = {}
    for res in latent_resolutions(vae.downsample, LISTED_SIDES):
        sched = scale_schedule(res, vae.downsample)
        schedules[str(res)] = {"sides": [h for h, _ in sched], "scales": len(sched), "tokens": num_tokens(sched)}
    return {
        "vae_params": _count(vae),
        "vae_encoder_params": _count(vae.encoder),
        "vae_decoder_params": _count(vae.decoder),
        "vae_downsample": vae.downsample,
        "bits_per_token": vae.codebook_dim,
        "scale_schedules": schedules,
    }


def transformer_facts(preset) -> dict:
    """Transformer size and the default LoRA's trainable parameters (PEFT on the meta device)."""
    if not preset.transformer:
        return {}
    import torch

    from ..transformer.loading import build_transformer
    from ..transformer.lora import DEFAULT_RANK, lora_trainable_params

    with torch.device("meta"):
        model = build_transformer(preset)
    c = model.config
    return {
        "transformer_params": _count(model),
        "transformer_depth": c.depth,
        "transformer_width": c.embed_dim,
        "transformer_heads": c.num_heads,
        "text_channels": c.text_channels,
        "lora_rank": DEFAULT_RANK,
        "lora_trainable_params": lora_trainable_params(model),
    }


#: Functions ``preset -> dict`` whose facts ``info`` prints, in order.
SECTIONS = [vae_facts, transformer_facts]


def facts(name: str) -> dict:
    from ..presets import get_preset

    preset = get_preset(name)
    out = {
        "preset": preset.name,
        "description": preset.description,
        "resolution": preset.resolution,
        "text_encoder": preset.text_encoder,
        "sampler": preset.sampler.as_kwargs(),
    }
    for section in SECTIONS:
        out.update(section(preset))
    return out


def run(args: argparse.Namespace) -> int:
    info = facts(args.preset)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key == "scale_schedules":
            print("scale_schedules:")
            for res, s in value.items():
                print(f"  {res:>5}px: {s['scales']:2d} scales, {s['tokens']:5d} tokens, sides {s['sides']}")
        elif isinstance(value, int):
            print(f"{key}: {value:,}")
        else:
            print(f"{key}: {value}")
    return 0
