"""``varestorer degrade``: degrade a folder of images (or a prepared dataset) to look at what
the model will see, or to build a paired test set.

Each image is center-cropped (or resized and cropped) to ``size`` and degraded with a seed that
is a function of ``(seed, its path)`` only, so one image gives the same LQ however the folder is
batched or ordered. Written::

    OUT/lq/<path>.png     the LQ (size / scale); a.png and a.jpg: lq/a.png and lq/a.jpg.png (as restore names them)
    OUT/hq/<path>.png     the HQ crop (with --save-hq), the reference of a paired test set
    OUT/params.jsonl      per image: path, seed and every random choice of its degradation
    OUT/skipped.tsv       files that could not be read, and why
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.captions import write_caption_file
from ..data.dataset import open_prepared
from ..data.images import ImageSkip, read_rgb, to_uint8
from ..data.photos import heldout_crops
from ..data.prepare import list_sources
from ..data.samples import SAMPLES, sample_image
from ..errors import ConfigError
from ..outputs import check_output_folder, check_outside_inputs, output_names, save_image, write_text
from .pipeline import DegradationPipeline
from .sheet import default_sheet_presets, write_comparison_sheet


def image_seed(seed: int, key: str) -> int:
    """A per-image seed from the run's seed and the image's path."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little") & 0x7FFFFFFFFFFFFFFF


def center_crop(array: np.ndarray, size: int, resize: bool) -> np.ndarray | None:
    """(H, W, 3) uint8 -> (size, size, 3): optionally resize the short side to ``size`` first."""
    from PIL import Image

    h, w = array.shape[:2]
    if resize:
        scale = size / min(h, w)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        array = np.asarray(Image.fromarray(array).resize((nw, nh), Image.Resampling.LANCZOS))
        h, w = nh, nw
    if min(h, w) < size:
        return None
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(array[top : top + size, left : left + size])


def iter_sources(src: str):
    """``(key, array | ImageSkip)`` from a folder, a prepared dataset folder, or ``skimage``."""

    if src == "skimage":
        for name in SAMPLES:
            yield name, (sample_image(name).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        return
    path = Path(src)
    if (path / "state.json").exists():
        ds = open_prepared(path)
        for i in range(len(ds)):
            row = ds[i]
            yield f"{i:06d}_{Path(row['path']).stem}", np.array(row["image"].convert("RGB"))
        return

    for rel in list_sources(path):
        try:
            yield rel, read_rgb(path / rel)
        except ImageSkip as exc:
            yield rel, exc


@dataclass
class DegradeReport:
    out: Path
    written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        s = f"wrote {self.written} LQ images to {self.out / 'lq'}"
        if self.skipped:
            s += f"; skipped {len(self.skipped)} (list in {self.out / 'skipped.tsv'})"
        return s


def degrade_folder(  # noqa: C901
    src: str,
    out: str | Path,
    preset: str = "realesrgan-x4",
    seed: int = 0,
    size: int = 512,
    resize: bool = False,
    save_hq: bool = False,
    batch: int = 8,
    device: str | None = None,
    limit: int | None = None,
    sheet: bool = True,
    sheet_presets: list[str] | None = None,
    sheet_samples: int = 4,
) -> DegradeReport:
    from PIL import Image

    out = check_output_folder(out, "the output folder")
    check_outside_inputs(out, {"source": None if src == "skimage" else src}, "the output folder")
    names: dict[str, Path] = {}  # one output per input (a.png and a.jpg: a.png and a.jpg.png), as restore names them
    if src != "skimage" and not (Path(src) / "state.json").exists():
        rels = list_sources(Path(src))
        names = dict(zip(rels, output_names(rels, "png", out / "lq")))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe = DegradationPipeline.from_preset(preset, device=dev)
    if size % pipe.scale:
        raise ConfigError(f"--size {size} is not a multiple of the preset's scale {pipe.scale}")
    (out / "lq").mkdir(parents=True, exist_ok=True)
    if save_hq:
        (out / "hq").mkdir(parents=True, exist_ok=True)
    report = DegradeReport(out=out)
    pending: list[tuple[str, np.ndarray]] = []
    first: list[tuple[str, np.ndarray]] = []
    params: list[str] = []  # params.jsonl, written when complete

    def flush():
        if not pending:
            return
        keys = [k for k, _ in pending]
        hq = torch.stack([torch.from_numpy(a.copy()).permute(2, 0, 1) for _, a in pending]).float().div(255).to(dev)
        seeds = [image_seed(seed, k) for k in keys]
        result = pipe(hq, seeds)
        for i, key in enumerate(keys):
            name = names.get(key) or Path(key).with_suffix(".png")
            (out / "lq" / name).parent.mkdir(parents=True, exist_ok=True)
            lq = (result.lq[i].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            save_image(Image.fromarray(lq), out / "lq" / name)
            if save_hq:
                (out / "hq" / name).parent.mkdir(parents=True, exist_ok=True)
                save_image(Image.fromarray(pending[i][1]), out / "hq" / name)
            params.append(
                json.dumps(
                    {
                        "path": key,
                        "lq": f"lq/{name.as_posix()}",
                        "preset": pipe.config.name,
                        **result.params[i].describe(),
                    }
                )
                + "\n"
            )
        report.written += len(keys)
        pending.clear()

    for key, item in iter_sources(src):
        if limit is not None and report.written + len(pending) >= limit:
            break
        if isinstance(item, ImageSkip):
            report.skipped.append((key, item.reason))
            continue
        crop = center_crop(item, size, resize)
        if crop is None:
            report.skipped.append((key, f"too small ({item.shape[1]}x{item.shape[0]} < {size})"))
            continue
        if len(first) < sheet_samples:
            first.append((key, crop))
        pending.append((key, crop))
        if len(pending) >= batch:
            flush()
    flush()
    write_text(out / "params.jsonl", "".join(params))
    write_text(out / "skipped.tsv", "path\treason\n" + "".join(f"{k}\t{r}\n" for k, r in report.skipped))
    if sheet and first:
        presets = sheet_presets or default_sheet_presets(extra=preset)
        hq = torch.stack([torch.from_numpy(a.copy()).permute(2, 0, 1) for _, a in first]).float().div(255)
        write_comparison_sheet(
            out / "sheet.png",
            hq,
            presets,
            seeds=[image_seed(seed, k) for k, _ in first],
            device=str(dev),
            labels=[Path(k).stem for k, _ in first],
        )
    return report


def write_heldout(
    out: str | Path,
    size: int = 128,
    degradation: str = "realesrgan-x4",
    scale: int = 4,
    seed: int = 0,
    limit: int | None = None,
) -> dict[str, Path]:
    """The evaluation set as files: ``out/hq/NAME.png`` (:func:`heldout_crops`; the first ``limit`` by name),
    ``out/lq/NAME.png`` (degraded with ``degradation``, image ``i`` with seed ``seed + i``: the same
    files on every run) and ``out/captions.jsonl`` (each LQ file's caption). Returns the three paths."""
    from PIL import Image

    out = Path(out)
    (out / "hq").mkdir(parents=True, exist_ok=True)
    (out / "lq").mkdir(parents=True, exist_ok=True)
    deg = DegradationPipeline.from_preset(degradation, scale=scale)
    captions = {}
    crops = sorted(enumerate(heldout_crops(size)), key=lambda c: c[1][0])[:limit]  # the first by name
    for i, (name, hq, caption) in crops:  # each keeps its seed, whatever the limit
        lq = deg(hq[None], [seed + i]).lq[0]
        Image.fromarray(to_uint8(hq)).save(out / "hq" / f"{name}.png")
        Image.fromarray(to_uint8(lq)).save(out / "lq" / f"{name}.png")
        captions[f"{name}.png"] = caption
    write_caption_file(out / "captions.jsonl", captions)
    return {"hq": out / "hq", "lq": out / "lq", "captions": out / "captions.jsonl"}
