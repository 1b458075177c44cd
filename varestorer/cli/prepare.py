"""``varestorer prepare SRC OUT``: a folder of HQ photos -> a sharded ``datasets`` dataset with captions."""

from __future__ import annotations

import argparse

from .options import SEED, device_name, number


def register(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="turn a folder of HQ photos into a captioned training dataset (resumable)",
        description="Walk SRC (nested folders of jpg/png/webp...), make the training crops, caption them and "
        "write a sharded Hugging Face datasets dataset to OUT (datasets.load_from_disk(OUT)). "
        "Interrupted? Run the same command again: it resumes with the first unfinished shard. "
        "Unusable files are skipped, counted and listed in OUT/skipped.tsv.",
    )
    p.add_argument("src", help="folder of HQ images (searched recursively)")
    p.add_argument("out", help="output folder (the dataset)")
    p.add_argument("--size", type=number(int, 8), default=512, help="crop size in pixels (default: 512)")
    p.add_argument(
        "--mode",
        choices=("crop", "resize", "short-side"),
        default="crop",
        help="crop: SIZE crops at native resolution (default); resize: short side to SIZE, center crop; "
        "short-side: short side to SIZE, no crop (the training loader crops)",
    )
    p.add_argument(
        "--crops",
        type=number(int, 1),
        default=1,
        help="distinct crops per image with --mode crop (default: 1; fewer when the image has fewer positions)",
    )
    p.add_argument(
        "--caption",
        default="blip",
        metavar="blip|none|FILE",
        help='blip (default), none, or a JSON-lines caption file ({"path": ..., "caption": ...} a line)',
    )
    p.add_argument(
        "--caption-prefix",
        default=None,
        metavar="DIR",
        help="the folder the caption file's absolute paths start with where it was written, read as SRC "
        "(the released VARestorer split: --caption 1.000_000084991.jsonl --caption-prefix /workspace/LSDIR)",
    )
    p.add_argument(
        "--caption-model",
        default=None,
        help="BLIP checkpoint: Hub id or local folder (default: Salesforce/blip-image-captioning-large)",
    )
    p.add_argument("--caption-batch-size", type=number(int, 1), default=16, help="images per BLIP batch (default: 16)")
    p.add_argument("--caption-prompt", default=None, help="conditional captioning prompt, e.g. 'a photography of'")
    p.add_argument("--device", type=device_name, default=None, help="captioning device (default: cuda if available)")
    p.add_argument(
        "--workers",
        type=number(int, 0, 256),
        default=4,
        help="processes reading and encoding images (default: 4; 0: none)",
    )
    p.add_argument(
        "--shard-size", type=number(int, 1), default=1000, help="source files per Arrow shard (default: 1000)"
    )
    p.add_argument(
        "--format",
        dest="image_format",
        choices=("png", "jpeg", "webp"),
        default="png",
        help="how the crops are stored (default: png, lossless)",
    )
    p.add_argument("--seed", type=SEED, default=0, help="seed of the crop positions (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="start OUT again from scratch")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.prepare import prepare_dataset
    from ..outputs import check_output_folder

    check_output_folder(args.out, "OUT")  # before any image is read

    try:
        report = prepare_dataset(
            args.src,
            args.out,
            size=args.size,
            mode=args.mode,
            crops=args.crops,
            seed=args.seed,
            image_format=args.image_format,
            caption=args.caption,
            caption_model=args.caption_model,
            caption_batch_size=args.caption_batch_size,
            caption_prompt=args.caption_prompt,
            caption_prefix=args.caption_prefix,
            device=args.device,
            shard_size=args.shard_size,
            workers=args.workers,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted; the finished shards are kept in {args.out}: run the same command again to resume")
        return 130
    print(report.summary())
    return 0
