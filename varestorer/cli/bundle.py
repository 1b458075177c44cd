"""``varestorer bundle``: make a pre-trained base the one a preset ships, and measure it.

    varestorer bundle --preset small --tokenizer outputs/small-tokenizer/final --teacher outputs/small-teacher/final

Writes the tokenizer's VAE and the teacher's transformer as float16 safetensors into the preset's
folder inside the package (``varestorer/assets/small/``; ``--out`` for elsewhere), then loads
them back as a user gets them and measures on the held-out photos: the tokenizer's reconstruction
PSNR and how much colour it keeps, the teacher's cross-entropy against a random initialisation's, and a grid of multi-step
samples from the held-out captions (``--grid``). The numbers go to ``base_info.json`` beside the
weights; the base's model card quotes them.

    varestorer bundle --preset small --restorer outputs/small-restorer/final

ships a ``restorer``-mode run's SwinIR the same way (``restorer.safetensors``, float16: what
``model.restorer: preset`` loads) and adds its held-out PSNR, and the resized LQ's, to
``base_info.json``. Either pair, or both, in one call.
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
    p.add_argument("--tokenizer", help="a tokenizer-mode run's final/ folder (or its vae.safetensors)")
    p.add_argument("--teacher", help="a teacher-mode run's final/ folder (or its transformer.safetensors)")
    p.add_argument("--restorer", help="a restorer-mode run's final/ folder (or its restorer.safetensors)")
    p.add_argument("--out", default=None, help="write here instead of the preset's folder in the package")
    p.add_argument("--grid", default=None, help="where to write the sample grid PNG (default: OUT/samples.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..outputs import write_text
    from ..presets import get_preset

    if (args.tokenizer is None) != (args.teacher is None) or (args.tokenizer is None and args.restorer is None):
        raise ConfigError("pass --tokenizer and --teacher (the base), --restorer (its stage-1 restorer), or all three")
    preset = get_preset(args.preset)
    out = Path(args.out) if args.out is not None else preset.weights_dir()
    if out is None:
        raise ConfigError(f"preset {preset.name!r} ships no weights: pass --out")
    info_file = out / "base_info.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    if args.tokenizer is not None:
        info.update(_bundle_base(args, preset, out))
    if args.restorer is not None:
        info.update(_bundle_restorer(args.restorer, preset, out))
    write_text(info_file, json.dumps(info, indent=2))  # whole or not at all: it holds earlier bundles' numbers
    print(json.dumps(info, indent=2))
    total = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"wrote {out}/ ({total / 2**20:.1f} MiB of weights)")
    return 0


def _bundle_restorer(checkpoint: str, preset, out: Path) -> dict:
    """Ship a stage-1 restorer (float16) and measure it as a user loads it."""
    import torch

    from ..degradations import DegradationPipeline
    from ..distill.heldout import heldout_restorer_psnr
    from ..restorer import RESTORER_FILE, load_restorer, save_restorer

    out.mkdir(parents=True, exist_ok=True)
    save_restorer(load_restorer(checkpoint, dtype=torch.float16), out / RESTORER_FILE)
    restorer = load_restorer(out / RESTORER_FILE)  # float32, from the float16 file
    degradation = DegradationPipeline.from_preset("realesrgan-x4")
    scores = heldout_restorer_psnr(restorer, degradation, preset.resolution)
    return {
        "restorer_heldout_psnr": round(scores["heldout_psnr"], 3),
        "restorer_heldout_lq_psnr": round(scores["heldout_lq_psnr"], 3),
        "restorer_parameters": sum(p.numel() for p in restorer.parameters()),
        "restorer_source": str(checkpoint),
    }


def _bundle_base(args: argparse.Namespace, preset, out: Path) -> dict:
    """Ship the tokenizer's VAE and the teacher's transformer (float16), measure them, write the grid."""
    import torch

    from ..distill.heldout import sample_grid, teacher_cross_entropy, tokenizer_quality
    from ..export import bundle_base
    from ..tokenizer.loading import load_vae
    from ..transformer.loading import build_transformer, load_transformer
    from ..transformer.text import TextEncoder

    out = bundle_base(preset, args.tokenizer, args.teacher, out)
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
    print(f"wrote the sample grid {grid}")
    return info
