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


def check_sizes(pairs_sizes: list[tuple[str, tuple[int, int], tuple[int, int]]]) -> None:
    """``(name, pred size, gt size)``: the first pair whose sizes differ is an error saying what to do."""
    for name, ps, gs in pairs_sizes:
        if tuple(ps) != tuple(gs):
            raise ConfigError(
                f"{name}: the restored image is {ps[1]}x{ps[0]} but the ground truth is {gs[1]}x{gs[0]}. "
                f"Restore at the ground-truth size (varestorer restore --upscale, or evaluate --model, "
                f"which does it) or crop both to the same size"
            )
