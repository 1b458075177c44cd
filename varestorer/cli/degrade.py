"""``varestorer degrade SRC OUT``: LQ images (and the HQ crops) through a degradation preset, plus a
comparison sheet; ``varestorer bench degrade`` is registered from here too."""

from __future__ import annotations

import argparse

from .options import SEED, device_name, number


def register(sub) -> None:
    p = sub.add_parser(
        "degrade",
        help="degrade images with a preset: see what the model will see, build paired test sets",
        description="Center-crop every image of SRC (a folder, a folder written by 'prepare', or 'skimage' for the "
        "photos scikit-image ships) to SIZE and write its LQ through the degradation preset to OUT/lq "
        "(the HQ crop to OUT/hq with --save-hq), the random choices of each to OUT/params.jsonl, and "
        "OUT/sheet.png: HQ | LQ under each shipped preset for the first images. An image's LQ depends "
        "only on (--seed, its path).",
    )
    p.add_argument("src", help="folder of images, a prepared dataset folder, or 'skimage'")
    p.add_argument("out", help="output folder")
    p.add_argument(
        "--preset", default="realesrgan-x4", help="preset name in degradations/ or a YAML path (default: realesrgan-x4)"
    )
    p.add_argument("--seed", type=SEED, default=0, help="seed of the run (default: 0)")
    p.add_argument("--size", type=number(int, 1), default=512, help="HQ crop size (default: 512; LQ is SIZE/scale)")
    p.add_argument("--resize", action="store_true", help="resize the short side to SIZE before cropping")
    p.add_argument("--save-hq", action="store_true", help="also write the HQ crops to OUT/hq (paired test set)")
    p.add_argument("--batch", type=number(int, 1), default=8, help="images per pipeline call (default: 8)")
    p.add_argument("--limit", type=number(int, 1), default=None, help="stop after this many images")
    p.add_argument("--device", type=device_name, default=None, help="device (default: cuda if available)")
    p.add_argument("--no-sheet", action="store_true", help="do not write OUT/sheet.png")
    p.add_argument(
        "--sheet-samples", type=number(int, 1), default=4, help="images on the comparison sheet (default: 4)"
    )
    p.add_argument(
        "--sheet-presets", default=None, help="comma-separated presets on the sheet (default: every shipped preset)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..degradations.folder import degrade_folder

    report = degrade_folder(
        args.src,
        args.out,
        preset=args.preset,
        seed=args.seed,
        size=args.size,
        resize=args.resize,
        save_hq=args.save_hq,
        batch=args.batch,
        device=args.device,
        limit=args.limit,
        sheet=not args.no_sheet,
        sheet_samples=args.sheet_samples,
        sheet_presets=args.sheet_presets.split(",") if args.sheet_presets else None,
    )
    print(report.summary())
    if not args.no_sheet and report.written:
        print(f"comparison sheet: {report.out / 'sheet.png'}")
    return 0


# ---------------------------------------------------------------------- varestorer bench degrade
def register_bench(sub) -> None:
    p = sub.add_parser(
        "degrade",
        help="images/s of the on-device degradation pipeline vs sequential basicsr",
        description="Time the batched on-device pipeline and, in the same run, the sequential per-image run of "
        "the same basicsr calls (Real-ESRGAN's way), on scikit-image photos.",
    )
    p.add_argument("--preset", default="realesrgan-x4", help="preset (default: realesrgan-x4)")
    p.add_argument("--size", type=number(int, 1), default=512, help="HQ size (default: 512)")
    p.add_argument("--batch", type=number(int, 1), default=8, help="batch size (default: 8)")
    p.add_argument("--steps", type=number(int, 1), default=3, help="timed batches (default: 3)")
    p.add_argument("--device", type=device_name, default=None, help="device (default: cuda if available)")
    p.add_argument("--no-sequential", action="store_true", help="skip the sequential basicsr run")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    import json

    from ..degradations.bench import bench_degrade, format_result

    r = bench_degrade(
        args.preset,
        size=args.size,
        batch=args.batch,
        steps=args.steps,
        device=args.device,
        sequential=not args.no_sequential,
    )
    print(json.dumps(r, indent=2) if args.json else format_result(r))
    return 0
