"""``varestorer prepare``: a folder of HQ photos -> a sharded Hugging Face ``datasets`` dataset.

The output folder is, at every moment, a dataset ``datasets.load_from_disk`` opens::

    OUT/
      data-00000.arrow ...        one Arrow shard per ``shard_size`` source files (datasets' own writer)
      state.json, dataset_info.json   rewritten after every finished shard (load_from_disk reads them)
      prepare.json                the settings; a rerun with other settings is refused
      sources.txt                 the sorted source files, fixed by the first run (the shard plan)
      progress/shard-00000.json   written once a shard is complete: its images and skipped files
      skipped.tsv                 every skipped file: path, reason, detail (written at the end)

Rows are ``{"image", "path", "caption", "crop"}``: the crop (PNG by default), its source path
relative to SRC, its caption, and ``[left, top, width, height]`` of the crop in the oriented
source image. Shard ``k`` holds the outputs of ``sources[k*shard_size:(k+1)*shard_size]`` in
order, so the dataset does not depend on the number of workers nor on interruptions: a shard
is written to a temporary file and renamed into place, and only shards with a progress file
count as done. Kill the job at any point, run the same command again, and it continues with
the first unfinished shard; nothing finished is recomputed or duplicated.

Bad files (empty, not images, truncated, too small, ...) are skipped, counted by reason and
listed; they never stop the job.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError
from ..outputs import write_text
from .captions import DEFAULT_BLIP, BlipCaptioner, CaptionFile
from .images import IMAGE_SUFFIXES, ImageSkip, encode, is_image_path, read_rgb

logger = logging.getLogger(__name__)

MODES = ("crop", "resize", "short-side")
FORMAT_VERSION = 1
#: Uncompressed bytes of crops one source image may give (``--crops`` x SIZE^2 x 3): a worker holds
#: them at once.
MAX_CROP_BYTES_PER_IMAGE = 1 << 30
#: Rows, and encoded bytes, held in memory before they are captioned and appended to the shard's
#: file (Arrow holds at most 2 GB of one column in one batch).
FLUSH_ROWS, FLUSH_BYTES = 256, 64 << 20


# ------------------------------------------------------------------------------ one source image
@dataclass(frozen=True)
class CropSettings:
    size: int = 512
    mode: str = "crop"  # crop: native-resolution crops; resize: short side -> size, center crop; short-side: no crop
    crops: int = 1  # crops per image (mode crop)
    seed: int = 0  # crop positions: a function of (seed, path, k)
    image_format: str = "png"


def max_crops(size: int) -> int:
    """The most ``size`` px crops taken from one image (:data:`MAX_CROP_BYTES_PER_IMAGE` of pixels)."""
    return max(1, MAX_CROP_BYTES_PER_IMAGE // (size * size * 3))


def crop_positions(width: int, height: int, size: int) -> int:
    """How many distinct ``size`` crops a ``width`` x ``height`` image has (one per top-left pixel)."""
    return max(0, width - size + 1) * max(0, height - size + 1)


def crop_boxes(width: int, height: int, rel_path: str, s: CropSettings) -> list[tuple[int, int, int, int]]:
    """``(left, top, w, h)`` boxes in the oriented source image, deterministic in (seed, path): ``s.crops``
    distinct ones, or every position the image has when it has fewer (:func:`crop_positions`), and at
    most :func:`max_crops`."""
    if s.mode != "crop":
        return [(0, 0, width, height)]
    positions = crop_positions(width, height, s.size)
    n = min(s.crops, positions, max_crops(s.size))
    columns = width - s.size + 1
    if n > positions // 2:  # most positions: a sample of them all (drawing each would repeat a lot)
        picked = random.Random(f"{s.seed}:{rel_path}:all").sample(range(positions), n)
        return [(i % columns, i // columns, s.size, s.size) for i in picked]
    boxes, seen, k = [], set(), 0
    while len(boxes) < n:  # crop k is a function of (seed, path, k); a repeated position is drawn again
        rng = random.Random(f"{s.seed}:{rel_path}:{k}")
        box = (rng.randint(0, width - s.size), rng.randint(0, height - s.size), s.size, s.size)
        k += 1
        if box not in seen:
            seen.add(box)
            boxes.append(box)
    return boxes


def _resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(array).resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0))


def make_crops(array: np.ndarray, rel_path: str, s: CropSettings) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """The training images of one source image (ImageSkip if it is smaller than the crop)."""
    h, w = array.shape[:2]
    if min(h, w) < s.size:
        raise ImageSkip("too small", f"{w}x{h} < {s.size}")
    out = []
    for left, top, bw, bh in crop_boxes(w, h, rel_path, s):
        crop = array[top : top + bh, left : left + bw]
        if s.mode in ("resize", "short-side"):
            scale = s.size / min(h, w)
            nw, nh = max(s.size, round(w * scale)), max(s.size, round(h * scale))
            crop = _resize(crop, nw, nh) if (nw, nh) != (w, h) else crop
            if s.mode == "resize":
                t, lft = (nh - s.size) // 2, (nw - s.size) // 2
                crop = crop[t : t + s.size, lft : lft + s.size]
        out.append(((left, top, bw, bh), np.ascontiguousarray(crop)))
    return out


def process_file(task: tuple[str, str, CropSettings]) -> dict:
    """Worker: read, convert, crop and encode one source file. Never raises."""
    abs_path, rel_path, s = task
    try:
        array = read_rgb(abs_path)
        crops = make_crops(array, rel_path, s)
        out = {"path": rel_path, "items": [(box, encode(c, s.image_format)) for box, c in crops]}
        if s.mode == "crop" and len(crops) < s.crops:  # the image has fewer distinct crop positions
            out["capped"] = (array.shape[1], array.shape[0], len(crops))
        return out
    except ImageSkip as exc:
        return {"path": rel_path, "skip": (exc.reason, exc.detail)}
    except MemoryError:
        return {"path": rel_path, "skip": ("too large", "out of memory")}
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the job
        return {"path": rel_path, "skip": ("truncated or corrupt", f"{type(exc).__name__}: {exc}")}


# -------------------------------------------------------------------------------------- the walk
def list_sources(src: str | Path) -> list[str]:
    """Image files under ``src`` (recursive, symlinks followed), as sorted POSIX paths relative to it."""
    root = Path(src)
    if not root.is_dir():
        raise ConfigError(f"{src} is not a folder of images")
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop, or the same folder linked twice
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and is_image_path(name):
                found.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(found)


# ------------------------------------------------------------------------------------- the output
def features():
    from datasets import Features, Image, Sequence, Value

    return Features(
        {"image": Image(), "path": Value("string"), "caption": Value("string"), "crop": Sequence(Value("int32"))}
    )


def shard_name(k: int) -> str:
    return f"data-{k:05d}.arrow"


class ShardWriter:
    """Shard ``k`` written batch by batch to a temporary file, renamed into place by :meth:`commit`
    (memory holds one batch, not the shard)."""

    def __init__(self, out: Path, k: int):
        from datasets.arrow_writer import ArrowWriter

        self.tmp, self.final = out / f".{shard_name(k)}.tmp", out / shard_name(k)
        self.writer = ArrowWriter(features=features(), path=str(self.tmp), writer_batch_size=64)

    def write(self, rows: dict[str, list]) -> None:
        if rows["image"]:
            self.writer.write_batch(rows)

    def commit(self) -> int:
        """Finish the file and rename it into place; returns its number of rows."""
        try:
            n, _ = self.writer.finalize()
        finally:
            self.writer.close()
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.final)
        return n

    def abort(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)


def write_shard(out: Path, k: int, rows: dict[str, list]) -> int:
    """Write shard ``k`` (temporary file, then renamed into place); returns its number of rows."""
    writer = ShardWriter(out, k)
    writer.write(rows)
    return writer.commit()


@functools.lru_cache(maxsize=1)
def _index_templates() -> tuple[str, str]:
    """``state.json`` and ``dataset_info.json`` as this ``datasets`` writes them for our features."""
    import datasets
    from datasets import Dataset

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            Dataset.from_dict({k: [] for k in features()}, features=features()).save_to_disk(tmp)
            return Path(tmp, "state.json").read_text(), Path(tmp, "dataset_info.json").read_text()
    finally:
        if bars:
            datasets.enable_progress_bars()


def write_dataset_index(out: Path, shards: list[int], description: str = "") -> None:
    """(Re)write ``state.json`` and ``dataset_info.json`` so ``load_from_disk(out)`` sees ``shards``.

    Their layout is taken from what this version of ``datasets`` itself writes (``save_to_disk``
    of an empty dataset with the same features), so the folder stays loadable across versions."""
    state, info = (json.loads(t) for t in _index_templates())
    names = [shard_name(k) for k in shards]
    state["_data_files"] = [{"filename": n} for n in names]
    state["_fingerprint"] = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    info["description"] = description
    write_text(out / "dataset_info.json", json.dumps(info, indent=2))
    write_text(out / "state.json", json.dumps(state, indent=2, sort_keys=True))


# ----------------------------------------------------------------------------------------- report
@dataclass
class PrepareReport:
    out: Path
    sources: int = 0
    images: int = 0  # rows in the dataset
    shards: int = 0
    shards_resumed: int = 0  # shards found finished by an earlier run
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (path, reason, detail)
    missing_captions: int = 0
    crops: int = 1  # crops asked per image (--crops)
    size: int = 512
    capped: list[tuple[str, int, int, int]] = field(default_factory=list)  # (path, width, height, crops given)

    @property
    def skipped_by_reason(self) -> Counter:
        return Counter(r for _, r, _ in self.skipped)

    def summary(self) -> str:
        lines = [
            f"wrote {self.images} images from {self.sources - len(self.skipped)} of {self.sources} source files "
            f"into {self.shards} shards in {self.out}"
            + (f" ({self.shards_resumed} shards from an earlier run)" if self.shards_resumed else "")
        ]
        if self.skipped:
            why = ", ".join(f"{n} {r}" for r, n in self.skipped_by_reason.most_common())
            lines.append(f"skipped {len(self.skipped)} files: {why} (list in {self.out / 'skipped.tsv'})")
        else:
            lines.append("skipped 0 files")
        if self.missing_captions:
            lines.append(f"{self.missing_captions} images have no caption in the caption file (empty caption)")
        if self.crops > max_crops(self.size):
            lines.append(
                f"--crops {self.crops} of {self.size} px: at most {max_crops(self.size)} were taken per image "
                f"({MAX_CROP_BYTES_PER_IMAGE >> 30} GiB of pixels, what a worker holds at once)"
            )
        capped = [c for c in self.capped if c[3] < min(self.crops, max_crops(self.size))]
        if capped:
            path, w, h, n = capped[0]
            lines.append(
                f"{len(capped)} source files gave fewer than --crops {self.crops} crops: a W x H image has "
                f"only (W - {self.size} + 1) x (H - {self.size} + 1) distinct {self.size} px crops, and each is "
                f"taken once (e.g. {path}: {w}x{h}, {n} crops)"
            )
        if self.sources and not self.images:
            lines.append(f"no source file gave an image: the dataset in {self.out} is empty")
        return "\n".join(lines)


# -------------------------------------------------------------------------------------------- run
def _settings(src: Path, crop: CropSettings, caption_desc: str, shard_size: int) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "source": str(src.resolve()),
        "size": crop.size,
        "mode": crop.mode,
        "crops": crop.crops,
        "seed": crop.seed,
        "image_format": crop.image_format,
        "caption": caption_desc,
        "shard_size": shard_size,
    }


def _check_or_write_settings(out: Path, settings: dict, overwrite: bool) -> bool:
    """True when resuming. Refuses a folder prepared with other settings (unless overwrite)."""
    path = out / "prepare.json"
    if path.exists() and not overwrite:
        old = json.loads(path.read_text())
        if old == settings:
            return True
        if not any(out.glob("progress/shard-*.json")):  # nothing finished yet: start with the new settings
            overwrite = True
        else:
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v)
            raise ConfigError(
                f"{out} was prepared with other settings ({diff}); use another output folder "
                f"or --overwrite to start again"
            )
    if out.exists() and any(out.iterdir()) and not path.exists() and not overwrite:
        raise ConfigError(
            f"{out} exists and is not a folder written by varestorer prepare; choose another output folder"
        )
    if overwrite and path.exists():
        for p in (
            list(out.glob("data-*.arrow"))
            + list(out.glob("progress/*.json"))
            + [out / n for n in ("state.json", "dataset_info.json", "sources.txt", "skipped.tsv", "prepare.json")]
        ):
            if p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(settings, indent=2))
    return False


def _load_sources(out: Path, src: Path, resuming: bool, found: list[str] | None = None) -> list[str]:
    path = out / "sources.txt"
    found = list_sources(src) if found is None else found
    if resuming and path.exists():
        sources = path.read_text(encoding="utf-8").splitlines()
        now = len(found)
        if now != len(sources):
            logger.warning(
                "%s now has %d images, %d when this preparation started; going on with the original "
                "list (prepare the new ones into another folder)",
                src,
                now,
                len(sources),
            )
        return sources
    sources = found
    write_text(path, "\n".join(sources) + ("\n" if sources else ""))
    return sources


def prepare_dataset(  # noqa: C901
    src: str | Path,
    out: str | Path,
    *,
    size: int = 512,
    mode: str = "crop",
    crops: int = 1,
    seed: int = 0,
    image_format: str = "png",
    caption: str = "none",
    caption_model: str | None = None,
    caption_batch_size: int = 16,
    caption_prompt: str | None = None,
    caption_prefix: str | None = None,
    captioner=None,
    device: str | None = None,
    shard_size: int = 1000,
    workers: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    on_shard: Callable[[int], None] | None = None,
) -> PrepareReport:
    """Prepare (or resume preparing) ``out`` from the images under ``src``; see the module docstring.

    ``caption`` is ``"blip"`` (``caption_model``: a BLIP Hub id or folder, default
    ``Salesforce/blip-image-captioning-large``), ``"none"`` or the path of a caption file.
    ``captioner`` (any ``list[image] -> list[str]`` with a ``describe()``) replaces BLIP.
    ``caption_prefix``: where the caption file's absolute paths pointed to when it was written
    (the released split's ``/workspace/LSDIR``): read as ``src`` (:class:`CaptionFile`).
    ``workers`` > 0 reads and encodes images in that many processes. ``on_shard(k)`` is called
    after shard ``k`` is committed (tests use it to interrupt a run).
    """

    src, out = Path(src), Path(out)
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
    if size < 8 or crops < 1 or shard_size < 1:
        raise ConfigError("size must be >= 8, crops >= 1, shard size >= 1")
    if mode == "crop" and crops > max_crops(size):
        logger.warning(
            "--crops %d of %d px: at most %d are taken per image (%d GiB of pixels, what a worker holds at once)",
            crops,
            size,
            max_crops(size),
            MAX_CROP_BYTES_PER_IMAGE >> 30,
        )
    if mode != "crop" and crops != 1:
        raise ConfigError("--crops applies to --mode crop only")
    if image_format not in ("png", "jpeg", "webp"):
        raise ConfigError(f"unknown image format {image_format!r}; png, jpeg or webp")
    if not src.is_dir():
        raise ConfigError(f"{src} is not a folder of images")
    crop = CropSettings(size=size, mode=mode, crops=crops, seed=seed, image_format=image_format)

    caption_file = None
    if captioner is not None:
        caption_desc = captioner.describe()
    elif caption == "none":
        caption_desc = "none"
    elif caption == "blip":
        caption_desc = f"blip:{caption_model or DEFAULT_BLIP}"
        caption_desc += f" prompt={caption_prompt!r}" if caption_prompt else ""
    else:
        caption_file = CaptionFile(caption, root=src, prefix=caption_prefix)
        caption_desc = caption_file.describe()

    found = list_sources(src)
    if not found:
        raise ConfigError(f"no images in {src} (looked for {', '.join(IMAGE_SUFFIXES)}, in every subfolder)")
    if caption_file is not None:
        caption_file.check_matches(found, src)
    resuming = _check_or_write_settings(out, _settings(src, crop, caption_desc, shard_size), overwrite)
    sources = _load_sources(out, src, resuming, found)
    (out / "progress").mkdir(exist_ok=True)
    n_shards = max(1, -(-len(sources) // shard_size))
    report = PrepareReport(out=out, sources=len(sources), shards=n_shards, crops=crops, size=size)

    def progress_file(k):
        return out / "progress" / f"shard-{k:05d}.json"

    done = [k for k in range(n_shards) if progress_file(k).exists() and (out / shard_name(k)).exists()]
    report.shards_resumed = len(done)
    todo = [k for k in range(n_shards) if k not in set(done)]
    if resuming and done:
        logger.info("resuming: %d of %d shards already written", len(done), n_shards)

    if caption == "blip" and captioner is None and todo:
        captioner = BlipCaptioner(
            caption_model or DEFAULT_BLIP, device=device, batch_size=caption_batch_size, prompt=caption_prompt
        )

    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(sources),
        initial=min(len(sources), len(done) * shard_size),
        unit="img",
        desc="prepare",
        disable=not progress,
    )
    pool = None
    if workers > 0 and todo:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(workers)

    def submit(k):
        tasks = [(str(src / rel), rel, crop) for rel in sources[k * shard_size : (k + 1) * shard_size]]
        return pool.imap(process_file, tasks, chunksize=4) if pool else map(process_file, tasks)

    try:
        upcoming = submit(todo[0]) if todo else None
        for i, k in enumerate(todo):
            files = sources[k * shard_size : (k + 1) * shard_size]
            results = upcoming
            writer = ShardWriter(out, k)
            rows = {"image": [], "path": [], "caption": [], "crop": []}
            skipped, capped, missing, held = [], [], 0, 0

            def flush():  # caption and append what is held (memory holds a batch, not the shard)
                nonlocal rows, held
                if captioner is not None and rows["image"]:
                    import io

                    from PIL import Image

                    bar.set_postfix_str("captioning")
                    images = [Image.open(io.BytesIO(im["bytes"])).convert("RGB") for im in rows["image"]]
                    rows["caption"] = captioner(images)
                    bar.set_postfix_str("")
                writer.write(rows)
                rows, held = {"image": [], "path": [], "caption": [], "crop": []}, 0

            try:
                for r in results:
                    bar.update(1)
                    if "skip" in r:
                        skipped.append((r["path"], *r["skip"]))
                        continue
                    if "capped" in r:
                        capped.append((r["path"], *r["capped"]))
                    for box, data in r["items"]:
                        rows["image"].append({"bytes": data, "path": None})
                        rows["path"].append(r["path"])
                        rows["crop"].append(list(box))
                        if caption_file is not None:
                            c = caption_file.lookup(r["path"], src / r["path"])
                            missing += c is None
                            rows["caption"].append(c or "")
                        else:
                            rows["caption"].append("")
                        held += len(data)
                        if len(rows["image"]) >= FLUSH_ROWS or held >= FLUSH_BYTES:
                            flush()
                # the workers go on with the next shard while this one is captioned and written
                upcoming = submit(todo[i + 1]) if i + 1 < len(todo) else None
                flush()
                n = writer.commit()
            except BaseException:
                writer.abort()
                raise
            write_text(
                progress_file(k),
                json.dumps(
                    {
                        "shard": k,
                        "images": n,
                        "files": len(files),
                        "missing_captions": missing,
                        "skipped": [list(s) for s in skipped],
                        "capped": [list(c) for c in capped],
                    }
                ),
            )
            done.append(k)
            write_dataset_index(out, sorted(done), description=f"varestorer prepare {src}")
            if on_shard is not None:
                on_shard(k)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()

    for k in range(n_shards):
        p = json.loads(progress_file(k).read_text())
        report.images += p["images"]
        report.missing_captions += p.get("missing_captions", 0)
        report.skipped.extend(tuple(s) for s in p["skipped"])
        report.capped.extend(tuple(c) for c in p.get("capped", []))
    if not (out / "state.json").exists():
        write_dataset_index(out, sorted(done))
    lines = ["path\treason\tdetail"] + [
        "\t".join(x.replace("\t", " ").replace("\n", " ") for x in s) for s in report.skipped
    ]
    write_text(out / "skipped.tsv", "\n".join(lines) + "\n")
    return report


def describe_settings(out: str | Path) -> dict:
    """The settings a prepared folder was made with (its ``prepare.json``)."""
    path = Path(out) / "prepare.json"
    if not path.exists():
        raise ConfigError(f"{out} is not a folder written by varestorer prepare (no prepare.json)")
    return json.loads(path.read_text())


__all__ = [
    "CropSettings",
    "PrepareReport",
    "crop_boxes",
    "features",
    "list_sources",
    "make_crops",
    "prepare_dataset",
    "process_file",
    "describe_settings",
]
