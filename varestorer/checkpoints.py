"""Finding, reading and strictly loading checkpoints (local path or the Hugging Face Hub), and
finding a run's ``checkpoint-STEP`` folders.

Never unpickles code: ``.pth``/``.pt``/``.bin`` files are read with
``torch.load(weights_only=True)``, everything else as safetensors. A checkpoint that does
not fit the model raises :class:`~varestorer.errors.CheckpointError` listing the missing,
unexpected and mis-shaped keys and naming the preset whose layout it matches best. The only
extra keys accepted are those a loader lists as known and harmless (``known_extras``, each with
its reason): they are ignored and named, with their reasons, in one log note.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

_CKPT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: str | os.PathLike) -> int:
    m = _CKPT.match(Path(path).name)
    if m is None:
        raise ConfigError(f"{path} is not a checkpoint-STEP folder")
    return int(m.group(1))


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-STEP`` folders of a run, oldest first (complete ones: partial writes have
    another name)."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := _CKPT.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_LIST_LIMIT = 12


def is_hub_id(text: str) -> bool:
    """``owner/name``: the form of a Hub repo id (a local path starts with ``.``, ``/`` or ``~``)."""
    text = str(text)
    return text.count("/") == 1 and all(text.split("/")) and not text.startswith((".", "/", "~"))


def resolve_file(path_or_repo: str | os.PathLike, filename: str | None = None, **hub_kwargs) -> Path:
    """A local file, a file in a local folder, or ``filename`` in a Hub repo (``owner/name``).

    Hub downloads go through ``huggingface_hub.hf_hub_download`` (its cache, token and
    ``HF_HUB_OFFLINE`` apply).
    """
    path = Path(path_or_repo).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if filename and (path / filename).is_file():
            return path / filename
        raise CheckpointError(
            f"{path} is a folder without {filename or 'the checkpoint file'}; "
            f"pass the file itself or a folder that holds it"
        )
    text = str(path_or_repo)
    if filename is None or not is_hub_id(text):
        raise CheckpointError(
            f"checkpoint {text!r} not found: pass an existing file, or a Hub repo id "
            f"('owner/name') together with the file name in it"
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(text, filename, **hub_kwargs))
    except (HfHubHTTPError, LocalEntryNotFoundError, HFValidationError, OSError) as exc:
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise CheckpointError(
            f"no such file or folder {text}{where}, and no {filename!r} to download from a Hub repo {text!r}: "
            f"{hub_failure(exc)}. Check the path; for a Hub repo, download it where you have network access "
            f"(huggingface-cli download {text} {filename}) and pass the local path."
        ) from exc


def hub_failure(exc: Exception) -> str:
    """Why a Hub download failed, in words: no such repo, offline, ... (for messages that also say
    the local path does not exist: a mistyped ``runs/name`` looks like a Hub id)."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    reasons = (  # subclasses before their bases: a gated repo is a RepositoryNotFoundError too
        (GatedRepoError, "that repo is gated (accept its terms on the Hub, then huggingface-cli login)"),
        (
            RepositoryNotFoundError,
            "the Hub has no repo of that name (or it is private and you are not logged in: huggingface-cli login)",
        ),
        (RevisionNotFoundError, "the Hub repo has no such revision"),
        (
            LocalEntryNotFoundError,
            "the Hub cannot be reached (no network, or HF_HUB_OFFLINE=1) and the local cache does not hold it",
        ),
        (EntryNotFoundError, "the Hub repo has no such file"),
        (HFValidationError, "that is not a valid Hub repo id either"),
    )
    return next((why for kind, why in reasons if isinstance(exc, kind)), f"{type(exc).__name__}: {exc}")


def read_file(path: str | os.PathLike, dtype: torch.dtype | Callable[[str], torch.dtype] | None = None) -> dict:
    """Read a checkpoint file: safetensors, or a torch file with ``weights_only=True``.

    ``dtype``: floating-point tensors are returned in it (integer ones as they are), each cast as it
    is read; a function of the key gives each tensor its own. A safetensors file is read one tensor
    at a time from a memory map, and each tensor's pages are released once it is copied
    (:func:`_stream_safetensors`): the peak is the result, not the file plus the result (a float32
    base read as bfloat16: 4.4 GB, not 8.8 + 4.4)."""
    path = Path(path)
    try:
        if path.suffix in _TORCH_SUFFIXES:
            state = _load_torch(path)
            return cast_floats(state, dtype) if dtype is not None and isinstance(state, Mapping) else state
        return dict(_stream_safetensors(path, dtype))
    except Exception as exc:  # unreadable, truncated, or pickled code that weights_only refuses
        raise _unreadable(path, exc) from exc


def _load_torch(path: Path):
    """A torch file's tensors (``weights_only``), memory-mapped; a legacy file (torch < 1.6, not a
    zip archive) cannot be mapped and is read whole instead."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap can only be used" not in str(exc) or path.stat().st_size == 0:
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    """What a file that cannot be read is, said as the user can act on it: empty, holding pickled
    code (refused, never run: torch's own advice to retry with ``weights_only=False`` is not
    repeated), or damaged."""
    if path.is_file() and path.stat().st_size == 0:
        return CheckpointError(
            f"cannot read checkpoint {path}: it is an empty file (0 bytes; a download or copy that never "
            f"started, or a full disk?): get or copy it again"
        )
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in str(exc):
        return CheckpointError(
            f"cannot read checkpoint {path}: it holds pickled code (objects other than tensors and plain "
            f"containers). It was not loaded and nothing in it ran. A weights file needs no code: do not "
            f"trust this one; ask its author for a safetensors file, or re-save the weights from a copy "
            f"you trust"
        )
    return CheckpointError(
        f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}. The file is damaged (cut short by "
        f"a download, a copy or a full disk?) or is not a weights file: get or copy it again, or write it "
        f"again (a model folder: varestorer export RUN OUT)"
    )


#: safetensors' dtype names -> torch's (the file format's specification; the writer in
#: ``export/folder.py`` reads it the other way).
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def iter_weights(path: str | os.PathLike) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of a safetensors file one at a time, each tensor's file pages released once
    it is copied: what checks every weight of a file (:func:`refuse_nonfinite`) holds one tensor at
    a time, not the file. A damaged file raises :class:`CheckpointError` as :func:`read_file` does."""
    path = Path(path)
    try:
        yield from _stream_safetensors(path, None)
    except Exception as exc:
        raise _unreadable(path, exc) from exc


def _stream_safetensors(path: Path, dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """Each tensor copied out of a private memory map of the file (cast to ``dtype`` on the way),
    then its pages dropped from this process (``MADV_DONTNEED``), so the file is never resident
    next to its copy. safetensors validates the file first (header, offsets, size)."""
    import json
    import mmap
    import struct

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:  # a damaged or truncated file fails here
        keys = list(f.keys())
    with path.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
        if any(header[k]["dtype"] not in SAFETENSORS_DTYPES for k in keys) or not hasattr(mmap, "MADV_DONTNEED"):
            yield from (cast_floats(load_file(path), dtype) if dtype is not None else load_file(path)).items()
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY) as mm:
            for k in keys:
                info = header[k]
                kind, shape = SAFETENSORS_DTYPES[info["dtype"]], info["shape"]
                begin, end = (8 + n + o for o in info["data_offsets"])
                cast = _dtype_of(dtype, k) if dtype is not None and kind.is_floating_point else kind
                if end == begin:
                    yield k, torch.empty(shape, dtype=cast)
                    continue
                view = torch.frombuffer(mm, dtype=kind, count=(end - begin) // kind.itemsize, offset=begin)
                tensor = view.reshape(shape).to(cast, copy=True)
                del view
                page = begin - begin % mmap.PAGESIZE
                mm.madvise(mmap.MADV_DONTNEED, page, end - page)
                yield k, tensor
                del tensor


def page_releaser(path: str | os.PathLike) -> Callable[[torch.Tensor], None]:
    """A function that drops from this process the pages of ``path`` a tensor reads, when the
    tensor lies in a private memory map of that file (``torch.load(..., mmap=True)``, which
    :func:`read_file` uses for torch files); for any other tensor it does nothing. A streamed
    conversion calls it once a tensor is written, so the source file is never resident whole
    (the pages are read from the file again if the tensor is used again: nothing is lost).
    The maps are read from ``/proc/self/maps`` when it is called; elsewhere it does nothing."""
    import ctypes
    import mmap

    real = os.path.realpath(path)
    try:
        with open("/proc/self/maps") as fh:
            lines = fh.read().splitlines()
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return lambda tensor: None
    spans = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5] == real and parts[1][3] == "p":  # a private (copy-on-write) map
            lo, hi = (int(a, 16) for a in parts[0].split("-"))
            spans.append((lo, hi))

    def release(tensor: torch.Tensor) -> None:
        if tensor.device.type != "cpu" or not tensor.numel():
            return
        begin = tensor.data_ptr()
        end = begin + tensor.numel() * tensor.element_size()
        if not any(lo <= begin and end <= hi for lo, hi in spans):
            return
        page = begin - begin % mmap.PAGESIZE
        libc.madvise(ctypes.c_void_p(page), ctypes.c_size_t(end - page), mmap.MADV_DONTNEED)

    return release


def _finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite. The sum first (one pass, no temporary: a NaN or an
    infinity anywhere makes it non-finite); only when it is not (or overflowed) each value, a chunk
    at a time."""
    flat = t.detach().reshape(-1)
    if bool(torch.isfinite(flat.sum())):
        return True
    step = 1 << 24
    return all(bool(torch.isfinite(flat[i : i + step]).all()) for i in range(0, flat.numel(), step))


def refuse_nonfinite(state: Mapping | Iterable[tuple[str, torch.Tensor]], what: str, source: str) -> None:
    """Raise a :class:`CheckpointError` naming the file and the first tensor of ``state`` that holds
    NaN or infinite values (weights like that restore every image to the same garbage). ``state``:
    a state dict, or ``(name, tensor)`` pairs (:func:`iter_weights`: a file checked a tensor at a
    time, never held whole)."""
    first, bad = None, 0
    for k, v in state.items() if isinstance(state, Mapping) else state:
        if torch.is_tensor(v) and v.is_floating_point() and not v.is_meta and not _finite(v):
            bad += 1
            if first is None:
                first = (k, int((~torch.isfinite(v)).sum()), v.numel())
        del v  # a stream's tensor goes before the next is read
    if first is not None:
        k, count, numel = first
        others = f" (and {bad - 1} other tensors)" if bad > 1 else ""
        raise CheckpointError(
            f"{what} checkpoint {source} holds weights that are not finite: {k} has {count} NaN or "
            f"infinite values of {numel}{others}. The file is damaged, or the run that wrote it diverged: "
            f"use a checkpoint whose weights are finite (re-export an earlier one: varestorer export "
            f"RUN/checkpoint-STEP OUT) or get the file again"
        )


def select_state_dict(obj: Mapping, keys: tuple[str, ...]) -> tuple[dict, list[str]]:
    """The weights of a checkpoint and the top-level entries left unused.

    ``obj`` is either a flat ``{name: tensor}`` state dict or a dict holding one under one of
    ``keys`` (tried in order, e.g. ``("vae",)`` for Infinity's VAE file).
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"a checkpoint must hold a dict, got {type(obj).__name__}")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj), []
    for key in keys:
        if isinstance(obj.get(key), Mapping):
            return dict(obj[key]), [k for k in obj if k != key]
    raise CheckpointError(
        f"checkpoint has no weights under any of {list(keys)}; "
        f"its top-level entries are {sorted(map(str, obj))[:_LIST_LIMIT]}"
    )


def _listing(title: str, items: list[str]) -> str:
    more = f" ... and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else ""
    return f"\n  {title} ({len(items)}): " + ", ".join(items[:_LIST_LIMIT]) + more


@dataclass
class LoadReport:
    """What a strict load found; raised as a :class:`CheckpointError` unless ``ok``."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mis_shaped: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)  # entries of the file the model does not use
    ignored: list[str] = field(default_factory=list)  # known harmless extra keys, not loaded

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mis_shaped)


def closest_preset(shapes: Mapping[str, tuple], candidates: Mapping[str, Mapping[str, tuple]]) -> tuple[str, float]:
    """The candidate layout sharing most ``(key, shape)`` pairs with ``shapes``, and that share."""
    best, best_score = "", -1.0
    for name, layout in candidates.items():
        both = set(layout) | set(shapes)
        score = sum(1 for k in layout if shapes.get(k) == tuple(layout[k])) / max(len(both), 1)
        if score > best_score:
            best, best_score = name, score
    return best, best_score


def load_strict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    what: str,
    source: str,
    rename: Callable[[str], str | None] | None = None,
    candidates: Mapping[str, Mapping[str, tuple]] | None = None,
    unused_top_level: list[str] | None = None,
    known_extras: Mapping[str, str] | None = None,
    check_finite: bool = True,
) -> LoadReport:
    """Load ``state_dict`` into ``model``, filling every parameter and buffer or raising.

    Args:
        rename: maps a checkpoint key to the model's key, or to ``None`` for an entry the
            model does not use (e.g. a duplicate under a module alias); those are named in
            the warning, never dropped silently.
        candidates: preset name -> ``{key: shape}`` of that preset's model, used to say which
            preset a mismatching checkpoint seems to be.
        unused_top_level: top-level entries of the file that hold no weights for ``model``;
            they are named in the warning too.
        known_extras: ``{key: reason}`` (keys after ``rename``) that a checkpoint may hold and
            the model neither has nor needs, e.g. buffers an older version of the model
            registered. Present ones are ignored and named with their reasons in one info note;
            any other key the model does not have is an error.
        check_finite: refuse non-finite weights (:func:`refuse_nonfinite`), reading every value;
            ``False`` where the caller checks them as it streams them (an import: the checkpoint's
            pages are then read once).
    A model on the meta device gets the checkpoint's tensors assigned; otherwise they are
    copied into the existing parameters (keeping the model's dtype and device).
    """
    expected = model.state_dict()
    renamed: dict[str, torch.Tensor] = {}
    in_file: dict[str, str] = {}  # the model's key -> the file's
    report = LoadReport(unused=list(unused_top_level or []))
    for key, value in state_dict.items():
        new = rename(key) if rename else key
        if new is None:
            report.unused.append(key)
        else:
            renamed[new] = value
            in_file[new] = key
    # listed in the model's (resp. the file's) order, which reads like the architecture
    report.missing = [k for k in expected if k not in renamed]
    extra = [k for k in renamed if k not in expected]
    report.ignored = [k for k in extra if k in (known_extras or {})]
    report.unexpected = [k for k in extra if k not in (known_extras or {})]
    report.mis_shaped = [
        f"{k} {tuple(renamed[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in renamed and tuple(renamed[k].shape) != tuple(expected[k].shape)
    ]
    if not report.ok:
        msg = f"{what} checkpoint {source} does not fit the model."
        for title, items in (
            ("missing", report.missing),
            ("unexpected", report.unexpected),
            ("mis-shaped", report.mis_shaped),
        ):
            if items:
                msg += _listing(title, items)
        if report.unexpected:
            known = f"; known harmless extras, ignored: {', '.join(known_extras)}" if known_extras else ""
            msg += (
                f"\n  The model has no parameter or buffer of the unexpected names{known}. Is the file of "
                f"another model or version? If you know those entries are unused, delete them from the state "
                f"dict and save it again."
            )
        if candidates:
            name, score = closest_preset(
                {k: tuple(v.shape) for k, v in renamed.items() if k not in report.ignored}, candidates
            )
            msg += (
                f"\n  It looks most like the {name!r} preset ({score:.0%} of keys and shapes agree): "
                f"pass --preset {name} if that is what it is."
                if score > 0
                else f"\n  It matches none of the presets {sorted(candidates)}: is it a {what} checkpoint?"
            )
        raise CheckpointError(msg)
    if check_finite:
        refuse_nonfinite({in_file[k]: renamed[k] for k in expected}, what, source)  # named as in the file
    on_meta = any(t.is_meta for t in expected.values())
    model.load_state_dict({k: renamed[k] for k in expected}, strict=True, assign=on_meta)
    if report.ignored:
        logger.info(
            "%s checkpoint %s: ignored %d known harmless entries the model does not have: %s",
            what,
            source,
            len(report.ignored),
            "; ".join(f"{k} ({known_extras[k]})" for k in report.ignored),
        )
    if report.unused:
        logger.warning("%s checkpoint %s: entries not used by the model: %s", what, source, report.unused)
    return report


def cast_floats(state: Mapping, dtype: torch.dtype | Callable[[str], torch.dtype]) -> dict:
    """The floating-point tensors of ``state`` in ``dtype`` (a dtype, or a function of the key giving
    one), integer buffers as they are."""
    return {
        k: v.to(_dtype_of(dtype, k)) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in state.items()
    }


def _dtype_of(dtype, key: str) -> torch.dtype:
    return dtype(key) if callable(dtype) else dtype
