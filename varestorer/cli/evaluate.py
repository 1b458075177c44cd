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
import time
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


def run(args: argparse.Namespace) -> int:  # noqa: C901
    import json

    import torch
    from tqdm.auto import tqdm

    from ..errors import ConfigError
    from ..evaluation.metrics import DEFAULT_METRICS, METRICS, build_metrics, score
    from ..evaluation.pairs import index_images, match, resolve_folder
    from ..evaluation.report import summarise, write_report
    from ..outputs import check_output_folder, check_outside_inputs

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
    check_output_folder(args.out, "--out")  # before any image is read or restored
    check_outside_inputs(args.out, {"--gt": args.gt, "--lq": args.lq, "--pred": args.pred}, "--out")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gt_dir = resolve_folder(args.gt, "gt")
    gt = index_images(gt_dir, "gt")
    lq = index_images(resolve_folder(args.lq, "lq"), "lq") if args.lq else None
    pred_dir = resolve_folder(args.pred, "pred") if args.pred else None
    pred = index_images(pred_dir, "pred") if pred_dir else None
    pairs = match(gt, pred, lq, allow_missing=args.allow_missing)
    truth = [_read(p.gt) for p in pairs]  # decoded once: sizes, then every method's scores
    _check_crop_border(args.crop_border, pairs, truth)
    if lq is not None:  # restored at the ground truth's size: an LQ of another shape would be squashed
        from ..evaluation.pairs import check_sizes, image_size

        check_sizes([(p.lq.name, image_size(p.lq), t.shape[:2]) for p, t in zip(pairs, truth)], lq=True)
    fns, unavailable = build_metrics(names, device)
    out = Path(args.out).expanduser()
    rows, per_image, problems = [], [], {}
    sources = ([("pred", None)] if pred is not None else []) + [(m, m) for m in methods]
    if pred is not None and lq is not None and "bicubic" not in methods:
        sources.append(("bicubic", "bicubic"))
    wanted = tuple(m for _, m in sources if m)
    pipe = load_pipeline(args, device, wanted) if wanted else None
    for name, method in sources:
        images, seconds = _restorations(args, pipe, pairs, truth, method, out / name)
        scored = []
        for pair, image, gt_image in tqdm(list(zip(pairs, images, truth)), desc=f"score ({name})", unit="image"):
            scored.append(
                {
                    "method": name,
                    "image": pair.gt.name,
                    **score(fns, image, gt_image, args.crop_border, problems, args.ssim_convention),
                }
            )
        per_image += scored
        row = {
            "method": name,
            **summarise(scored, [m for m in fns if not METRICS[m].per_set]),
            "images": len(scored),
            "sec_per_image": seconds,
        }
        for m in (m for m in fns if METRICS[m].per_set):  # FID: restorations folder vs ground-truth folder
            row[m] = fns[m](pred_dir if method is None else out / name, gt_dir)
        rows.append(row)
    metrics = [m for m in names if m in fns or m in unavailable]
    for m, why in problems.items():  # ran, but not on every image
        n = sum(1 for r in per_image if r.get(m) is None)
        unavailable.setdefault(m, f"not computed for {n} of {len(per_image)} images ({why})")
    settings = {
        "gt": str(args.gt),
        "lq": args.lq,
        "pred": args.pred,
        "model": args.model,
        "crop_border": args.crop_border,
        "ssim_convention": args.ssim_convention,
        "device": device,
        "pairs": len(pairs),
        "title": f"{len(pairs)} images of {args.gt}, crop border {args.crop_border}",
    }
    doc = write_report(out, rows, per_image, metrics, unavailable, settings)
    if args.record:
        _record(args, rows)
    written = [
        f
        for f in ("results.md", "results.csv", "per_image.csv", "results.json", "metric_vs_time.png")
        if (out / f).is_file()
    ]
    wrote = f"wrote {out}/: {', '.join(written)}" + "".join(f", {name}/" for name, m in sources if m)
    if args.json:  # standard output is the JSON alone (| jq); what was written goes to stderr
        print(wrote, file=sys.stderr)
        print(json.dumps(doc, indent=2, default=str))
        return 0
    print((out / "results.md").read_text())
    print(wrote)
    return 0


def _record(args, rows: list[dict]) -> None:
    """Merge the onestep row into ``MODEL/evaluation.json`` as ``{DATASET: {metric: value}}``."""
    import json

    from ..errors import ConfigError
    from ..export.hub import EVAL_FILE, read_evaluation
    from ..outputs import write_text

    folder = Path(args.model or "")
    row = next((r for r in rows if r["method"] == "onestep"), None)
    if args.model is None or not folder.is_dir() or row is None:
        raise ConfigError("--record needs a local --model folder and --method onestep")
    path = folder / EVAL_FILE
    table = read_evaluation(folder)
    table[args.record] = {k: v for k, v in row.items() if k not in ("method", "images") and v is not None}
    write_text(path, json.dumps(table, indent=2))
    print(f"recorded the onestep row as {args.record!r} in {path}", file=sys.stderr if args.json else sys.stdout)


def _read(path: Path):
    from ..data.images import ImageSkip, read_rgb, to_tensor, to_uint8
    from ..errors import ConfigError
    from ..inference.pipeline import MAX_OUTPUT_PIXELS

    def check_size(w: int, h: int) -> None:  # from the header, before the pixels are decoded
        if w * h > MAX_OUTPUT_PIXELS:
            raise ConfigError(f"more than the {MAX_OUTPUT_PIXELS / 1e6:.0f} MP a restoration can have")

    try:
        return to_uint8(to_tensor(read_rgb(path, check_size)))
    except ImageSkip as exc:
        raise ConfigError(
            f"cannot score {path}: {exc}; replace the file, or move it out of the folder (with its partner, "
            f"or pass --allow-missing)"
        ) from None


def _check_crop_border(border: int, pairs, truth: list) -> None:
    """``--crop-border`` must leave pixels of every image to score (else PSNR is nan)."""
    from ..errors import ConfigError

    for pair, t in zip(pairs, truth):
        h, w = t.shape[:2]
        if 2 * border >= min(h, w):
            raise ConfigError(
                f"--crop-border {border} cuts all of {pair.gt.name} ({w}x{h}): {border} pixels from each side leave "
                f"nothing to score; use at most {(min(h, w) - 1) // 2} for these images (the papers crop the scale, 4)"
            )


def _restorations(args, pipe, pairs, truth: list, method: str | None, folder: Path) -> tuple[list, float | None]:
    """The images to score: ``--pred``'s (``method`` None), or ``method``'s restorations of the LQ
    images at the ground truth's size (saved under ``folder``), with seconds per image."""
    import numpy as np
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from ..data.images import ImageSkip, to_uint8
    from ..errors import ConfigError
    from ..evaluation.pairs import check_sizes, image_size
    from ..inference.files import read_input
    from ..inference.pipeline import resize_images
    from ..outputs import save_image
    from .options import method_kwargs, prompts_for

    if method is None:
        images = [_read(p.pred) for p in pairs]
        check_sizes([(p.pred.name, im.shape[:2], t.shape[:2]) for p, im, t in zip(pairs, images, truth)])
        return images, None
    folder.mkdir(parents=True, exist_ok=True)
    sync = torch.cuda.synchronize if str(getattr(pipe, "device", "cpu")).startswith("cuda") else (lambda: None)
    todo = []  # (pair, LQ tensor, GT size), restored in batches of one upscale factor
    for pair, t in zip(pairs, truth):
        try:  # read as restore reads its inputs, at the ground truth's size
            lq = read_input(pair.lq, t.shape[0] / image_size(pair.lq)[0])
        except ImageSkip as exc:
            raise ConfigError(
                f"cannot restore {pair.lq}: {exc}; replace the file or move it out of the folder"
            ) from None
        todo.append((pair, lq, tuple(t.shape[:2])))

    def restore(chunk):
        h = chunk[0][2][0]
        prompt = prompts_for(args, [pair.lq for pair, _, _ in chunk])
        return pipe(
            [x for _, x, _ in chunk],
            prompt=prompt,
            method=method,
            upscale=h / chunk[0][1].shape[-2],
            output_type="pt",
            batch_size=args.batch_size,
            tile_batch_size=args.tile_batch_size,
            **method_kwargs(args, method),
        ).images

    if args.warmup and todo:
        restore(todo[:1])  # one untimed call: one-time set-up (kernels, caches) is not a cost per image
    images, elapsed, bar = [], 0.0, tqdm(total=len(todo), desc=f"restore ({method})", unit="image")
    for chunk in _batches(todo, args.batch_size):
        start = time.perf_counter()
        outs = restore(chunk)
        sync()
        elapsed += time.perf_counter() - start
        for (pair, _, (h, w)), y in zip(chunk, outs):
            if tuple(y.shape[-2:]) != (h, w):  # a non-integer ratio: the last pixel of rounding
                y = resize_images(y[None], (h, w))[0]
            image = to_uint8(y)
            save_image(Image.fromarray(image), folder / f"{pair.gt.stem}.png")
            images.append(np.asarray(image))
        bar.update(len(chunk))
    bar.close()
    return images, elapsed / max(1, len(todo))


def _batches(todo: list, size: int):
    """Consecutive items of one upscale factor (GT height / LQ height), at most ``size`` at a time."""
    chunk: list = []
    for item in todo:
        ratio = item[2][0] / item[1].shape[-2]
        if chunk and (len(chunk) == size or ratio != chunk[0][2][0] / chunk[0][1].shape[-2]):
            yield chunk
            chunk = []
        chunk.append(item)
    if chunk:
        yield chunk
