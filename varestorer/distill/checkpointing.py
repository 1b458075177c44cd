"""A run's checkpoints on disk: complete or absent, verified on resume, written safely.

``checkpoint-STEP/`` is what accelerate's ``save_state`` writes (the trainable weights, the
optimizer, scheduler and random states, and the export form) plus ``manifest.json``: the step,
a hash of the recipe and every file's size and SHA-256. It is written as
``.checkpoint-STEP.partial/`` and renamed when complete, so a run killed mid-write (SIGKILL,
node failure, a full disk) leaves no folder that looks like a checkpoint; old checkpoints are
pruned only after the new one exists. ``resume_from_checkpoint=latest`` takes the newest
checkpoint whose files match its manifest and names, with a warning, those it skipped.

A checkpoint folder holds accelerate's pickles (``optimizer.bin``, ``scheduler.bin``,
``random_states_*.pkl``), which ``load_state`` unpickles: resume only from checkpoints you (or
your own runs) wrote. Export, restore and publish never read them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from ..checkpoints import latest_checkpoint, list_checkpoints
from ..errors import CheckpointError, ConfigError
from ..export import save_weights
from ..outputs import recover_folder, swap_folder, write_text

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
TRAINABLE_FILE = "trainable.safetensors"  # the trainable weights of a checkpoint (see register_checkpoint_hooks)
_PARTIAL = re.compile(r"^\.(checkpoint-\d+|final)\.partial$")
_OLD = re.compile(r"^\.(checkpoint-\d+|final)\.old$")  # a complete folder moved aside by swap_folder


def full_state(state: dict) -> dict:
    """Every tensor of ``state`` whole and detached. Sharded weights are gathered: FSDP2's
    ``DTensor``s (``full_tensor()``) and DeepSpeed ZeRO-3's partitioned parameters (``ds_id``:
    empty on every process until ``GatheredParameters``). Both are collectives: call this on every
    process, then write on the main one. ZeRO-3 parameters must come as the ``Parameter`` objects
    (``state_dict(keep_vars=True)``): a detached copy of one is empty and cannot be gathered."""
    partitioned = [v for v in state.values() if hasattr(v, "ds_id")]
    with torch.no_grad(), _gathered(partitioned):
        return {
            k: v.full_tensor() if isinstance(v, DTensor) else v.detach().clone() if hasattr(v, "ds_id") else v.detach()
            for k, v in state.items()
        }


def _gathered(partitioned: list):
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed  # only ZeRO-3 runs hold such parameters

    return deepspeed.zero.GatheredParameters(partitioned)


def _deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def register_checkpoint_hooks(accelerator, module_cls: type) -> None:
    """What accelerate's ``save_state``/``load_state`` keep of a ``module_cls`` (a
    :class:`~varestorer.distill.module.TrainingModule`): ``save_state`` writes only its trainable
    weights (``trainable.safetensors``) and its export form (``export/``, the library's format),
    never a frozen base (DeepSpeed's own checkpoint leaves it out too: :func:`save_checkpoint`);
    ``load_state`` copies them back (:func:`load_checkpoint` refuses another recipe's first)."""

    def save_hook(models, weights, output_dir):
        for model in models:
            core = accelerator.unwrap_model(model)
            if isinstance(core, module_cls):
                state = full_state(core.export_state())  # on every process: gathered when sharded
                if accelerator.is_main_process:
                    save_weights({k: state[k] for k in core.trainable_state_dict()}, Path(output_dir) / TRAINABLE_FILE)
                    core.save_export(Path(output_dir) / "export", state)
        weights.clear()

    def load_hook(models, input_dir):
        while models:  # empty under DeepSpeed and FSDP, which load the module themselves
            core = accelerator.unwrap_model(models.pop())
            state = read_trainable(input_dir, core)
            with torch.no_grad():
                for k, v in core.trainable_state_dict().items():
                    v.copy_(state[k])

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def read_trainable(input_dir: str | os.PathLike, core) -> dict[str, torch.Tensor]:
    """A checkpoint's trainable weights, named as ``core``'s; an error if they are another
    recipe's (other tensors) or another preset's or LoRA rank's (other shapes)."""
    from safetensors.torch import load_file

    state = load_file(str(Path(input_dir) / TRAINABLE_FILE))
    expected = core.trainable_state_dict()
    # checkpoints written while the transformer was a PeftModel name its weights one level deeper
    state = {k.replace(".base_model.model.", ".", 1) if k not in expected else k: v for k, v in state.items()}
    if set(state) != set(expected):
        raise CheckpointError(
            f"{input_dir} holds trainable weights of another recipe "
            f"({len(state)} tensors, this recipe trains {len(expected)})"
        )
    wrong = [k for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise CheckpointError(
            f"{input_dir} holds trainable weights of another preset or LoRA rank "
            f"({wrong[0]}: {tuple(state[wrong[0]].shape)} there, "
            f"{tuple(expected[wrong[0]].shape)} here); resume it with its own recipe"
        )
    return state


def load_checkpoint(accelerator, folder: str | os.PathLike, core) -> None:
    """``accelerator.load_state(folder)`` after checking that its trainable weights are this
    recipe's (before DeepSpeed or FSDP load anything: their loaders do not run the hook first)."""
    read_trainable(folder, core)
    # DeepSpeed's module file holds only the trainable weights (save_checkpoint): the rest stays as built
    accelerator.load_state(str(folder), **({"load_module_strict": False} if _deepspeed(accelerator) else {}))


def recipe_hash(recipe_dict: dict) -> str:
    """What a checkpoint was trained by, without the keys that may change on resume."""
    train = {
        k: v
        for k, v in recipe_dict.get("train", {}).items()
        if k not in ("resume_from_checkpoint", "max_steps", "output_dir", "push_to_hub", "hub_model_id")
    }
    text = json.dumps({**recipe_dict, "train": train}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def write_manifest(folder: Path, step: int, recipe_digest: str) -> None:
    files = {
        p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files(folder)
    }
    manifest = {"step": step, "recipe_hash": recipe_digest, "files": files}
    write_text(folder / MANIFEST_FILE, json.dumps(manifest, indent=1))


def check_checkpoint(folder: str | os.PathLike) -> str | None:
    """What is wrong with a checkpoint folder (``None``: complete, every file as its manifest says)."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return f"it has no {MANIFEST_FILE} (an incomplete write, or a checkpoint of an older varestorer)"
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"its {MANIFEST_FILE} is unreadable ({exc})"
    for name, want in files.items():
        p = folder / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != want["bytes"]:
            return f"{name} has {p.stat().st_size} bytes, its manifest says {want['bytes']}"
        if _sha256(p) != want["sha256"]:
            return f"{name} does not match its checksum"
    return None


def resolve_resume(wanted: str | None, output_dir: str | os.PathLike, recipe_digest: str | None = None) -> Path | None:
    """The checkpoint to resume from: ``latest`` (the newest complete one; ``None`` if none) or a
    named folder, which must be complete."""
    if not wanted:
        return None
    if wanted == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            logger.info("resume_from_checkpoint=latest: no checkpoint in %s, starting a new run", output_dir)
        for ckpt in reversed(found):
            problem = check_checkpoint(ckpt)
            if problem is None:
                return _note_recipe_change(ckpt, recipe_digest)
            logger.warning("skipping %s: %s; trying the one before it", ckpt, problem)
        if found:
            raise CheckpointError(
                f"no usable checkpoint in {output_dir}: each of {', '.join(p.name for p in found)} "
                f"is incomplete or damaged (see the warnings above). Start a new run in another "
                f"train.output_dir, or resume from one of them by name if you trust it"
            )
        return None
    path = Path(wanted)
    if not path.is_dir():
        path = Path(output_dir) / wanted
    if not path.is_dir():
        raise ConfigError(
            f"checkpoint {wanted!r} not found (looked in {wanted} and {path}); use 'latest' or a checkpoint-STEP folder"
        )
    if (path / "varestorer_config.json").is_file() and not (path / TRAINABLE_FILE).is_file():
        raise ConfigError(
            f"{path} is an exported model, not a checkpoint (it holds no optimizer state to resume): resume from "
            f"a checkpoint-STEP folder, or start a new run from its weights with model.init_from={path}"
        )
    problem = check_checkpoint(path)
    if problem is not None and not (path / MANIFEST_FILE).exists() and (path / TRAINABLE_FILE).is_file():
        logger.warning(
            "resuming from %s, which has no %s (written before checkpoints had one): not verified", path, MANIFEST_FILE
        )
        return path
    if problem is not None:
        raise CheckpointError(
            f"cannot resume from {path}: {problem}. Resume from an earlier checkpoint-STEP "
            f"folder, or with train.resume_from_checkpoint=latest (the newest complete one)"
        )
    return _note_recipe_change(path, recipe_digest)


def _note_recipe_change(path: Path, recipe_digest: str | None) -> Path:
    """A changed recipe is allowed (a lower lr after a divergence), but said: the trajectory is
    then not the one the checkpoint's run would have followed."""
    written = json.loads((path / MANIFEST_FILE).read_text()).get("recipe_hash")
    if recipe_digest is not None and written != recipe_digest:
        logger.warning(
            "%s was written with other recipe settings than this run's (recipe hash %s, now %s): "
            "resuming with the new ones",
            path,
            written,
            recipe_digest,
        )
    return path


def remove_partials(output_dir: str | os.PathLike) -> None:
    """Clear what a killed run left: delete what was half-written (``.checkpoint-STEP.partial``,
    ``.final.partial``), and put back a complete folder that :func:`~varestorer.outputs.swap_folder`
    had moved aside (``.NAME.old``) when no ``NAME`` took its place; one that was replaced is deleted."""
    out = Path(output_dir)
    if not out.is_dir():
        return
    for p in sorted(out.iterdir()):
        if p.is_dir() and _OLD.match(p.name):
            logger.info("%s was left by a run killed while replacing it: recovered", p)
            recover_folder(out / _OLD.match(p.name).group(1))
    for p in out.iterdir():
        if p.is_dir() and _PARTIAL.match(p.name):
            logger.info("removing %s, left half-written by an interrupted run", p)
            shutil.rmtree(p, ignore_errors=True)


def prune(output_dir: str | os.PathLike, limit: int | None) -> None:
    """Keep the newest ``limit`` checkpoints (called after a new one is complete)."""
    if not limit:
        return
    found = list_checkpoints(output_dir)
    for old in found[: max(0, len(found) - limit)]:
        logger.info("removing old checkpoint %s (checkpoints_total_limit=%d)", old, limit)
        shutil.rmtree(old)


def _partial(final: Path) -> Path:
    """Where ``final`` is written before it is complete."""
    return final.parent / f".{final.name}.partial"


def _disk_full_message(what: Path, exc: OSError, keep: str) -> str:
    reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else f"{type(exc).__name__}: {exc}"
    return f"writing {what.name} to {what.parent} failed: {reason}. Nothing half-written was left; {keep}"


@contextlib.contextmanager
def atomic_folder(final: Path, keep: str = "the previous one is intact") -> Iterator[Path]:
    """Write into ``.NAME.partial`` next to ``final``; on success it replaces ``final``, on an
    ``OSError`` (disk full, quota, permissions) it is removed and a :class:`CheckpointError` says
    what happened."""
    final = Path(final)
    partial = _partial(final)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
        swap_folder(partial, final)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise CheckpointError(_disk_full_message(final, exc, keep)) from exc
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def save_checkpoint(
    accelerator, output_dir: str | os.PathLike, step: int, recipe_digest: str, limit: int | None
) -> Path:
    """``accelerator.save_state`` into ``checkpoint-STEP`` atomically, with its manifest; then
    prune to ``limit``. Every process takes part (each writes its random states)."""
    final = Path(output_dir) / f"checkpoint-{step}"
    partial = _partial(final)
    failure = None
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        # DeepSpeed saves the module itself, before the hook: without the frozen base, T5, VAE, LPIPS
        accelerator.save_state(str(partial), **({"exclude_frozen_parameters": True} if _deepspeed(accelerator) else {}))
    except OSError as exc:
        failure = exc
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        try:
            if failure is not None:
                raise failure
            write_manifest(partial, step, recipe_digest)
            swap_folder(partial, final)
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            previous = latest_checkpoint(output_dir)
            keep = (
                f"the previous checkpoint {previous.name} is intact. Free space and resume with "
                f"train.resume_from_checkpoint=latest"
                if previous
                else "no checkpoint was written yet"
            )
            raise CheckpointError(_disk_full_message(final, exc, keep)) from exc
        prune(output_dir, limit)
    accelerator.wait_for_everyone()
    return final


class StopSignals:
    """SIGTERM and SIGUSR1 (what Slurm and Kubernetes send before they pre-empt a job) ask the
    loop to stop after the current step instead of killing it. Installed only from the main
    thread; the previous handlers come back on exit."""

    SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            logger.warning("received %s: stopping after this step and writing a checkpoint", self.name(signum))
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def agreed(self, accelerator) -> int:
        """The stop signal any process received (0: none), the same on every process."""
        if accelerator.num_processes == 1:
            return self.received or 0
        got = torch.tensor([float(self.received is not None)], device=accelerator.device)
        if accelerator.reduce(got, "sum").item() == 0:
            return 0
        return self.received or signal.SIGTERM  # another process's: Slurm signals every task

    @staticmethod
    def name(signum: int) -> str:
        return signal.Signals(signum).name


#: What a run leaves in its output folder besides its checkpoints (moved aside with them by ``--overwrite``).
RUN_FILES = ("final", "losses.jsonl", "losses.png", "recipe.json", "logs", "validation")


def _run_files(out: Path) -> list[Path]:
    """Another run's files in ``out`` that a new run would replace or mix with: its checkpoints,
    ``final/``, ``losses.jsonl``."""
    return [*list_checkpoints(out), *(out / n for n in ("final", "losses.jsonl") if (out / n).exists())]


def _step(path: Path) -> int | None:
    m = re.match(r"^checkpoint-(\d+)$", path.name)
    return int(m.group(1)) if m else None


def claim_run_folder(
    output_dir: str | os.PathLike, resume: str | None, overwrite: bool = False, move: bool = True
) -> Path | None:
    """Refuse to train into a folder holding another run, unless this run resumes it or ``overwrite``.

    A new run (no ``resume``) would replace the old run's ``final/``, append to its ``losses.jsonl``,
    and with ``checkpoints_total_limit`` prune its own new checkpoints first (the old ones have higher
    steps; ``latest`` would then go back to the old run). Resuming from a named checkpoint while later
    ones of the abandoned run are there has the same effect on those (``latest`` with no checkpoint to
    take is a new run). With ``overwrite`` (and ``move``:
    the main process) those files are moved aside into ``OUTPUT_DIR/replaced-DATE-TIME/``, never
    deleted: returned, and said in a warning."""
    out = Path(output_dir)
    if not out.is_dir() or (resume == "latest" and list_checkpoints(out)):
        return None
    if resume == "latest":  # nothing to resume: a new run, which the checks below are for
        resume = None
    named = None
    if resume:
        named = Path(resume) if Path(resume).is_dir() else out / resume
        if not named.is_dir() or (named.resolve().parent == out.resolve() and _step(named) is None):
            return None  # not found, or not a checkpoint (final/): resolve_resume says so
    if named is not None and named.resolve().parent == out.resolve():
        # resuming this folder's own checkpoint: what comes after it is the abandoned run's
        stale = [c for c in list_checkpoints(out) if _step(c) > _step(named)]
        if not stale:  # final/ is then the named checkpoint's own (written with the newest one)
            return None
        stale += [out / "final"] if (out / "final").exists() else []
        names = ", ".join(p.name for p in stale)
        problem = (
            f"{out} holds what the run did after {named.name} ({names}): resume_from_checkpoint=latest would "
            f"go back to it, and checkpoints_total_limit would prune this run's new checkpoints first"
        )
        fix = "move them out of the way, or pass --overwrite to have them moved aside"
    else:
        stale = _run_files(out)
        if not stale:
            return None
        shown = [p.name + "/" * p.is_dir() for p in stale]
        names = ", ".join(shown[:4]) + (f" and {len(shown) - 4} more" if len(shown) > 4 else "")
        problem = (
            f"{out} holds another run ({names}): a new run there would replace its final/, add to its "
            f"losses.jsonl and mix its checkpoints with this run's"
        )
        resumable = "resume it with train.resume_from_checkpoint=latest, " if list_checkpoints(out) else ""
        fix = (
            f"{resumable}give this run another train.output_dir, or pass --overwrite to start again there "
            f"(the old run's files are moved aside, not deleted)"
        )
        stale += [out / n for n in RUN_FILES if (out / n).exists() and out / n not in stale]
    if not overwrite:
        raise ConfigError(f"{problem}. To train there, {fix}")
    if not move:
        return None
    import time

    aside = out / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while aside.exists():
        n += 1
        aside = out / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
    aside.mkdir()
    for p in stale:
        os.replace(p, aside / p.name)
    logger.warning(
        "--overwrite: moved %s to %s; delete that folder when you no longer need it",
        ", ".join(p.name for p in stale),
        aside,
    )
    return aside


LOCK_FILE = ".varestorer-train.lock"


@contextlib.contextmanager
def run_lock(output_dir: str | os.PathLike) -> Iterator[None]:
    """Refuse a second training into ``output_dir`` while one runs there: an exclusive ``flock``
    on ``OUTPUT_DIR/.varestorer-train.lock``, released by the kernel however the holder ends
    (so a killed run leaves no stale lock). Holds who has it, for the message."""
    import fcntl
    import socket
    import time

    path = Path(output_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ConfigError(
                f"another training is writing to {output_dir} ({holder}): wait for it to end, or "
                f"give this one another train.output_dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        yield
    finally:
        f.close()
