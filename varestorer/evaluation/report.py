"""What ``varestorer evaluate`` writes: a table shaped like the papers' Table 1 and its plot.

``results.md`` (one row per method, one column per metric with the better direction, seconds per
image; unavailable metrics as "n/a" with a footnote giving the reason), ``results.csv`` (the same
rows), ``per_image.csv`` (method, image, each metric), ``results.json`` and
``metric_vs_time.png`` (one point per method: a metric against seconds per image, log scale).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from ..methods import METHODS
from ..outputs import atomic_file, write_text
from .metrics import METRICS


def summarise(per_image: list[dict], metrics: list[str]) -> dict[str, float]:
    """Mean of each metric over the images. An identical pair's PSNR is infinite, and one would make
    the mean infinite whatever the others are: the mean is over the other pairs, and ``METRIC_identical``
    says how many were left out (every pair identical: the mean is ``inf``)."""
    out = {}
    for m in metrics:
        values = [r[m] for r in per_image if r.get(m) is not None]
        finite = [v for v in values if math.isfinite(v)]
        if len(finite) < len(values):
            out[f"{m}_identical"] = len(values) - len(finite)
        out[m] = sum(finite) / len(finite) if finite else (math.inf if values else None)
    return out


def dumps_strict(value, **kwargs) -> str:
    """``json.dumps`` of ``value`` as strict JSON (:func:`strict_json`): what every results file and
    ``evaluate --json`` write."""
    return json.dumps(strict_json(value), allow_nan=False, **kwargs)


def strict_json(value):
    """``value`` with every non-finite float as a string (``"inf"``, ``"-inf"``, ``"nan"``): JSON has
    no infinity, and a bare ``Infinity`` breaks every strict reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def _fmt(value, metric: str) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.2f}" if metric in ("psnr", "musiq", "niqe", "sec_per_image") and value >= 1 else f"{value:.4f}"


def markdown_table(rows: list[dict], metrics: list[str], unavailable: dict[str, str], title: str = "") -> str:
    """The Table-1-shaped markdown: methods as rows, metrics (with arrows) as columns."""
    names = [f"{m.upper()}{METRICS[m].arrow}" + ("*" if m in unavailable else "") for m in metrics]
    lines = [f"### {title}", ""] if title else []
    lines += ["| method | " + " | ".join(names) + " | s/image | images |", "|---|" + "---|" * len(metrics) + "---|---|"]
    for r in rows:
        cells = [_fmt(r.get(m), m) for m in metrics]
        sec = _fmt(r.get("sec_per_image"), "sec_per_image") if r.get("sec_per_image") is not None else "-"
        lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {sec} | {r['images']} |")
    left_out = [
        f"- {r['method']}: {r[f'{m}_identical']} of {r['images']} pair(s) identical (infinite {m.upper()}), left out "
        f"of its mean {m.upper()}"
        for r in rows
        for m in metrics
        if r.get(f"{m}_identical")
    ]
    if left_out:
        lines += ["", *left_out]
    if unavailable:
        lines += ["", "\\* unavailable here:"] + [f"- {m}: {why}" for m, why in unavailable.items()]
    return "\n".join(lines) + "\n"


def write_report(
    out: Path, rows: list[dict], per_image: list[dict], metrics: list[str], unavailable: dict[str, str], settings: dict
) -> dict:
    """Write every file of the module doc into ``out``; returns the JSON document."""
    out.mkdir(parents=True, exist_ok=True)

    write_text(out / "results.md", markdown_table(rows, metrics, unavailable, settings.get("title", "")))
    fields = ["method", *metrics, "sec_per_image", "images"]
    with atomic_file(out / "results.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in fields} for r in rows)
    with atomic_file(out / "per_image.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "image", *metrics], extrasaction="ignore")
        w.writeheader()
        w.writerows(per_image)
    doc = {
        "settings": settings,
        "metrics": {m: {"higher_is_better": METRICS[m].higher_is_better} for m in metrics},
        "unavailable": unavailable,
        "rows": rows,
    }
    write_text(out / "results.json", dumps_strict(doc, indent=2, default=str))
    plot_metric_vs_time(rows, out / "metric_vs_time.png", metrics, unavailable)
    return doc


def plot_metric_vs_time(rows: list[dict], path: Path, metrics: list[str], unavailable: dict[str, str]) -> Path | None:
    """One point per timed method: LPIPS (else PSNR) against seconds per image."""
    timed = [r for r in rows if r.get("sec_per_image")]
    metric = next((m for m in ("lpips", "psnr") if m in metrics and m not in unavailable), None)
    if not timed or metric is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    for r in timed:
        y = r.get(metric)
        if y is None or math.isinf(y):
            continue
        ax.scatter(r["sec_per_image"], y)
        ax.annotate(r["method"], (r["sec_per_image"], y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per image")
    ax.set_ylabel(f"{metric.upper()} {METRICS[metric].arrow}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


#: What each method of the demo is (report.md's legend).
METHOD_NOTES = {m.name: m.note for m in METHODS.values()}


def _compare(rows: dict, a: str, b: str, metric: str) -> str | None:
    if a not in rows or b not in rows or rows[a].get(metric) is None or rows[b].get(metric) is None:
        return None
    diff = rows[a][metric] - rows[b][metric]
    better = diff > 0 if METRICS[metric].higher_is_better else diff < 0
    unit = " dB" if metric == "psnr" else ""
    return f"{metric.upper()} {rows[a][metric]:.4g} vs {rows[b][metric]:.4g} ({'better' if better else 'worse'} by {abs(diff):.3g}{unit})"


def write_demo_report(
    out: Path,
    recipe,
    evaluation,
    grid: Path,
    trained_seconds: float,
    total_seconds: float,
    captions: bool = False,
) -> Path:
    """``out/report.md``: what ran, the evaluation table, what the numbers mean and where the
    one-step student stands against each baseline."""
    import os
    import platform

    import torch

    rows = {r["method"]: r for r in evaluation.rows}  # an evaluation.run.EvaluationReport
    table = markdown_table(evaluation.rows, evaluation.metrics, evaluation.unavailable, evaluation.settings["title"])
    lines = [
        "# VARestorer demo",
        "",
        f"Distilled the `{recipe.model.preset}` base with `recipes/{recipe.name}.yaml` for {recipe.train.max_steps} "
        f"steps (batch {recipe.train.global_batch_size}, {recipe.degradation.preset} degradations on the fly) in "
        f"{trained_seconds / 60:.1f} min; the whole demo took {total_seconds / 60:.1f} min on "
        f"{platform.processor() or platform.machine()} with {os.cpu_count()} CPU cores (torch {torch.__version__}).",
        "",
        "Held-out photos (never seen by the base nor the distillation), degraded with a fixed seed "
        f"({evaluation.settings['pairs']} crops of {recipe.model.resolution} px, LQ {recipe.model.resolution // recipe.degradation.scale} px), "
        + (
            "restored with the held-out photos' hand-written captions (`--with-captions`: no user has these):"
            if captions
            else "restored without prompts (`--caption none`), as a user without captions of their photos restores:"
        ),
        "",
        table,
        "## What the numbers mean",
        "",
        "- PSNR and SSIM: fidelity to the HQ crop, on the Y channel, 4 border pixels cropped (higher is better). "
        "LPIPS and the no-reference metrics appear where their weights are installed.",
        "- sharpness: the detail kept, the restoration's gradient energy (Y) over the HQ crop's: 1 is as much "
        "high-frequency content as the photo, below 1 blurrier (PSNR/SSIM reward blur: bicubic ranks first on "
        "them), above 1 noise or invented texture.",
        "- s/image: wall-clock seconds per image on this machine, batch as `varestorer evaluate` runs it.",
        "- The methods:",
    ]
    lines += [f"  - {m}: {note}" for m, note in METHOD_NOTES.items() if m in rows]
    lines += ["", "## Where the one-step student stands", ""]
    for base in ("zeroshot", "multistep", "guided", "bicubic"):
        parts = [c for c in (_compare(rows, "onestep", base, m) for m in ("psnr", "ssim", "lpips")) if c]
        if parts:
            lines.append(f"- against {base}: " + "; ".join(parts))
    lines += [
        "",
        "Bicubic keeps the degradation's noise and JPEG blocks but never invents detail, so on PSNR and "
        "SSIM it is a hard baseline for any model whose tokenizer itself loses detail: the student cannot "
        "be sharper than what the base's tokenizer reconstructs (its held-out PSNR is in the base's model card).",
        "",
        f"![LQ | methods | HQ]({Path(grid).name})",
        "",
        "Files: `grid.png` (LQ | " + " | ".join(r for r in rows) + " | HQ), `train/losses.png` (the loss "
        "curves), `train/validation/` (grids during training), `evaluation/` (every restoration, "
        "per-image scores, results.json), `train/final/` (the exported adapter).",
    ]
    path = Path(out) / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    return path
