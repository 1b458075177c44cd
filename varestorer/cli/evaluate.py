"""``varestorer evaluate``: score restorations the way the papers' tables do.

Two forms:

    varestorer evaluate --pred RESTORED/ --gt HR/ [--lq LR/] --out eval/
    varestorer evaluate --model DIR_OR_HUB_ID --method onestep --method zeroshot --lq LR/ --gt HR/ --out eval/

The first scores images restored elsewhere (with ``--lq``, the bicubic upsampling of the LQ
images is scored too, as a reference row). The second restores the LQ images with each
``--method`` (the ``restore`` command's methods, at the ground truth's size), times it (seconds per
image, wall clock) and scores it; ``--method bicubic`` alone needs no model. Images are paired by
name (``_LR4``/``_HR``/``x4`` tags ignored; a dataset root with ``test_LR/`` and ``test_HR/``
works as it is; see :mod:`varestorer.evaluation.pairs`).

PSNR and SSIM are on the Y channel (BT.601) after cropping ``--crop-border`` pixels (the papers
crop the scale, 4), as pyiqa computes them (``--ssim-convention basicsr``: as basicsr does). LPIPS, NIQE, DISTS, MUSIQ, MANIQA, CLIPIQA
and LIQE run where they and their weights are present; a metric that cannot run is reported as
unavailable with the reason. Written to ``--out``: ``results.md`` (the table), ``results.csv``,
``per_image.csv``, ``results.json`` and ``metric_vs_time.png``, plus each method's restorations.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import (
    METHOD_CHOICES,
    add_method_options,
    add_prompt_options,
    add_running_options,
    load_pipeline,
    number,
)


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="PSNR/SSIM/LPIPS/NIQE/... of restorations, or restore with methods and score",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--gt", required=True, help="ground-truth (HR) folder, or a dataset root holding test_HR/")
    p.add_argument("--pred", help="restored images to score")
    p.add_argument("--lq", help="LQ folder (or a root holding test_LR/): restored with --method, or a bicubic row")
    p.add_argument("--model", help="export folder or Hub repo id, to restore --lq with each --method")
    p.add_argument(
        "--method",
        action="append",
        choices=METHOD_CHOICES,
        help="a restoration method (repeat for several rows; default onestep with --model)",
    )
    p.add_argument("--out", default="evaluation", help="output folder (default: evaluation)")
    p.add_argument(
        "--crop-border", type=number(int, 0), default=0, help="pixels cut from each side before scoring (papers: 4)"
    )
    p.add_argument(
        "--ssim-convention",
        default="pyiqa",
        choices=("pyiqa", "basicsr"),
        help="pyiqa (default: Y rounded as MATLAB, as recent SR papers' tables) or basicsr (Y unrounded)",
    )
    p.add_argument("--metrics", default=None, help="comma-separated subset (default: all; unavailable ones say why)")
    p.add_argument("--allow-missing", action="store_true", help="skip ground-truth images without a partner")
    p.add_argument("--json", action="store_true", help="print results.json, not the table (stdout: the JSON alone)")
    p.add_argument(
        "--warmup",
        type=int,
        default=1,
        choices=(0, 1),
        help="restore the first image once untimed before timing each method (default 1)",
    )
    p.add_argument(
        "--record",
        metavar="DATASET",
        help="with a local --model folder: add the onestep row to its evaluation.json under DATASET "
        "(the model card, rendered by export/publish, shows it)",
    )
    add_prompt_options(p)
    add_running_options(p)
    add_method_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    import torch

    from ..errors import ConfigError
    from ..evaluation.metrics import DEFAULT_METRICS
    from ..evaluation.report import dumps_strict
    from ..evaluation.run import REPORT_FILES, evaluate, load_pairs
    from ..outputs import check_output_folder, check_outside_inputs
    from .options import method_kwargs, prompts_for

    methods = tuple(args.method or (("onestep",) if args.model else ()))
    if args.pred is None and not methods:
        raise ConfigError(
            "say what to score: --pred RESTORED_DIR, or --method M (with --lq, and --model unless M is bicubic)"
        )
    if methods and args.lq is None:
        raise ConfigError("--method needs --lq: the LQ images to restore")
    if args.pred is not None and args.model is not None:
        raise ConfigError("--pred scores existing restorations, --model makes them: pass one of the two")
    if args.record and args.model and Path(args.model).is_dir():
        from ..export.hub import read_evaluation

        read_evaluation(args.model)  # a damaged evaluation.json is said before the work, not after
    names = DEFAULT_METRICS if args.metrics is None else tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    if not names:
        raise ConfigError(
            f"--metrics {args.metrics!r} names no metric; name some (psnr,ssim,...) or leave it out for all"
        )
    check_output_folder(args.out, "--out")  # before any image is read or restored
    check_outside_inputs(args.out, {"--gt": args.gt, "--lq": args.lq, "--pred": args.pred}, "--out")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    data = load_pairs(
        args.gt, lq=args.lq, pred=args.pred, allow_missing=args.allow_missing, crop_border=args.crop_border
    )
    wanted = methods + (("bicubic",) if args.pred and args.lq and "bicubic" not in methods else ())
    pipe = load_pipeline(args, device, wanted) if wanted else None
    report = evaluate(
        data,
        pipe,
        methods=methods,
        out=args.out,
        metrics=names,
        device=device,
        ssim_convention=args.ssim_convention,
        prompts=lambda paths: prompts_for(args, paths),
        settings=lambda method: method_kwargs(args, method),
        batch_size=args.batch_size,
        tile_batch_size=args.tile_batch_size,
        warmup=bool(args.warmup),
        describe={"gt": str(args.gt), "lq": args.lq, "pred": args.pred, "model": args.model},
    )
    doc = report.write()
    if args.record:
        _record(args, report.rows)
    out = report.out
    written = [f for f in REPORT_FILES if (out / f).is_file()]
    wrote = f"wrote {out}/: {', '.join(written)}" + "".join(f", {name}/" for name in report.restored)
    if args.json:  # standard output is the JSON alone (| jq); what was written goes to stderr
        print(wrote, file=sys.stderr)
        print(dumps_strict(doc, indent=2, default=str))
        return 0
    print((out / "results.md").read_text())
    print(wrote)
    return 0


def _record(args, rows: list[dict]) -> None:
    """Merge the onestep row into ``MODEL/evaluation.json`` as ``{DATASET: {metric: value}}``."""

    from ..errors import ConfigError
    from ..evaluation.report import dumps_strict
    from ..export.hub import EVAL_FILE, read_evaluation
    from ..outputs import write_text

    folder = Path(args.model or "")
    row = next((r for r in rows if r["method"] == "onestep"), None)
    if args.model is None or not folder.is_dir() or row is None:
        raise ConfigError("--record needs a local --model folder and --method onestep")
    path = folder / EVAL_FILE
    table = read_evaluation(folder)
    table[args.record] = {k: v for k, v in row.items() if k not in ("method", "images") and v is not None}
    write_text(path, dumps_strict(table, indent=2))
    print(f"recorded the onestep row as {args.record!r} in {path}", file=sys.stderr if args.json else sys.stdout)
