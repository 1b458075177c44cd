"""Restoring image files into a folder: what ``varestorer restore`` does, for Python users too.

Two steps, so that a run is refused before a model is loaded::

    plan = plan_files(["photos/"], "out", method="onestep", model="EvanEternal/VARestorer")
    pipe = VARestorerPipeline.from_pretrained("EvanEternal/VARestorer")
    report = restore_files(pipe, plan, method="onestep")

:func:`plan_files` finds the images (folders walked recursively), names one output per input (the
same names on every run, :func:`~varestorer.outputs.output_names`; never an input's path) and
resumes: an existing output that records the same input (its EXIF ImageDescription, written by
:func:`save_restored`) is kept unless ``overwrite``; one that records another input is moved to
that input's name when it is in the run, else the run is refused. :func:`restore_files` restores
the rest in batches, writes each output atomically with its provenance (and ``NAME_compare.png``
with ``compare``), lists unreadable inputs in ``OUT/skipped.tsv``, and splits the batches over the
processes of a launch (:mod:`.processes`). It returns a :class:`FilesReport`; Ctrl-C raises
:class:`RestoreInterrupted`, which carries the report so far.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..data.images import IMAGE_SUFFIXES, ImageSkip, is_image_path, read_rgb, to_tensor
from ..errors import ConfigError, VARestorerError
from ..methods import METHODS
from ..outputs import REPORTED_ERRNOS, check_output_folder, os_error_message, output_names, save_image, write_text
from .compare import comparison_strip
from .pipeline import output_size
from .processes import Processes, batch_seed, whole_batches

#: The formats an output may be written in (``ext``).
OUTPUT_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
#: The EXIF tag (ImageDescription) where an output records the input it was restored from.
SOURCE_TAG = 0x010E
#: The list of inputs that could not be restored, with why, in the output folder.
SKIPPED_FILE = "skipped.tsv"


@dataclass
class FilePlan:
    """What a run restores: ``todo`` (input, its relative path, output), the outputs ``kept``, and
    ``notes`` on what the plan did (moves, kept outputs of another method)."""

    out: Path
    todo: list[tuple[Path, Path, Path]]
    kept: int = 0
    notes: list[str] = field(default_factory=list)
    ignored: list[tuple[Path, str]] = field(default_factory=list)  # files of the folders that are not images


@dataclass
class FilesReport:
    """What a run did: the images each process restored, those kept, the notes of the plan, and the
    inputs skipped (path, why)."""

    out: Path
    restored: list[int]
    kept: int
    notes: list[str]
    skipped: list[tuple[Path, str]]

    @property
    def failed(self) -> bool:
        """Nothing restored or kept although there was something to do (a plan holds at least one
        image: every one of them was skipped). ``varestorer restore`` then exits with 1."""
        return sum(self.restored) == 0 and not self.kept and bool(self.skipped)


class RestoreInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`restore_files`: the finished outputs are written (the ones in progress
    dropped) and ``report`` says how many; run the same plan again to resume."""

    def __init__(self, report: FilesReport):
        super().__init__(f"interrupted after {sum(report.restored)} image(s)")
        self.report = report


# ---------------------------------------------------------------------- reading
def read_input(path: str | Path, upscale: float) -> torch.Tensor:
    """An image to restore at ``upscale`` times its size, ``(3, H, W)`` in [0, 1], as ``restore``,
    ``evaluate`` and the app read it: any mode or bit depth, EXIF orientation applied, and its
    declared size checked against the largest output before a pixel is decoded (a file that
    claims 13000x13000 is refused from its header). Raises :class:`~varestorer.data.images.ImageSkip`
    (not a usable image) or :class:`~varestorer.errors.ConfigError` (too large), each saying why."""
    image = to_tensor(read_rgb(path, lambda w, h: output_size((h, w), upscale)))
    output_size(tuple(image.shape[-2:]), upscale)  # the oriented size
    return image


# ---------------------------------------------------------------------- planning
def collect_inputs(inputs: Sequence[str | Path], ignored: list | None = None) -> list[tuple[Path, Path]]:
    """``(path, output relative path)`` of every image; folders keep their structure. The other
    files of a folder (not hidden) are added to ``ignored`` as ``(path, why)``: every input is
    restored or listed."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p, path))
            found += [(p, p.relative_to(path)) for p in files if is_image_path(p)]
            if ignored is not None:
                ignored += [
                    (p, _NOT_READ.format(suffix=p.suffix or "no suffix")) for p in files if not is_image_path(p)
                ]
        elif path.is_file():
            found.append((path, Path(path.name)))
        else:
            raise ConfigError(f"input {item} does not exist")
    if not found:
        raise ConfigError(f"no images in {' '.join(map(str, inputs))} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return found


_NOT_READ = "not a file type restore reads ({suffix}; it reads " + ", ".join(IMAGE_SUFFIXES) + "): convert it to PNG"


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def check_output_outside_inputs(inputs: Sequence[str | Path], out: Path) -> None:
    """Input folders are searched recursively: an output folder in one would be read back as
    input by the next run."""
    here = out.expanduser().resolve()
    for item in inputs:
        folder = Path(item).expanduser().resolve()
        if folder.is_dir() and (here == folder or folder in here.parents):
            raise ConfigError(
                f"the output folder {out} is {'the' if here == folder else 'inside the'} input folder "
                f"{item}, which is searched recursively: a later run would restore the restored images "
                f"too; choose an -o folder outside it"
            )


def plan_outputs(found: list[tuple[Path, Path]], out: Path, ext: str) -> list[tuple[Path, Path, Path]]:
    """``(input, its relative path, output)``: one output per input, named by
    :func:`~varestorer.outputs.output_names` (the same on every run), never an input's path. A
    file given twice is restored once."""
    unique, inputs = [], set()
    for path, rel in found:
        if path.resolve() not in inputs:
            inputs.add(path.resolve())
            unique.append((path, rel))
    plan = []
    for (path, rel), name in zip(unique, output_names([rel for _, rel in unique], ext, out, [p for p, _ in unique])):
        target = out / name
        if target.resolve() in inputs:
            raise ConfigError(f"restoring {path} would write over the input {target}; choose another -o folder")
        plan.append((path, rel, target))
    return plan


def provenance(path: Path, rel: Path, method: str, model: str | None) -> dict:
    """What an output records of how it was made: its input (relative path and size), the method
    and the model (a local folder as its absolute path)."""
    if model is not None and Path(model).expanduser().is_dir():
        model = str(Path(model).expanduser().resolve())
    return {"restored_from": rel.as_posix(), "bytes": path.stat().st_size, "method": method, "model": model}


def recorded_provenance(output: Path) -> dict | None:
    """The provenance an existing output records (:func:`provenance`); ``{}`` when it records none
    (written by another program or an older version); ``None`` when it is not a readable image."""
    try:
        with Image.open(output) as im:
            text = im.getexif().get(SOURCE_TAG)
    except Exception:  # noqa: BLE001 - PIL raises many kinds for a file that is not an image
        return None
    try:
        found = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {}
    return found if isinstance(found, dict) and "restored_from" in found else {}


def _same_input(a: dict, b: dict) -> bool:
    return (a.get("restored_from"), a.get("bytes")) == (b.get("restored_from"), b.get("bytes"))


def compare_path(output: Path) -> Path:
    """Where ``compare`` writes an output's ``input | restored`` strip."""
    return output.with_name(f"{output.stem}_compare.png")


def resume_plan(  # noqa: C901
    plan: list[tuple[Path, Path, Path]], out: Path, *, method: str, model: str | None, overwrite: bool = False
) -> FilePlan:
    """An existing output of the same input is kept (resume), unless ``overwrite``. An existing
    output of another input is never kept for this one: when its own input is in this run under a
    new name (``photo.jpg``'s ``photo.png`` once ``photo.png`` is added beside it), it is moved to
    that name; otherwise the run is refused before any work."""
    todo, kept, moves, foreign, other_method = [], 0, [], [], 0
    sources = {id(p): provenance(p[0], p[1], method, model) for p in plan}
    by_input = {(s["restored_from"], s["bytes"]): p for p in plan for s in [sources[id(p)]]}
    for item in plan:
        src, _, dst = item
        if dst.is_dir():
            raise ConfigError(
                f"{dst} is a folder where the restoration of {src} goes; move it away or choose another -o"
            )
        recorded = None if overwrite or not dst.exists() else recorded_provenance(dst)
        if recorded is None:  # nothing there (or not an image, or overwrite): restore it
            todo.append(item)
        elif not recorded or _same_input(recorded, sources[id(item)]):
            kept += 1
            other_method += bool(recorded) and (recorded.get("method"), recorded.get("model")) != (
                method,
                sources[id(item)]["model"],
            )
        else:
            owner = by_input.get((recorded["restored_from"], recorded["bytes"]))
            if owner is not None and owner[2] != dst and not owner[2].exists() and owner[2] not in dict(moves).values():
                moves.append((dst, owner[2]))
                todo.append(item)
            else:
                foreign.append(
                    f"{dst} (restored from {recorded['restored_from']}, {recorded['bytes']} bytes; not {src})"
                )
    if foreign:
        raise ConfigError(
            f"{len(foreign)} output(s) in {out} were restored from other inputs, and their names are now "
            f"these inputs': {'; '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}. Pass --overwrite to "
            f"restore over them, or choose another -o folder"
        )
    notes = []
    for old, new in moves:  # only once nothing is refused
        os.replace(old, new)
        if compare_path(old).exists():
            os.replace(compare_path(old), compare_path(new))
        # the moved output is its input's: kept, not restored again
        todo = [t for t in todo if t[2] != new]
        kept += 1
        notes.append(f"moved {old.name} to {new.name} (its input's name now that another input shares its stem)")
    if other_method:
        notes.append(f"{other_method} of the kept outputs were made with another --method or --model")
    return FilePlan(out, todo, kept, notes)


def plan_files(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    method: str = "onestep",
    model: str | None = None,
    ext: str = "png",
    compare: bool = False,
    overwrite: bool = False,
) -> FilePlan:
    """What restoring ``inputs`` (files, folders walked recursively) into ``out`` does: checked and
    resumed before any model is loaded (``model``: its folder or Hub id, recorded in each output)."""
    if ext not in OUTPUT_FORMATS:
        raise ConfigError(f"ext must be one of {', '.join(OUTPUT_FORMATS)}, got {ext!r}")
    check_output_folder(out, "-o")
    out = Path(out).expanduser()
    check_output_outside_inputs(inputs, out)
    ignored: list[tuple[Path, str]] = []
    plan = plan_outputs(collect_inputs(inputs, ignored), out, ext)
    if compare:
        names = {dst for _, _, dst in plan}
        clash = next((dst for _, _, dst in plan if compare_path(dst) in names), None)
        if clash is not None:
            raise ConfigError(
                f"--compare would write {compare_path(clash)}, the output of another input; rename that input "
                f"or leave out --compare"
            )
    planned = resume_plan(plan, out, method=method, model=model, overwrite=overwrite)
    planned.ignored = ignored
    return planned


# ---------------------------------------------------------------------- writing
def save_restored(image: Image.Image, path: Path, source: dict | None = None) -> None:
    """Under a temporary name, renamed when complete: a crash, a full disk or Ctrl-C never leaves a
    half-written output under the final name. ``source`` (:func:`provenance`) goes into its EXIF."""
    fmt = OUTPUT_FORMATS[path.suffix[1:]]
    exif = Image.Exif()
    if source is not None:
        exif[SOURCE_TAG] = json.dumps(source)
    save_image(image, path, format=fmt, exif=exif, **({"quality": 95} if fmt != "PNG" else {}))


def save_compare(lq: torch.Tensor, restored: Image.Image, path: Path, method: str) -> None:
    res = torch.from_numpy(np.array(restored)).permute(2, 0, 1).float() / 255
    save_image(comparison_strip([lq, res], ["input", method]), path, format="PNG")


def write_skipped(out: Path, skipped: list[tuple[Path, str]]) -> None:
    """``OUT/skipped.tsv`` (input, why) when something was skipped; an earlier run's is removed."""
    if skipped:
        out.mkdir(parents=True, exist_ok=True)
        rows = io.StringIO()  # tab-separated; a name holding a tab, a newline or a quote is quoted (csv)
        csv.writer(rows, delimiter="\t", lineterminator="\n").writerows((str(p), why) for p, why in skipped)
        write_text(out / SKIPPED_FILE, rows.getvalue())
    elif (out / SKIPPED_FILE).is_file():  # an earlier run's: nothing is skipped now
        (out / SKIPPED_FILE).unlink()


# ---------------------------------------------------------------------- restoring
def batch_draws(call: dict, seed: int, index: int) -> dict:
    """The call's settings with batch ``index``'s own random draws (:func:`~.processes.batch_seed`:
    ``seed`` for the first batch), the same whichever process restores it: the sampling methods'
    ``seed``, or the one-step method's ``generator`` (its ``decode="gumbel"`` draws)."""
    own = batch_seed(seed, index)
    return {**call, **METHODS[call["method"]].draws(own, torch.Generator().manual_seed(own))}


def restore_files(  # noqa: C901
    pipe,
    plan: FilePlan,
    *,
    method: str = "onestep",
    prompts: str | Callable[[list[Path]], str | list[str] | None] | None = None,
    model: str | None = None,
    seed: int = 0,
    compare: bool = False,
    group: Processes | None = None,
    progress: bool = True,
    **call,
) -> FilesReport:
    """Restore ``plan.todo`` with ``pipe`` (a :class:`~.pipeline.VARestorerPipeline`, or anything
    called the same way) and write the outputs.

    Args:
        prompts: one prompt for all, ``None`` (the pipeline's captioner), or a function of a batch's
            input paths returning its prompts.
        model: recorded in each output's provenance (as :func:`plan_files` was given it).
        seed: the first batch's draws (``decode="gumbel"``, the sampling methods); batch ``k`` draws
            from :func:`~.processes.batch_seed`, whichever process restores it.
        group: the processes of a launch (:func:`~.processes.processes`); default: this one alone.
        call: the pipeline call's settings (``upscale``, ``mode``, ``batch_size``, the method's).
    """
    group = group or Processes()
    drawn = {"seed", "generator"} & set(call)
    if drawn:
        raise ConfigError(f"restore_files draws each batch from seed=; pass no {', '.join(sorted(drawn))}")
    out, todo = plan.out, plan.todo
    batch_size = call.get("batch_size", 4)
    upscale = call.get("upscale") or pipe.upscale
    call = {"method": method, "output_type": "pil", **call}
    batches = whole_batches(len(todo), batch_size, group.rank, group.world)
    skipped: list[tuple[int, Path, str]] = []  # (index in todo, input, why)
    done = 0
    desc = f"restore ({method})" + (f" [process 1 of {group.world}]" if group.world > 1 else "")
    bar = tqdm(
        total=sum(len(todo[part]) for _, part in batches),
        desc=desc,
        unit="image",
        disable=not (progress and group.is_main),
    )
    try:
        for index, part in batches:
            chunk, images = [], []
            for i, (src, rel, dst) in enumerate(todo[part], start=part.start):
                try:
                    image = read_input(src, upscale)
                except (ImageSkip, ConfigError) as exc:  # not an image, or too large: say which, go on
                    skipped.append((i, src, str(exc)))
                    bar.update(1)
                    continue
                images.append(image)
                chunk.append((src, rel, dst))
            if not chunk:
                continue
            prompt = prompts([src for src, _, _ in chunk]) if callable(prompts) else prompts
            restored = pipe(images, prompt=prompt, **batch_draws(call, seed, index)).images
            for (src, rel, dst), im, res in zip(chunk, images, restored):
                dst.parent.mkdir(parents=True, exist_ok=True)
                if compare:  # first: an output that exists is a finished image
                    save_compare(im, res, compare_path(dst), method)
                save_restored(res, dst, provenance(src, rel, method, model))
                done += 1
            bar.update(len(chunk))
    except KeyboardInterrupt:
        bar.close()
        mine = plan.ignored + [(p, why) for _, p, why in skipped]
        if group.is_main:
            write_skipped(out, mine)
        raise RestoreInterrupted(FilesReport(out, [done], plan.kept, plan.notes, mine)) from None
    except OSError as exc:
        bar.close()
        if exc.errno not in REPORTED_ERRNOS:
            raise
        finished = f"the {done + plan.kept} image(s)" if group.world == 1 else "the image(s)"
        raise VARestorerError(
            f"{os_error_message(exc)}: it resumes after {finished} finished in {out} (nothing half-written was left)"
        ) from exc
    bar.close()
    reports = group.gather((done, skipped))  # every process's: waits for the last one
    everyone = sorted(s for _, part in reports for s in part)
    skipped_all = plan.ignored + [(p, why) for _, p, why in everyone]
    report = FilesReport(out, [n for n, _ in reports], plan.kept, plan.notes, skipped_all)
    if group.is_main:
        write_skipped(out, report.skipped)
    return report
