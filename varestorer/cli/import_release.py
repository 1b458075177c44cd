"""``varestorer import-release CHECKPOINT -o OUT --vae VAE --restorer SWINIR``: the authors' released
VARestorer as an export folder.

CHECKPOINT is the release's ``weights/varestorer.pth`` (Hub: EvanEternal/VARestorer); VAE the public
``infinity_vae_d32reg.pth`` (Hub: FoundationVision/Infinity); SWINIR DiffBIR's
``general_swinir_v1.ckpt`` (Hub: lxq007/DiffBIR). OUT then restores as the release does
(``varestorer restore IMAGES -o DIR --model OUT``): its input form, the public encoder, the SwinIR
stage, Gumbel-drawn bits, LANCZOS resizing, Gaussian-weighted tiles. Nothing is unpickled.
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "import-release",
        help="turn the authors' released VARestorer (varestorer.pth) into an export folder",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="the release's weights/varestorer.pth")
    p.add_argument("-o", "--out", required=True, help="the export folder to write")
    p.add_argument("--vae", default=None, help="infinity_vae_d32reg.pth (default: the preset's, from the Hub)")
    p.add_argument(
        "--restorer", default=None, help="general_swinir_v1.ckpt (without it: no stage-1 restorer, 'w/o restorer')"
    )
    p.add_argument("--text-encoder", default=None, help="T5 encoder folder or Hub id (default google/flan-t5-xl)")
    p.add_argument(
        "--preset", default="infinity-2b", help="the base preset: tokenizer, resolution (default infinity-2b)"
    )
    p.add_argument("--upscale", type=float, default=4.0, help="the release's --sr_scale (default 4)")
    p.add_argument("--rank", type=int, default=32, help="the LoRA rank expected (default 32, the release's; 0: any)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import ExportConfig, import_release
    from ..outputs import check_output_folder

    check_output_folder(args.out, "OUT")  # before the release is read
    out = import_release(
        args.checkpoint,
        args.out,
        vae=args.vae,
        restorer=args.restorer,
        text_encoder=args.text_encoder,
        preset=args.preset,
        upscale=args.upscale,
        rank=args.rank or None,
        overwrite=args.overwrite,
    )
    config = ExportConfig.load(out)
    print(
        f"imported {args.checkpoint} (LoRA rank {config.source['lora_rank']}) into {out}: input "
        f"{config.lq_input}, decode {config.decode}, restorer {config.restorer or 'none'}, resize "
        f"{config.resize}, tiles {config.tile_weights}"
    )
    print(f"restore with: varestorer restore PHOTOS -o restored/ --model {out}")
    return 0
