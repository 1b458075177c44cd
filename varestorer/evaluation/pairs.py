"""Pairing restored, ground-truth and LQ images by name.

Images are found recursively (the toolkit's image suffixes) and matched by a **key**: the file
stem, lower-cased, with a trailing resolution tag removed: ``_LR``, ``_HR``, ``_LR4``, ``_HR2``,
``_x4`` (or ``x4`` right after a digit), ``_lq``, ``_gt``, ``_hq`` (``-`` works as ``_``): RealSR's
``Canon_001_LR4.png`` / ``Canon_001_HR.png``, DRealSR's ``DSC_1454_x4.png`` / ``DSC_1454_x1.png``,
DIV2K's ``0801x4.png`` / ``0801.png``. A folder holding ``test_LR/`` and ``test_HR/`` (RealSR,
DRealSR as distributed) may be given as the dataset root: ``--gt ROOT`` finds ``ROOT/test_HR``
and ``--lq ROOT`` finds ``ROOT/test_LR``; a folder holding both (RealSR V3's ``Canon/Test/4/``)
may be given as both: ``--gt`` takes the untagged/``_HR`` files, ``--lq`` the ``_LR4`` ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..data.images import IMAGE_SUFFIXES, is_image_path
from ..errors import ConfigError

_TAG = re.compile(r"(?:[_-](?:lr|hr)\d*|[_-]x\d+|(?<=\d)x\d+|[_-](?:lq|gt|hq))$", re.IGNORECASE)
_ROOT_CHILDREN = {"gt": ("test_HR", "HR", "GT", "hq"), "lq": ("test_LR", "LR", "LQ", "lq")}


def pair_key(path: Path) -> str:
    """The matching key of an image file (see the module doc)."""
    stem = path.stem
    key = _TAG.sub("", stem)
    return (key or stem).lower()


def resolve_folder(folder: str | Path, role: str) -> Path:
    """``folder`` itself, or its ``test_HR`` / ``test_LR`` child when it is a dataset root."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ConfigError(f"--{role} {folder}: no such folder")
    for child in _ROOT_CHILDREN.get(role, ()):
        if (path / child).is_dir():
            return path / child
    return path


_LQ_TAG = re.compile(r"(?:[_-](?:lr\d*|lq)|[_-]x[2-9]\d*|(?<=\d)x[2-9]\d*)$", re.IGNORECASE)


def _is_lq_name(path: Path) -> bool:
    return bool(_LQ_TAG.search(path.stem))


def index_images(folder: Path, role: str) -> dict[str, Path]:
    """``{key: path}`` of the images under ``folder``. Where HR and LR files share a folder
    (RealSR V3's ``Canon/Test/4/``: ``x_HR.png`` next to ``x_LR4.png``), ``--gt`` keeps the
    file without an LR tag and ``--lq`` the one with it; any other clash of keys is an error."""

    found: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if not (p.is_file() and is_image_path(p) and not p.stem.endswith("_compare")):
            continue
        key = pair_key(p)
        if key in found:
            wanted = [q for q in (found[key], p) if _is_lq_name(q) == (role == "lq")]
            if len(wanted) != 1:
                raise ConfigError(
                    f"--{role} {folder}: {found[key].name} and {p.name} have the same name key {key!r}; "
                    f"keep one of them"
                )
            p = wanted[0]
        found[key] = p
    if not found:
        raise ConfigError(f"--{role} {folder}: no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    return found


@dataclass
class Pair:
    key: str
    gt: Path
    pred: Path | None = None
    lq: Path | None = None


def match(
    gt: dict[str, Path],
    pred: dict[str, Path] | None = None,
    lq: dict[str, Path] | None = None,
    allow_missing: bool = False,
) -> list[Pair]:
    """Pairs for every GT image; a GT image without its partner is an error unless ``allow_missing``
    (then it is left out, and so said by the caller)."""
    pairs, missing = [], []
    for key, g in gt.items():
        p = pred.get(key) if pred is not None else None
        q = lq.get(key) if lq is not None else None
        if (pred is not None and p is None) or (lq is not None and q is None):
            missing.append(g.name)
            continue
        pairs.append(Pair(key, g, p, q))
    if missing and not allow_missing:
        raise ConfigError(
            f"{len(missing)} ground-truth image(s) have no partner, e.g. {', '.join(missing[:3])}: "
            f"names are matched by stem without _LR/_HR/x4 tags; rename them or pass --allow-missing"
        )
    if not pairs:
        raise ConfigError("no image pairs: the file names of the folders do not match (see varestorer evaluate --help)")
    return pairs


def image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image file as it is read (EXIF orientation applied), from its header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # rotated a quarter turn
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; replace the file or move it out of the folder") from None
    return (w, h) if turned else (h, w)


def check_sizes(pairs_sizes: list[tuple[str, tuple[int, int], tuple[int, int]]], lq: bool = False) -> None:
    """``(name, size, gt size)`` of each restored image (``--pred``), or of each LQ image (``lq``):
    a restoration is scored as it is, so it must have the ground truth's size; an LQ image is
    restored at the ground truth's size, so it must have its shape (the same aspect, within one LQ
    pixel), or the restoration would be squashed. The first pair that differs is an error saying
    what to do."""
    for name, ps, gs in pairs_sizes:
        (h, w), (H, W) = ps, gs
        if not lq and (h, w) != (H, W):
            raise ConfigError(
                f"{name}: the restored image is {w}x{h} but the ground truth is {W}x{H}. "
                f"Restore at the ground-truth size (varestorer restore --upscale, or evaluate --model, "
                f"which does it) or crop both to the same size"
            )
        scale = H / h
        if lq and abs(w * scale - W) > max(1.0, scale):
            raise ConfigError(
                f"{name}: the LQ image is {w}x{h} but its ground truth is {W}x{H}, another shape: restored at the "
                f"ground truth's height ({scale:.3g}x) it would be {round(w * scale)}x{H} and squashed to {W}x{H} "
                f"to be scored. Pair each LQ image with the ground truth it was made from, or crop both to one shape"
            )
