"""``varestorer bench flops``: forward FLOPs of the one-step pass, the block-causal pass, KV-cached
sampling and the VAE for one image, counted on the meta device (no weights are allocated)."""

from __future__ import annotations

import argparse


def register_bench(sub) -> None:
    p = sub.add_parser(
        "flops",
        help="forward FLOPs of the one-step (full attention) vs block-causal pass, multistep and VAE",
        description="Count the forward FLOPs of one image on the meta device (no weights, no memory): the "
        "one-step pass with full attention over all scales, the block-causal (teacher) pass as SDPA "
        "computes it and over its visible blocks only, KV-cached multistep sampling with CFG, and the "
        "VAE encoder and decoder; with the attention share, the 2 N L estimate and, for infinity-2b at "
        "512 px, a note on the paper's figures.",
    )
    p.add_argument("--preset", default="infinity-2b", help="model preset (default: infinity-2b)")
    p.add_argument("--resolution", type=int, default=None, help="image size in px (default: the preset's)")
    p.add_argument(
        "--prompt-tokens",
        type=int,
        default=None,
        help="T5 tokens of the prompt (default: 30; the text only adds cross-attention and projection)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    import json

    from ..transformer.flops import flops_report, format_report

    r = flops_report(args.preset, args.resolution, args.prompt_tokens)
    print(json.dumps(r, indent=2) if args.json else format_report(r))
    return 0
