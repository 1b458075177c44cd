"""``varestorer bundle``: make a pre-trained base the one a preset ships, and measure it.

    varestorer bundle --preset small --tokenizer outputs/small-tokenizer/final --teacher outputs/small-teacher/final

Writes the tokenizer's VAE and the teacher's transformer as float16 safetensors into the preset's
folder inside the package (``varestorer/assets/small/``; ``--out`` for elsewhere), then loads
them back as a user gets them and measures on the held-out photos: the tokenizer's reconstruction
PSNR and how much colour it keeps, the teacher's cross-entropy against a random initialisation's, and a grid of multi-step
samples from the held-out captions (``--grid``). The numbers go to ``base_info.json`` beside the
weights; the base's model card quotes them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "bundle",
        help="ship a pre-trained base (tokenizer + teacher runs) with a preset, and measure it",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default="small", help="the preset whose shipped weights to write (default: small)")
    p.add_argument("--tokenizer", required=True, help="a tokenizer-mode run's final/ folder (or its vae.safetensors)")
    p.add_argument(
        "--teacher", required=True, help="a teacher-mode run's final/ folder (or its transformer.safetensors)"
    )
    p.add_argument("--out", default=None, help="write here instead of the preset's folder in the package")
    p.add_argument("--grid", default=None, help="where to write the sample grid PNG (default: OUT/samples.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..distill.heldout import sample_grid, teacher_cross_entropy, tokenizer_quality
    from ..export import bundle_base
    from ..presets import get_preset
    from ..tokenizer.loading import load_vae
    from ..transformer.loading import build_transformer, load_transformer
    from ..transformer.text import TextEncoder

    preset = get_preset(args.preset)
    out = bundle_base(preset, args.tokenizer, args.teacher, args.out)
    vae, transformer = load_vae(preset, out), load_transformer(preset, out)  # as a user loads them
    text = TextEncoder.from_preset(preset)
    size = preset.resolution
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        initial = build_transformer(preset).eval()
    info = {
        "preset": preset.name,
        "resolution": size,
        **{f"tokenizer_heldout_{k}": round(v, 3) for k, v in tokenizer_quality(vae, size).items()},
        "teacher_heldout_cross_entropy": round(teacher_cross_entropy(transformer, vae, text, size), 4),
        "initial_heldout_cross_entropy": round(teacher_cross_entropy(initial, vae, text, size), 4),
        "tokenizer_source": str(args.tokenizer),
        "teacher_source": str(args.teacher),
        "vae_parameters": sum(p.numel() for p in vae.parameters()),
        "transformer_parameters": sum(p.numel() for p in transformer.parameters()),
        "text_encoder_parameters": sum(p.numel() for p in text.encoder.parameters()),
    }
    grid = sample_grid(
        transformer, vae, text, size, Path(args.grid) if args.grid else out / "samples.png", sampler=preset.sampler
    )
    (out / "base_info.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))
    total = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"wrote {out}/ ({total / 2**20:.1f} MiB of weights) and the sample grid {grid}")
    return 0
