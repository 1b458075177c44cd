"""Images people look at: side-by-side comparison strips and a model's sample gallery."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.images import read_rgb, to_tensor, to_uint8
from ..data.samples import SAMPLES, sample_image
from ..degradations import DegradationPipeline
from ..methods import METHODS


def comparison_strip(images: Sequence[Tensor], labels: Sequence[str], gap: int = 4):
    """``(3, H, W)`` tensors in [0, 1] side by side at the height of the tallest (nearest-neighbour
    enlargement, so the pixels of a small LQ stay visible), each with its label; a PIL image."""
    from PIL import Image, ImageDraw

    height = max(im.shape[-2] for im in images)
    panels = []
    for im in images:
        h, w = im.shape[-2:]
        size = (height, max(1, round(w * height / h)))
        panels.append(F.interpolate(im[None].float(), size=size, mode="nearest")[0] if (h, w) != size else im)
    bar = 14
    width = sum(p.shape[-1] for p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, height + bar), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for panel, label in zip(panels, labels):
        canvas.paste(Image.fromarray(to_uint8(panel)), (x, bar))
        draw.text((x + 2, 1), label, fill="black")
        x += panel.shape[-1] + gap
    return canvas


def write_samples(
    pipe, out: str | Path, count: int = 4, degradation: str | None = None, seed: int = 0, method: str = "onestep"
) -> list[Path]:
    """``LQ | restored | HQ`` strips on the photos scikit-image ships, degraded with the model's own
    training degradation (or ``degradation``): ``out/samples/NAME.png``. Returns the paths."""

    res = pipe.resolution
    trained_on = pipe.config.recipe.get("degradation", {}).get("preset", "realesrgan-x4")
    scale = pipe.config.upscale
    deg = DegradationPipeline.from_preset(degradation or trained_on, scale=int(scale) if scale == int(scale) else 4)
    folder = Path(out) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in list(SAMPLES)[:count]:
        photo = sample_image(name)[None]
        short = min(photo.shape[-2:])
        photo = F.interpolate(photo, scale_factor=res / short, mode="area") if short > res else photo
        h, w = photo.shape[-2:]
        hq = photo[:, :, (h - res) // 2 : (h - res) // 2 + res, (w - res) // 2 : (w - res) // 2 + res].clamp(0, 1)
        lq = deg(hq, [seed]).lq[0]
        with torch.no_grad():
            restored = pipe([lq], prompt=SAMPLES[name], method=method, output_type="pt").images[0]
        path = folder / f"{name}.png"
        comparison_strip([lq, restored, hq[0]], ["LQ", method, "HQ"]).save(path)
        paths.append(path)
    return paths


#: How the grid labels each method's column (``pred``: ``evaluate --pred``'s restorations).
METHOD_LABELS = {**{m.name: m.short for m in METHODS.values()}, "pred": "restored"}


def method_grid(
    lq_dir: str | Path, hq_dir: str | Path, restored_dir: str | Path, methods: Sequence[str], path: str | Path
):
    """One row per image of ``hq_dir``: ``LQ | each method's restoration | HQ`` (the restorations
    are ``restored_dir/METHOD/NAME.png``, as ``varestorer evaluate`` writes them); a PNG at ``path``."""

    rows = []
    for hq_path in sorted(Path(hq_dir).glob("*.png")):
        name = hq_path.name
        panels = [to_tensor(read_rgb(Path(lq_dir) / name))]
        panels += [to_tensor(read_rgb(Path(restored_dir) / m / name)) for m in methods]
        panels.append(to_tensor(read_rgb(hq_path)))
        labels = ["LQ"] + [METHOD_LABELS.get(m, m) for m in methods] + ["HQ"]
        rows.append(
            comparison_strip(panels, [f"{label}" if i else f"{hq_path.stem}: LQ" for i, label in enumerate(labels)])
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stack_rows(rows).save(path)
    return path


def stack_rows(rows):
    """PIL images one under the other on white, left-aligned; a PIL image."""
    from PIL import Image

    grid = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height
    return grid
