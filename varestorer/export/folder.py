"""The export form of a trained model: a self-describing folder, no pickles.

    adapter_model.safetensors, adapter_config.json   the LoRA adapter (PEFT format; loads with
                                                     peft.PeftModel.from_pretrained on the base)
    transformer.safetensors                          instead of the adapter, for full fine-tuning
                                                     and teacher mode (official key layout)
    encoder.safetensors                              the fine-tuned VAE encoder (``encoder.*`` keys
                                                     of Infinity's VAE layout)
    varestorer_config.json                           :class:`~.config.ExportConfig`: the base, resolution,
                                                     scale schedule, how the student reads its input,
                                                     the recipe used
    merged_transformer.safetensors                   optional (``varestorer export --merge``): the
                                                     base with the LoRA merged in, official layout
    base_transformer.safetensors, base_vae.safetensors
                                                     only for a base built with random weights
                                                     (tiny preset, demo): they exist nowhere else

Training writes this form into every ``checkpoint-STEP/export`` and into ``OUTPUT_DIR/final``;
:func:`find_export` finds it from a run folder, a checkpoint or the export folder itself. A
``tokenizer``-mode run writes ``vae.safetensors`` and ``tokenizer_config.json`` instead
(:func:`write_tokenizer_export`).

The format is the library's: :func:`write_export` takes the trained parts and their weights
(gathered first when training is sharded), not a training module, and this module imports nothing
of the trainer; the trainer's checkpoint hooks (``distill/checkpointing.py``) call it.
:func:`~.loading.load_export` reads it back into its parts (the pipeline's ``from_pretrained``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ..checkpoints import SAFETENSORS_DTYPES, iter_weights, list_checkpoints, load_strict, read_file, refuse_nonfinite
from ..errors import ConfigError
from ..outputs import atomic_file, copy_file, replacing_folder, write_text
from ..presets import get_preset
from ..restorer import save_restorer
from ..tokenizer.loading import load_vae
from ..transformer.loading import load_transformer
from ..transformer.lora import base_weights, is_adapted, save_adapter
from .config import CONFIG_FILE, RESTORER_FILE, ExportConfig

ENCODER_FILE = "encoder.safetensors"
TRANSFORMER_FILE = "transformer.safetensors"
MERGED_FILE = "merged_transformer.safetensors"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
BASE_TRANSFORMER_FILE = "base_transformer.safetensors"
BASE_VAE_FILE = "base_vae.safetensors"
#: the files that are the base itself (not trained by the run): copied as they are by a re-save
BASE_FILES = (BASE_TRANSFORMER_FILE, BASE_VAE_FILE, TRANSFORMER_FILE, MERGED_FILE)
TOKENIZER_VAE_FILE = "vae.safetensors"  # a tokenizer-mode run's export (write_tokenizer_export)
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def save_weights(state: dict, path: str | Path) -> None:
    """A state dict as safetensors (detached, contiguous, on the CPU: what safetensors needs), under
    a temporary name renamed when complete: a full disk never leaves a truncated file under its
    name. An I/O error is an ``OSError`` naming the file (the CLI says what to do)."""
    import re

    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
        except SafetensorError as exc:  # safetensors' I/O errors are its own type: "... (os error 28) ..."
            code = re.search(r"os error (\d+)", str(exc))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from exc


_SAFETENSORS_NAMES = {kind: name for name, kind in SAFETENSORS_DTYPES.items()}  # torch dtype -> the file's


def save_weights_streamed(
    state: dict, path: str | Path, dtype: torch.dtype | None = None, written: Callable | None = None
) -> None:
    """A state dict as safetensors, written one tensor at a time, each floating tensor converted to
    ``dtype`` (if given) just before it is written: memory holds the source (a memory-mapped
    checkpoint costs no copy) and one converted tensor, never the whole converted state (what
    :func:`save_weights` needs). ``written(name, tensor)`` is called with each source tensor once it
    is written (to check it, and to drop its file pages: :func:`~varestorer.checkpoints.page_releaser`);
    what it raises ends the write and no file is left.
    Under a temporary name, renamed when complete."""

    def out_dtype(t):
        return dtype if dtype is not None and t.is_floating_point() else t.dtype

    names = sorted(state)
    header, offset = {}, 0
    for k in names:
        t = state[k]
        size = t.numel() * torch.empty((), dtype=out_dtype(t)).element_size()
        header[k] = {
            "dtype": _SAFETENSORS_NAMES[out_dtype(t)],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for k in names:
            t = state[k].detach().to("cpu", out_dtype(state[k])).contiguous()
            if t.numel():
                f.write(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no bytes copy
            del t
            if written is not None:
                written(k, state[k])


def write_export(
    out: str | Path,
    *,
    transformer,
    config: ExportConfig,
    transformer_state: dict | None = None,
    encoder_state: dict | None = None,
    base_vae_state: dict | None = None,
    base_from: str | Path | None = None,
    restorer=None,
) -> Path:
    """Write the export form into ``out`` from the trained parts' weights.

    Args:
        transformer: the student's transformer (its adapter configuration, if it has adapters).
        config: the run's :class:`ExportConfig`.
        transformer_state: its weights (by default its own ``state_dict()``): with LoRA adapters
            the adapter is written from them (and, with ``base_vae_state``, the base); otherwise
            (full fine-tuning, teacher mode) all of them, official layout.
        encoder_state: the fine-tuned LQ encoder's weights, if the run has one.
        base_vae_state: the base's VAE when the base has random weights (the tiny preset): such a
            base can be downloaded from nowhere, so it travels with the export (with the base transformer).
        base_from: an export folder whose base files (:data:`BASE_FILES`) are copied as they are
            (a loaded model saved again): a whole transformer found there is not written again.
        restorer: the stage-1 restorer (a SwinIR), written as ``config.restorer``.
    """
    state = transformer.state_dict() if transformer_state is None else transformer_state
    names = [n for n in BASE_FILES if not (n == MERGED_FILE and is_adapted(transformer))]  # a merge of another LoRA
    copied = [Path(base_from) / n for n in names if base_from is not None and (Path(base_from) / n).is_file()]
    if (restorer is None) != (config.restorer is None):
        raise ValueError(f"the config names the restorer {config.restorer!r} but the export is given {restorer!r}")
    with new_export(out, overwrite=True) as tmp:  # exactly this export in ``out`` once complete, or nothing
        _write_export(tmp, transformer, config, state, encoder_state, base_vae_state, copied, restorer)
    return Path(out).expanduser()


def _write_export(out: Path, transformer, config, state, encoder_state, base_vae_state, copied, restorer) -> None:
    if is_adapted(transformer):
        save_adapter(transformer, out, state)
        if base_vae_state is not None:
            save_weights(base_weights(state), out / BASE_TRANSFORMER_FILE)
    elif not any(f.name in (TRANSFORMER_FILE, MERGED_FILE) for f in copied):
        save_weights(state, out / TRANSFORMER_FILE)
    if encoder_state is not None:
        save_weights({f"encoder.{k}": v for k, v in encoder_state.items()}, out / ENCODER_FILE)
    if base_vae_state is not None:
        save_weights(base_vae_state, out / BASE_VAE_FILE)
    for f in copied:
        copy_file(f, out / f.name)
    if restorer is not None:
        save_restorer(restorer, out / config.restorer)
    config.save(out)


def write_tokenizer_export(out: str | Path, *, vae, recipe, schedule, vae_state: dict | None = None) -> Path:
    """A ``tokenizer``-mode run's export form: ``vae.safetensors`` (the official key layout:
    ``load_vae(preset, path)`` reads it) and ``tokenizer_config.json`` (preset, architecture,
    resolution, scale schedule, the recipe)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = vae.state_dict() if vae_state is None else vae_state
    save_weights({k: v.clone() for k, v in state.items()}, out / TOKENIZER_VAE_FILE)
    config = {
        "format": "varestorer-tokenizer",
        "format_version": 1,
        "base_preset": recipe.model.preset,
        "vae": dict(vae.config),
        "resolution": recipe.model.resolution,
        "scale_schedule": [list(s) for s in schedule],
        "recipe": recipe.to_dict(),
    }
    write_text(out / TOKENIZER_CONFIG_FILE, json.dumps(config, indent=2, default=list))
    return out


def load_encoder(encoder, path: str | Path) -> None:
    """The fine-tuned encoder of an export (``encoder.*`` keys, Infinity's VAE layout), strictly."""
    state = read_file(path)
    load_strict(encoder, state, what="encoder", source=str(path), rename=lambda k: k.removeprefix("encoder."))


def find_export(path: str | Path) -> Path:
    """The export folder of ``path``: an export folder, a ``checkpoint-STEP`` folder (its
    ``export/``), or a training output folder (its ``final/``, else its latest checkpoint)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(
            f"{path} does not exist; pass a training output folder, a checkpoint-STEP folder or an export folder"
        )
    for candidate in (path, path / "export", path / "final"):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    found = [c / "export" for c in list_checkpoints(path) if (c / "export" / CONFIG_FILE).is_file()]
    if found:
        return found[-1]
    raise ConfigError(
        f"no trained model found in {path}: expected {CONFIG_FILE} in it, in its export/ or "
        f"final/ folder, or a checkpoint-STEP/export folder (written by distill.py)"
    )


def export_files(folder: str | Path) -> list[Path]:
    """The files of the export form in ``folder`` (what ``varestorer export`` copies)."""
    folder = Path(folder)
    names = (
        CONFIG_FILE,
        RESTORER_FILE,
        ENCODER_FILE,
        TRANSFORMER_FILE,
        MERGED_FILE,
        BASE_TRANSFORMER_FILE,
        BASE_VAE_FILE,
        *ADAPTER_FILES,
    )
    return [folder / n for n in names if (folder / n).is_file()]


def check_weights(folder: str | Path) -> None:
    """Refuse an export whose weight files cannot be read or hold NaN or infinite values, where they
    are copied or uploaded without a model being loaded (``export``, ``publish``): a
    :class:`CheckpointError` naming the file and the tensor."""
    for f in export_files(folder):
        if f.suffix == ".safetensors":
            refuse_nonfinite(iter_weights(f), "model", str(f))  # a tensor at a time: the 2B base is 8.8 GB


def copy_export(src: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Copy the export form found in ``src`` (see :func:`find_export`) into the folder ``out``
    (:func:`new_export`: ``out`` holds exactly this export once complete)."""
    src, out = find_export(src), Path(out).expanduser()
    with new_export(out, overwrite=overwrite, source=src) as tmp:
        for f in export_files(src):
            copy_file(f, tmp / f.name)
    return out


def is_export_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds an export (its config file), of any mode."""
    return any((Path(folder) / n).is_file() for n in (CONFIG_FILE, TOKENIZER_CONFIG_FILE))


def check_export_target(out: str | Path, *, overwrite: bool = False, source: str | Path | None = None) -> Path:
    """Refuse, before anything is written, an ``out`` an export may not replace: a file, a folder
    that is not empty without ``overwrite``, a folder that is neither empty nor an export
    (``overwrite`` replaces an export only, as a whole), a folder holding ``source``, the model
    being exported. Returns ``out`` (expanded)."""
    out = Path(out).expanduser()
    if source is not None and out.resolve() == Path(source).resolve():
        overwrite = True  # an export written again into its own folder (export X X --merge)
    if source is not None and out.resolve() in Path(source).resolve().parents:
        raise ConfigError(
            f"{out} holds the model being exported ({source}): replacing it would delete that model; choose "
            f"another folder"
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a folder: choose another folder for the export, or move the file away")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out} exists and is not empty; choose another folder or pass --overwrite")
        if not is_export_folder(out):
            example = sorted(p.name for p in out.iterdir())[0]
            raise ConfigError(
                f"{out} is not an export folder (it holds {example}, and no {CONFIG_FILE}): --overwrite replaces "
                f"an export as a whole, never another folder; choose another folder"
            )
    return out


@contextlib.contextmanager
def new_export(out: str | Path, *, overwrite: bool = False, source: str | Path | None = None) -> Iterator[Path]:
    """Yield an empty folder beside ``out`` to write an export into; when the block ends without
    error it replaces ``out`` (:func:`~varestorer.outputs.replacing_folder`): an overwrite leaves
    exactly the new export, and a failure (a full disk) leaves ``out`` as it was. Refused first
    (:func:`check_export_target`): what ``out`` may not be replaced by an export."""

    out = check_export_target(out, overwrite=overwrite, source=source)
    with replacing_folder(out) as tmp:
        yield tmp


def bundle_base(preset, vae_checkpoint, transformer_checkpoint, out: str | Path | None = None) -> Path:
    """Write a pre-trained base into the preset's shipped folder (``out``: elsewhere) as float16
    safetensors, the form ``preset: NAME`` loads with no download: ``vae.safetensors`` and
    ``transformer.safetensors`` (from a ``tokenizer``-mode and a ``teacher``-mode run)."""
    preset = get_preset(preset)
    out = Path(out) if out is not None else preset.weights_dir()
    if out is None:
        raise ConfigError(f"preset {preset.name!r} ships no weights: pass --out")
    out.mkdir(parents=True, exist_ok=True)
    vae = load_vae(preset, vae_checkpoint)
    transformer = load_transformer(preset, transformer_checkpoint)
    for model, name in ((vae, preset.vae_file), (transformer, preset.transformer_file)):
        save_weights(
            {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in model.state_dict().items()}, out / name
        )
    return out
