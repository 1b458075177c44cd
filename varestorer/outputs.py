"""Writing outputs so that none is lost and none is half-written.

* :func:`output_names`: the name of each input's output (``restore``, ``degrade``): a function of
  the inputs alone, so one input gets the same output on every run.
* :func:`atomic_file`, :func:`save_image`, :func:`write_text`: a file is written under a temporary
  name beside its final one and renamed when complete: a full disk, a crash or Ctrl-C never leaves
  a truncated file under the final name.
* :func:`replacing_folder`, :func:`swap_folder`: a folder (an export, a checkpoint) written beside
  its final place and swapped in when complete; the old one is removed only then, and what a kill
  left half-way is undone by the next run (:func:`recover_folder`).
* :func:`check_output_folder`: an output location that cannot be used (a file where a folder is
  wanted, a read-only folder, a full disk) refused before any work.
* :func:`os_error_message`: the one paragraph the CLI prints for an ``OSError`` that gets through.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import ConfigError

#: Less free space than this where an output goes is refused before any work.
MIN_FREE_BYTES = 1 << 20


# ----------------------------------------------------------------------------------------- names
def output_names(
    rels: Sequence[str | os.PathLike],
    ext: str,
    where: str | os.PathLike = "the output folder",
    inputs: Sequence[str | os.PathLike] | None = None,
) -> list[Path]:
    """The output path (relative) of each input path ``rels``, with the suffix ``ext``.

    ``photo.jpg`` -> ``photo.png``, unless another input of the same folder has the same stem
    (``photo.jpg`` and ``photo.png``): then each of them keeps its own suffix in the name
    (``photo.jpg.png``), except the one whose suffix already is ``ext`` (``photo.png`` stays
    ``photo.png``). The names depend on the inputs alone, never on what the output folder holds
    or on the order the inputs come in: each input gets one output, the same on every run.
    Two inputs that would still get one name (the same relative path from two input folders)
    are refused, naming both (their paths ``inputs``, by default ``rels``)."""
    suffix = f".{ext.lstrip('.')}"
    rels = [Path(r) for r in rels]
    plain = [r.with_suffix(suffix) for r in rels]
    count: dict[Path, int] = {}
    for p in plain:
        count[p] = count.get(p, 0) + 1
    names = [p if count[p] == 1 or r.suffix == suffix else r.with_name(r.name + suffix) for r, p in zip(rels, plain)]
    owner: dict[Path, str | os.PathLike] = {}
    for r, n in zip(inputs if inputs is not None else rels, names):
        if n in owner:
            raise ConfigError(
                f"{owner[n]} and {r} would both be written as {Path(where) / n}: the output folder keeps the "
                f"inputs' relative paths; rename one of them, or restore each input folder into its own output folder"
            )
        owner[n] = r
    return names


# ----------------------------------------------------------------------------------------- files
def _short_name(path: Path) -> str:
    """``path``'s name, or a stand-in where it is too long to take a prefix and a suffix (most file
    systems allow 255 bytes)."""
    return path.name if len(os.fsencode(path.name)) <= 200 else "varestorer"


def _temporary(path: Path, suffix: str = ".tmp", owner: int | None = None) -> Path:
    """A new name beside ``path``: hidden, unique, and short enough where ``path``'s name is long;
    ``owner`` (a process id) in it marks it stale once that process has ended (:func:`recover_folder`)."""
    tag = secrets.token_hex(4) if owner is None else f"{owner}-{secrets.token_hex(4)}"
    return path.with_name(f".{_short_name(path)}.{tag}{suffix}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; renamed to ``path`` when the block ends
    without error, removed otherwise (an error, a full disk, Ctrl-C)."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:  # name the file the user knows (a failed write() names none)
        if exc.filename in (None, str(tmp), tmp):
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def save_image(image, path: str | os.PathLike, format: str | None = None, **params) -> Path:
    """A PIL image saved under a temporary name and renamed (``format``: from the suffix)."""
    path = Path(path)
    if format is None:
        format = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")
    with atomic_file(path) as tmp:
        image.save(tmp, format=format, **params)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """``path.write_text(text)`` under a temporary name, flushed to disk (a state file a resumed run
    reads must survive a power cut too), renamed when complete."""
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return path


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """``shutil.copy2`` under a temporary name, renamed when complete."""
    with atomic_file(dst) as tmp:
        shutil.copy2(src, tmp)
    return Path(dst)


# ---------------------------------------------------------------------------------------- folders
def aside(final: Path) -> Path:
    """Where :func:`swap_folder` keeps the folder it replaces until the new one is in place."""
    return final.parent / f".{_short_name(final)}.old"


def swap_folder(new: Path, final: Path) -> None:
    """``new`` (complete) becomes ``final``. A ``final`` that exists is renamed aside first
    (:func:`aside`) and deleted last: at every moment a complete folder is under ``final``'s name,
    or under the aside name, where :func:`recover_folder` puts it back after a kill."""
    old = aside(final)
    if final.exists() or final.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    try:
        os.replace(new, final)
    except BaseException:
        if old.exists() and not final.exists():
            os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def recover_folder(final: Path) -> None:
    """Undo what a killed :func:`swap_folder` or :func:`replacing_folder` left beside ``final``: the
    folder moved aside is put back when nothing took its place (deleted when something did), and
    the half-written ``.NAME.PID-*.partial`` folders of processes no longer running are removed."""
    old = aside(final)
    if old.is_dir():
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)
    if final.parent.is_dir():
        prefix = f".{_short_name(final)}."
        for p in final.parent.iterdir():
            pid = p.name[len(prefix) :].split("-", 1)[0]
            if p.name.startswith(prefix) and p.name.endswith(".partial") and pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def replacing_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty folder beside ``out`` to write into. When the block ends without error it
    becomes ``out`` (:func:`swap_folder`), and an ``out`` that existed is removed only then;
    otherwise it is removed and ``out`` is untouched. What a killed earlier run left beside ``out``
    is cleared first (:func:`recover_folder`). The caller decides whether ``out`` may be replaced."""
    out = Path(out)
    if out.is_symlink():  # the folder it points to is replaced, the link kept
        out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(out)
    tmp = _temporary(out, ".partial", owner=os.getpid())
    tmp.mkdir()
    try:
        yield tmp
        swap_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_output_folder(path: str | os.PathLike, option: str = "the output folder") -> Path:
    """Refuse, before any work, an output folder that cannot be used: a file where the folder or
    one of its parents should be, a folder that cannot be written (permissions, a read-only file
    system), a disk with (almost) no free space, an empty name (an unset shell variable: it would
    mean the current folder). Creates nothing. Returns the path."""
    if not os.fspath(path).strip():
        raise ConfigError(f"{option} is empty (an unset variable?); name the folder to write, '.' for the current one")
    path = Path(path).expanduser()
    name = f"{option} {path}"
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{name} is a file, not a folder: choose another folder, or move the file away")
    probe = path
    while not probe.is_dir():
        if probe.is_symlink() and not probe.exists():
            raise ConfigError(
                f"cannot create {name}: {probe} is a link to {os.readlink(probe)}, which does not exist; create "
                f"that folder, or choose another folder"
            )
        if probe.exists():
            if probe.is_dir():  # made meanwhile (another process of the same launch): usable
                break
            raise ConfigError(
                f"cannot create {name}: {probe} is a file, not a folder; choose another folder, or move the file away"
            )
        if probe.parent == probe:
            break
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
        why = "is on a read-only file system" if read_only else "is not writable (permissions)"
        fix = (
            "choose a folder on a writable disk"
            if read_only
            else "choose a folder you can write to, or change its permissions"
        )
        raise ConfigError(f"cannot write {name}: {probe} {why}; {fix}")
    usage = shutil.disk_usage(probe)
    if usage.total == 0:
        raise ConfigError(
            f"cannot write {name}: {probe} is on a virtual file system with no disk behind it (like /proc); choose a "
            f"folder on a disk"
        )
    free = usage.free
    if free < MIN_FREE_BYTES:
        raise ConfigError(
            f"no space left for {name}: the disk of {probe} has {free} bytes free; free space or choose a folder "
            f"on another disk"
        )
    return path


def check_outside_inputs(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None], option: str) -> None:
    """Refuse an output folder that is, or is inside, one of the ``inputs`` folders (``{label:
    folder}``, each searched recursively): a later run would read the outputs back as inputs."""
    here = Path(out).expanduser().resolve()
    for label, item in inputs.items():
        if item is None or not Path(item).expanduser().is_dir():
            continue
        folder = Path(item).expanduser().resolve()
        if here == folder or folder in here.parents:
            raise ConfigError(
                f"{option} {out} is {'the' if here == folder else 'inside the'} {label} folder {item}, which is "
                f"searched recursively: a later run would read what is written there back as input; choose "
                f"{option} outside it"
            )


# -------------------------------------------------------------------------------------- messages
_REASONS = {
    errno.ENOSPC: ("the disk is full", "free space there, or choose a location on another disk"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space there, or choose a location on another disk"),
    errno.EACCES: ("permission denied", "change its permissions, or choose a location you may use"),
    errno.EPERM: (
        "the operation is not permitted (an immutable or protected file or folder)",
        "choose a location you can write to",
    ),
    errno.EROFS: ("the file system is read-only", "choose a location on a writable disk"),
    errno.ENOTDIR: ("a file is where a folder should be", "move that file away, or choose another location"),
    errno.EEXIST: ("it exists already", "move it away, or choose another location"),
    errno.EISDIR: ("a folder is where a file should be", "move that folder away, or choose another location"),
    errno.ENAMETOOLONG: ("the name is too long for the file system", "shorten the input's name or the output path"),
}

#: The ``OSError`` numbers the CLI reports as one paragraph (the output location cannot be used).
REPORTED_ERRNOS = frozenset(_REASONS)


def os_error_message(exc: OSError) -> str:
    """One paragraph for an ``OSError`` of :data:`REPORTED_ERRNOS`: the path, why, what to do."""
    code = exc.errno
    if code == errno.EEXIST and exc.filename is not None and os.path.isfile(exc.filename):
        code = errno.ENOTDIR  # mkdir(exist_ok=True) met a file where the folder goes
    why, fix = _REASONS.get(code, (exc.strerror or str(exc), "check the location"))
    where = " and ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None) or "an output location"
    said = exc.strerror or str(exc)
    why += f" ({said})" if said.lower() != why.lower() else ""
    return f"cannot use {where}: {why}; {fix}, then run the same command again"
