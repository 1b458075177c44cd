"""Reading an export folder back into its parts: :func:`load_export` (the pipeline's
``from_pretrained``, fine-tuning's ``model.init_from``), from a folder or a Hub repo id, the
authors' release repo included (:mod:`.release_hub`: imported once, then cached)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoints import hub_failure, is_hub_id, list_checkpoints
from ..errors import CheckpointError, ConfigError
from ..presets import get_preset
from ..restorer import load_restorer
from ..tokenizer.loading import load_vae
from ..tokenizer.schedules import vae_downsample
from ..transformer.loading import build_transformer, load_transformer
from ..transformer.lora import load_adapter
from ..transformer.text import TextEncoder
from .config import CONFIG_FILE, ExportConfig
from .folder import (
    ADAPTER_FILES,
    BASE_TRANSFORMER_FILE,
    BASE_VAE_FILE,
    ENCODER_FILE,
    MERGED_FILE,
    TRANSFORMER_FILE,
    find_export,
    load_encoder,
)
from .release_hub import RELEASE_FILES, is_release_repo, release_export


def export_dir(model: str | Path, revision: str | None = None) -> Path:
    """The local folder of ``model``: a folder as it is, a Hub repo id downloaded (its cache)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    text = str(model)
    where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
    if path.exists():
        raise ConfigError(f"model {text} is a file, not a folder: pass the export folder that holds it")
    if not is_hub_id(text):
        raise ConfigError(f"no such folder {text}{where}; --model takes an export folder or a Hub repo id (owner/name)")
    from huggingface_hub import snapshot_download

    if is_release_repo(text, revision):  # the authors' checkpoint: imported once, then cached
        return release_export(text, revision)
    try:
        folder = Path(snapshot_download(text, revision=revision))
    except Exception as exc:
        raise CheckpointError(
            f"no such folder {text}{where}, and no Hub repo {text} to download: "
            f"{hub_failure(exc)}. Check the path; for a model on the Hub, download it where you have "
            f"network access (huggingface-cli download {text} --local-dir DIR) and pass DIR."
        ) from exc
    if not (folder / CONFIG_FILE).is_file() and (folder / RELEASE_FILES["checkpoint"][1]).is_file():
        return release_export(text, revision)  # a copy of the release under another name
    return folder


@dataclass
class ExportParts:
    """What :func:`load_export` returns: the config and the loaded models of an export."""

    folder: Path
    config: ExportConfig
    vae: torch.nn.Module
    encoder: torch.nn.Module  # the fine-tuned LQ encoder, or a copy of the VAE's own
    transformer: torch.nn.Module  # with its LoRA adapter loaded (not merged), if it has one
    text_encoder: TextEncoder
    restorer: torch.nn.Module | None = None  # the stage-1 restorer (DiffBIR's SwinIR), if the model has one


def load_export(  # noqa: C901
    model: str | Path,
    *,
    base: str | Path | None = None,
    vae: str | Path | None = None,
    text_encoder: str | Path | None = None,
    revision: str | None = None,
    dtype: torch.dtype | None = None,
) -> ExportParts:
    """Load an export folder (or a Hub repo id holding one) into its parts.

    Args:
        base: the base transformer checkpoint (file, folder or Hub id) when it is not the one the
            export names (``base_transformer``; ``None`` there: the preset's official weights).
            Not needed with a merged or whole-transformer export.
        vae, text_encoder: likewise for the VAE and the T5 encoder.
        dtype: the transformer's blocks (as ``cast_blocks`` holds them) and a Hub T5 read in it,
            tensor by tensor (``None``: float32, T5 as :meth:`TextEncoder.from_pretrained`
            chooses): the memory of that dtype only, never a float32 copy first.
    """
    folder = export_dir(model, revision)
    if not (folder / CONFIG_FILE).is_file() and list(folder.glob(f"*/{CONFIG_FILE}")) + list_checkpoints(folder):
        try:  # a run or checkpoint folder: say where its export is
            found = find_export(folder)
        except ConfigError:
            found = None
        if found is not None:
            raise ConfigError(f"{folder} is a training run or checkpoint, not an export: pass its export {found}")
    config = ExportConfig.load(folder)
    preset = get_preset(config.base_preset)
    if config.transformer_config is not None:  # an imported checkpoint of another size
        preset = dataclasses.replace(preset, transformer=dict(config.transformer_config))
    _check_config_fits(folder, config, preset)

    def local(name: str) -> Path | None:
        return folder / name if (folder / name).is_file() else None

    if not config.has_adapter and local(ADAPTER_FILES[0]) and not (local(TRANSFORMER_FILE) or local(MERGED_FILE)):
        raise CheckpointError(
            f"{folder} holds a LoRA adapter ({ADAPTER_FILES[0]}) but its {CONFIG_FILE} says has_adapter: false, "
            f"so the base would restore without it; re-export the model (varestorer export RUN OUT)"
        )

    vae_source = vae or local(BASE_VAE_FILE) or config.base_vae
    the_vae = _explain(lambda: load_vae(preset, vae_source), "VAE", "vae", vae_source)
    adapter = config.has_adapter and local("adapter_model.safetensors")
    if local(TRANSFORMER_FILE):  # full fine-tuning / teacher mode: the whole transformer
        transformer = load_transformer(preset, local(TRANSFORMER_FILE), blocks_dtype=dtype)
        adapter = False
    elif local(MERGED_FILE) and base is None:
        transformer = load_transformer(preset, local(MERGED_FILE), blocks_dtype=dtype)
        adapter = False
    else:
        if config.has_adapter and not adapter:
            raise CheckpointError(
                f"{folder} says it has a LoRA adapter but holds no adapter_model.safetensors; "
                f"re-export it with varestorer export"
            )
        if base is None and not local(BASE_TRANSFORMER_FILE) and (config.random_init_base or config.builds_on_release):
            raise CheckpointError(
                f"{folder} lacks {BASE_TRANSFORMER_FILE}: this model's base transformer travels with it (a "
                f"{'random-init' if config.random_init_base else 'release-based'} base) and no other will do; copy "
                f"the folder again (or download it again), or pass the base it was exported with as --base"
            )
        source = base or local(BASE_TRANSFORMER_FILE) or config.base_transformer
        transformer = _explain(
            lambda: load_transformer(preset, source, blocks_dtype=dtype), "base transformer", "base", source
        )
    if adapter:
        try:
            load_adapter(transformer, folder)
        except (RuntimeError, ValueError, KeyError) as exc:  # size mismatch, foreign target modules
            first = str(exc).strip().splitlines()[0][:300]
            if "not found in the base model" in str(exc) or "Target modules" in str(exc):
                raise CheckpointError(
                    f"{folder / 'adapter_config.json'} names layers the {config.base_preset} base transformer "
                    f"does not have ({first}): the file is damaged or belongs to another model; copy the folder "
                    f"again or re-export it (varestorer export RUN OUT)"
                ) from exc
            raise CheckpointError(
                f"the LoRA adapter in {folder} does not fit the {config.base_preset} base "
                f"transformer ({first}): it was trained on another base; pass that base with "
                f"--base (base=... in Python), or re-export the run"
            ) from exc
    encoder = copy.deepcopy(the_vae.encoder)
    if config.has_encoder:
        if not local(ENCODER_FILE):
            raise CheckpointError(
                f"{folder} says it has a fine-tuned encoder but holds no {ENCODER_FILE}; re-export the model"
            )
        load_encoder(encoder, local(ENCODER_FILE))
    text_source = text_encoder or config.text_encoder
    hub_t5 = dtype is not None and str(text_source or preset.text_encoder) != "local"
    text = TextEncoder.from_preset(preset, text_source, **({"dtype": dtype} if hub_t5 else {}))
    restorer = None
    if config.restorer is not None:
        if not local(config.restorer):
            raise CheckpointError(
                f"{folder} names the stage-1 restorer {config.restorer} but does not hold it; re-export the model"
            )
        restorer = load_restorer(local(config.restorer))
    return ExportParts(folder, config, the_vae, encoder, transformer, text, restorer)


def _check_config_fits(folder: Path, config: ExportConfig, preset) -> None:
    """What :meth:`ExportConfig.validate` cannot see alone: the resolution must be the scale
    schedule's last scale through the preset's VAE, and ``transformer_config`` a transformer this
    version builds."""

    where = folder / CONFIG_FILE
    down = vae_downsample(preset.vae["ch_mult"])
    last = tuple(config.schedule[-1][-2:])
    if config.resolution % down or last != (config.resolution // down,) * 2:
        raise ConfigError(
            f"{where}: resolution={config.resolution} does not fit its scale schedule, which ends at "
            f"{last[0]}x{last[1]} tokens ({last[0] * down}x{last[1] * down} px through the {preset.name} VAE); "
            f"re-export the model"
        )
    if config.transformer_config is not None:
        try:
            with torch.device("meta"):
                build_transformer(preset)
        except Exception as exc:  # unknown or ill-typed arguments: TypeError, ValueError, ...
            raise ConfigError(
                f"{where}: transformer_config describes no transformer this varestorer builds "
                f"({type(exc).__name__}: {exc}); re-import or re-export the model"
            ) from None


def _explain(load, what: str, option: str, source):
    """Run ``load``; a missing base checkpoint says how to point at one."""
    try:
        return load()
    except (CheckpointError, ValueError) as exc:
        raise CheckpointError(
            f"cannot load the {what} this model was trained on ({source or 'the official weights'}): "
            f"{exc}\n  Pass it with --{option} PATH_OR_HUB_ID (from_pretrained(..., {option}=...))."
        ) from exc
