"""Restore with each method and score: what ``varestorer evaluate`` and the demo do, as functions.

    data = load_pairs("HR/", lq="LR/", crop_border=4)
    report = evaluate(data, pipe, methods=("onestep", "bicubic"), out="eval/")
    report.write()                 # results.md, .csv, per_image.csv, results.json, metric_vs_time.png
    report.row("onestep")["psnr"]

:func:`load_pairs` pairs the folders by name (:mod:`.pairs`) and decodes the ground truth once;
:func:`evaluate` restores the LQ images with each method at the ground truth's size (saved under
``out/METHOD/``, timed per image), or takes restorations made elsewhere (``pred``), and scores them
(:mod:`.metrics`), returning an :class:`EvaluationReport`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..data.images import ImageSkip, read_rgb, to_tensor, to_uint8
from ..errors import ConfigError
from ..inference.files import read_input
from ..inference.pipeline import MAX_OUTPUT_PIXELS, BicubicPipeline, resize_images
from ..methods import METHODS
from ..outputs import save_image
from .metrics import DEFAULT_METRICS, METRICS, build_metrics, score
from .pairs import Pair, check_sizes, image_size, index_images, match, resolve_folder
from .report import summarise, write_report

#: The files :meth:`EvaluationReport.write` may write in ``out``.
REPORT_FILES = ("results.md", "results.csv", "per_image.csv", "results.json", "metric_vs_time.png")


@dataclass
class ScoringSet:
    """Paired images to score: the pairs, their ground truth decoded (uint8 HWC), and the folders."""

    pairs: list[Pair]
    truth: list[np.ndarray]
    gt_dir: Path
    pred_dir: Path | None = None
    has_lq: bool = False
    crop_border: int = 0


@dataclass
class EvaluationReport:
    """One row per method (its mean scores, ``images``, ``sec_per_image``), the per-image scores,
    the metrics asked for, those unavailable (with why), and the settings of the run."""

    out: Path
    rows: list[dict]
    per_image: list[dict]
    metrics: list[str]
    unavailable: dict[str, str]
    settings: dict
    restored: list[str] = field(default_factory=list)  # the methods whose restorations are in out/METHOD/

    def row(self, method: str) -> dict | None:
        return next((r for r in self.rows if r["method"] == method), None)

    def write(self) -> dict:
        """The report files in ``out`` (:data:`REPORT_FILES`); returns ``results.json``'s content."""
        return write_report(self.out, self.rows, self.per_image, self.metrics, self.unavailable, self.settings)


def read_scored(path: Path) -> np.ndarray:
    """An image to score, uint8 (H, W, 3), within the largest output's size; an error naming it."""

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


def load_pairs(
    gt: str | Path,
    *,
    lq: str | Path | None = None,
    pred: str | Path | None = None,
    allow_missing: bool = False,
    crop_border: int = 0,
) -> ScoringSet:
    """The pairs of ``gt`` with ``lq`` and/or ``pred`` (folders or dataset roots), the ground truth
    decoded once, each checked: ``crop_border`` leaves pixels to score, an LQ image is its ground
    truth's size over a whole scale."""
    gt_dir = resolve_folder(gt, "gt")
    lq_index = index_images(resolve_folder(lq, "lq"), "lq") if lq else None
    pred_dir = resolve_folder(pred, "pred") if pred else None
    pred_index = index_images(pred_dir, "pred") if pred_dir else None
    pairs = match(index_images(gt_dir, "gt"), pred_index, lq_index, allow_missing=allow_missing)
    truth = [read_scored(p.gt) for p in pairs]
    for pair, t in zip(pairs, truth):
        h, w = t.shape[:2]
        if 2 * crop_border >= min(h, w):
            raise ConfigError(
                f"--crop-border {crop_border} cuts all of {pair.gt.name} ({w}x{h}): {crop_border} pixels from each "
                f"side leave nothing to score; use at most {(min(h, w) - 1) // 2} for these images (the papers crop "
                f"the scale, 4)"
            )
    if lq_index is not None:  # restored at the ground truth's size: an LQ of another shape would be squashed
        check_sizes([(p.lq.name, image_size(p.lq), t.shape[:2]) for p, t in zip(pairs, truth)], lq=True)
    return ScoringSet(pairs, truth, gt_dir, pred_dir, lq_index is not None, crop_border)


def _batches(todo: list, size: int):
    """Consecutive items of one upscale factor (GT height / LQ height), at most ``size`` at a time."""
    chunk: list = []
    for item in todo:
        if chunk and (len(chunk) == size or item[2][0] / item[1].shape[-2] != chunk[0][2][0] / chunk[0][1].shape[-2]):
            yield chunk
            chunk = []
        chunk.append(item)
    if chunk:
        yield chunk


def restore_for_scoring(  # noqa: C901
    pipe,
    data: ScoringSet,
    method: str,
    folder: Path,
    *,
    prompts: str | Callable[[list[Path]], str | list[str] | None] | None = "",
    settings: dict | None = None,
    batch_size: int = 4,
    tile_batch_size: int = 1,
    warmup: bool = True,
) -> tuple[list[np.ndarray], float]:
    """``method``'s restorations of the LQ images at the ground truth's size (saved under
    ``folder``), and the seconds per image (wall clock; one untimed call first with ``warmup``)."""
    folder.mkdir(parents=True, exist_ok=True)
    sync = torch.cuda.synchronize if str(getattr(pipe, "device", "cpu")).startswith("cuda") else (lambda: None)
    todo = []  # (pair, LQ tensor, GT size), restored in batches of one upscale factor
    for pair, t in zip(data.pairs, data.truth):
        try:  # read as restore reads its inputs, at the ground truth's size
            lq = read_input(pair.lq, t.shape[0] / image_size(pair.lq)[0])
        except ImageSkip as exc:
            raise ConfigError(
                f"cannot restore {pair.lq}: {exc}; replace the file or move it out of the folder"
            ) from None
        todo.append((pair, lq, tuple(t.shape[:2])))

    def restore(chunk):
        paths = [pair.lq for pair, _, _ in chunk]
        return pipe(
            [x for _, x, _ in chunk],
            prompt=prompts(paths) if callable(prompts) else prompts,
            method=method,
            upscale=chunk[0][2][0] / chunk[0][1].shape[-2],
            output_type="pt",
            batch_size=batch_size,
            tile_batch_size=tile_batch_size,
            **(settings or {}),
        ).images

    if warmup and todo:
        restore(todo[:1])  # one untimed call: one-time set-up (kernels, caches) is not a cost per image
    images, elapsed, bar = [], 0.0, tqdm(total=len(todo), desc=f"restore ({method})", unit="image")
    for chunk in _batches(todo, batch_size):
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


def evaluate(  # noqa: C901
    data: ScoringSet,
    pipe=None,
    *,
    methods: Sequence[str] = (),
    out: str | Path = "evaluation",
    metrics: Sequence[str] = DEFAULT_METRICS,
    device: str = "cpu",
    ssim_convention: str = "pyiqa",
    prompts: str | Callable[[list[Path]], str | list[str] | None] | None = "",
    settings: Callable[[str], dict] | None = None,
    batch_size: int = 4,
    tile_batch_size: int = 1,
    warmup: bool = True,
    describe: dict | None = None,
) -> EvaluationReport:
    """Score ``data``'s restorations made elsewhere (``data.pred_dir``; with LQ images, bicubic as a
    reference row too) and each of ``methods`` run by ``pipe`` (``settings(method)``: its call
    settings). ``describe``: what the report's settings record besides the run's own."""
    out = Path(out).expanduser()
    fns, unavailable = build_metrics(tuple(metrics), device)
    sources = ([("pred", None)] if data.pred_dir is not None else []) + [(m, m) for m in methods]
    if data.pred_dir is not None and data.has_lq and "bicubic" not in methods:
        sources.append(("bicubic", "bicubic"))
    needing = [m for _, m in sources if m and METHODS[m].needs_model]
    if pipe is None and needing:
        raise ConfigError(
            f"restoring with {needing[0]} needs a pipeline (pipe=VARestorerPipeline.from_pretrained(...))"
        )
    pipe = pipe or BicubicPipeline()  # bicubic alone: the pipeline's resizing
    rows, per_image, problems = [], [], {}
    for name, method in sources:
        if method is None:
            images = [read_scored(p.pred) for p in data.pairs]
            check_sizes([(p.pred.name, im.shape[:2], t.shape[:2]) for p, im, t in zip(data.pairs, images, data.truth)])
            seconds = None
        else:
            images, seconds = restore_for_scoring(
                pipe,
                data,
                method,
                out / name,
                prompts=prompts,
                settings=settings(method) if settings else None,
                batch_size=batch_size,
                tile_batch_size=tile_batch_size,
                warmup=warmup,
            )
        scored = [
            {
                "method": name,
                "image": pair.gt.name,
                **score(fns, image, gt_image, data.crop_border, problems, ssim_convention),
            }
            for pair, image, gt_image in tqdm(list(zip(data.pairs, images, data.truth)), desc=f"score ({name})")
        ]
        per_image += scored
        row = {
            "method": name,
            **summarise(scored, [m for m in fns if not METRICS[m].per_set]),
            "images": len(scored),
            "sec_per_image": seconds,
        }
        for m in (m for m in fns if METRICS[m].per_set):  # FID: restorations folder vs ground-truth folder
            row[m] = fns[m](data.pred_dir if method is None else out / name, data.gt_dir)
        rows.append(row)
    for m, why in problems.items():  # ran, but not on every image
        n = sum(1 for r in per_image if r.get(m) is None)
        unavailable.setdefault(m, f"not computed for {n} of {len(per_image)} images ({why})")
    run = {
        "crop_border": data.crop_border,
        "ssim_convention": ssim_convention,
        "device": device,
        "pairs": len(data.pairs),
        "title": f"{len(data.pairs)} images of {(describe or {}).get('gt', data.gt_dir)}, crop border {data.crop_border}",
    }
    return EvaluationReport(
        out,
        rows,
        per_image,
        [m for m in metrics if m in fns or m in unavailable],
        unavailable,
        {**(describe or {}), **run},
        [name for name, m in sources if m],
    )
