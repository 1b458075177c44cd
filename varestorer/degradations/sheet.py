"""A comparison sheet: for a few HQ crops, the HQ next to its LQ under each preset, one PNG.

Each preset degrades the whole batch in one call (the on-device pipeline, the same seeds for
every preset); the LQ is shown enlarged with nearest-neighbour so its pixels stay visible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..outputs import save_image
from .pipeline import DegradationPipeline
from .presets import preset_names


def default_sheet_presets(extra: str | None = None) -> list[str]:
    """The shipped presets from mildest to harshest (then any others), plus ``extra`` if new."""

    names = preset_names()
    order = [p for p in ("light", "realesrgan-x4", "heavy") if p in names] + [
        p for p in names if p not in ("light", "realesrgan-x4", "heavy")
    ]
    if extra and Path(str(extra)).stem not in order:
        order.append(str(extra))
    return order


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def comparison_sheet(
    hq: torch.Tensor,
    presets: list[str],
    seeds: list[int] | None = None,
    device: str | None = None,
    labels: list[str] | None = None,
    pad: int = 4,
    header: int = 18,
):
    """A PIL image: one row per HQ sample, columns ``HQ | LQ (preset 1) | LQ (preset 2) ...``."""
    from PIL import Image, ImageDraw

    n, _, H, W = hq.shape
    seeds = list(range(n)) if seeds is None else list(seeds)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    columns = [("HQ", hq)]
    for preset in presets:
        out = DegradationPipeline.from_preset(preset, device=dev)(hq.to(dev), seeds)
        lq = F.interpolate(out.lq, size=(H, W), mode="nearest").cpu()
        columns.append((f"LQ {out.lq.shape[-1]}px: {Path(str(preset)).stem}", lq))
    cols, rows = len(columns), n
    sheet = Image.new("RGB", (cols * (W + pad) + pad, header + rows * (H + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c, (title, images) in enumerate(columns):
        x = pad + c * (W + pad)
        draw.text((x, 3), title, fill=(0, 0, 0))
        for r in range(rows):
            sheet.paste(Image.fromarray(_to_uint8(images[r])), (x, header + pad + r * (H + pad)))
    if labels:
        for r, label in enumerate(labels):
            draw.text((pad + 2, header + pad + r * (H + pad) + 2), label, fill=(255, 255, 0))
    return sheet


def write_comparison_sheet(
    path: str | Path,
    hq: torch.Tensor,
    presets: list[str],
    seeds: list[int] | None = None,
    device: str | None = None,
    labels: list[str] | None = None,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    save_image(comparison_sheet(hq, presets, seeds=seeds, device=device, labels=labels), path)
    return path
