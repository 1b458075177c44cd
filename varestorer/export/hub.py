"""Model cards and publishing an export folder to the Hugging Face Hub.

Tokens come from huggingface_hub's own login (``huggingface-cli login``) or ``HF_TOKEN``:
never from a recipe, never printed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..degradations import load_preset
from ..errors import ConfigError, VARestorerError
from ..presets import get_preset
from ..resources import find_resource
from .config import CONFIG_FILE, ExportConfig
from .folder import check_weights
from .licenses import Entry, WeightsLicense, derived_license, license_problems, licenses_of, own_files

CARD_FILE = "README.md"
EVAL_FILE = "evaluation.json"
PIPELINE_TAG = "image-to-image"
REQUIRED_METADATA = ("license", "library_name", "pipeline_tag", "base_model", "tags")

_FILE_NOTES = {
    "adapter_model.safetensors": "LoRA adapter (PEFT format) for the base transformer",
    "adapter_config.json": "PEFT LoRA configuration",
    "encoder.safetensors": "fine-tuned VAE encoder (Infinity VAE key layout)",
    "transformer.safetensors": "fine-tuned transformer (Infinity key layout)",
    "merged_transformer.safetensors": "the base transformer with the LoRA merged in",
    "base_transformer.safetensors": "the base transformer (a run with model.random_init, or an imported release's without its LoRA)",
    "base_vae.safetensors": "the base VAE (a run with model.random_init, or the VAE an imported release runs with)",
    CONFIG_FILE: "base model, resolution, scale schedule, inference form, recipe",
    "restorer.safetensors": "the stage-1 restorer (DiffBIR's SwinIR architecture)",
    EVAL_FILE: "evaluation results",
    CARD_FILE: "this card",
}


#: What the card says of the recipe of a model imported without one (the release publishes none).
_NO_RECIPE = {
    "name": "none published",
    "data": {"dataset": None},
    "loss": {"kl": 0.1, "lpips": 0.25, "mse": 0.5, "cross_entropy": 1.0},
    "student": {"lora_rank": "?", "lora_targets": ["sa.mat_qkv", "sa.proj", "ca.mat_q", "ca.mat_kv", "ca.proj"]},
    "train": {"max_steps": "?", "global_batch_size": "?"},
    "optim": {"lr": "?"},
    "degradation": {"preset": "?"},
}


def _card_recipe(config: ExportConfig, folder: Path) -> dict:
    """The recipe the card describes: the config's (every entry the card names there, or an error
    naming the file), or :data:`_NO_RECIPE` for an imported model."""
    recipe = config.recipe or _NO_RECIPE
    for path in [f"{section}.{key}" for section, keys in _NO_RECIPE.items() if isinstance(keys, dict) for key in keys]:
        section, key = path.split(".")
        if not isinstance(recipe.get(section), dict) or key not in recipe[section]:
            raise ConfigError(
                f"{folder / CONFIG_FILE}: its recipe lacks {path}, which the model card states; re-export the model"
            )
    if "name" not in recipe or not isinstance(recipe["student"]["lora_targets"], list):
        raise ConfigError(f"{folder / CONFIG_FILE}: its recipe is not a recipe varestorer wrote; re-export the model")
    return recipe


def _base_model_id(config: ExportConfig) -> str:
    preset = get_preset(config.base_preset)
    return config.base_transformer or preset.hub_repo or f"varestorer-preset/{preset.name}"


def read_evaluation(folder: str | Path) -> dict:
    """``folder/evaluation.json``, ``{dataset: {metric: number}}`` (empty when there is none); a
    :class:`ConfigError` naming the file when it is not such a table."""
    path = Path(folder) / EVAL_FILE
    if not path.is_file():
        return {}
    fix = "fix it or delete it (varestorer evaluate --model DIR --record DATASET writes it again)"
    try:
        rows = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); {fix}") from None

    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if not isinstance(rows, dict) or not all(
        isinstance(v, dict) and all(number(x) for x in v.values()) for v in rows.values()
    ):
        raise ConfigError(f"{path} is not a table of results ({{dataset: {{metric: number}}}}); {fix}")
    return rows


def _degradation_kind(preset: str) -> str:
    try:
        kind = load_preset(preset).pipeline
    except ConfigError:  # a preset file of the training machine, not here
        return "its own preset file"
    return {"realesrgan": "Real-ESRGAN second order", "first_order": "DiffBIR first order"}[kind]


def _loss_text(recipe: dict, mode: str) -> str:
    """The objective a recipe trained with, its zero-weight terms left out (an export's recipe of
    an older version has no option added since: its default is taken)."""
    loss, student = recipe["loss"], recipe.get("student", {})
    if mode != "distill":
        return f"{loss['cross_entropy']} bitwise cross-entropy"
    lpips = f"LPIPS ({loss.get('lpips_net', 'vgg')}{', inputs rescaled as pyiqa is called' if loss.get('lpips_rescale') else ''})"
    terms = [(loss["kl"], "KL to the teacher"), (loss["lpips"], lpips), (loss["mse"], "MSE")]
    terms.append((loss.get("student_cross_entropy", 0), "bitwise cross-entropy against the HQ tokens"))
    text = " + ".join(f"{w:g} {name}" for w, name in terms if w)
    if student.get("decode") == "gumbel":
        text += f"; the image decoded through a hard Gumbel-softmax straight-through (tau {student.get('gumbel_tau', 0.5):g})"
    return text + ("" if loss["kl"] else "; no teacher")


def _eval_table(folder: Path) -> str | None:
    rows = read_evaluation(folder)  # {"dataset": {"metric": value}}
    if not rows:
        return None
    metrics = sorted({m for v in rows.values() for m in v})
    lines = ["| dataset | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for ds, vals in rows.items():
        lines.append(f"| {ds} | " + " | ".join(f"{vals[m]:.4g}" if m in vals else "" for m in metrics) + " |")
    return "\n".join(lines)


#: How the card's Licences table names each of an export's own files.
_OWN_NOTES = {
    "adapter_model.safetensors": "LoRA adapter",
    "encoder.safetensors": "fine-tuned VAE encoder",
    "transformer.safetensors": "fine-tuned transformer",
    "merged_transformer.safetensors": "the base with the LoRA merged in",
}


def _where(files: tuple[str, ...]) -> str:
    if all(f.startswith("samples/") for f in files):
        return f"yes: `samples/` ({len(files)} images)"
    return "yes: " + ", ".join(f"`{f}`" for f in files)


def license_rows(entries: list[Entry], own: tuple[str, ...], weights: WeightsLicense) -> list[dict]:
    """The card's Licences table (plain text; the template links ``source_url`` and
    ``licence_url``): this model's own weights (``own``: True), then every part it names."""
    rows = []
    if own:
        rows.append(
            dict(
                own=True,
                part="this model",
                source="",
                source_url=None,
                role=", ".join(_OWN_NOTES[f] for f in own if f in _OWN_NOTES),
                licence=weights.text,
                licence_url=None,
                where=_where(own),
            )
        )
    for e in entries:
        hub = re.fullmatch(r"[\w.-]+/[\w.-]+", e.part.source)
        rows.append(
            dict(
                own=False,
                part=e.part.name,
                source=e.part.source,
                source_url=f"https://huggingface.co/{e.part.source}" if hub else None,
                role=e.role,
                licence=e.part.license,
                licence_url=e.part.link,
                where=_where(e.files) if e.files else e.where,
            )
        )
    return rows


def card_license(folder: str | Path, repo_id: str = "USER/MODEL", license: WeightsLicense | None = None):
    """``(licence of the weights, Licences rows)`` of an export folder: ``license``, else the derived one."""
    folder = Path(folder)
    config = ExportConfig.load(folder)
    entries = licenses_of(folder, config)
    weights = license or derived_license(config, entries, repo_id)
    own = own_files({p.name for p in folder.iterdir() if p.is_file()})
    return weights, license_rows(entries, own, weights)


def render_card(
    folder: str | Path,
    repo_id: str = "USER/MODEL",
    template: str = "varestorer",
    license: WeightsLicense | None = None,
):
    """The model card of an export folder (a ``huggingface_hub.ModelCard``); its ``license`` is
    ``license`` (:func:`~varestorer.export.licenses.chosen_license`), by default the licence of
    what the weights were made from (:func:`~varestorer.export.licenses.derived_license`)."""
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    config = ExportConfig.load(folder)
    recipe = _card_recipe(config, folder)  # an imported model has none
    base = _base_model_id(config)
    dataset = recipe["data"]["dataset"] or "skimage"
    weights, licences = card_license(folder, repo_id, license)
    data = ModelCardData(
        **weights.metadata(),
        library_name="varestorer",
        pipeline_tag=PIPELINE_TAG,
        base_model=base,
        tags=["super-resolution", "image-restoration", "visual-autoregressive", "infinity", "lora", "varestorer"],
        datasets=[dataset] if "/" in str(dataset) and not Path(dataset).exists() else None,
    )
    loss_text = _loss_text(recipe, config.mode)
    trainable = (
        "LoRA rank {r} on {t}".format(r=recipe["student"]["lora_rank"], t=", ".join(recipe["student"]["lora_targets"]))
        if config.has_adapter
        else "all transformer weights"
    )
    if config.has_encoder:
        trainable += " + the VAE encoder"
    files = [(p.name, _FILE_NOTES.get(p.name, "")) for p in sorted(folder.iterdir()) if p.is_file()]
    if CARD_FILE not in {n for n, _ in files}:
        files.append((CARD_FILE, _FILE_NOTES[CARD_FILE]))
    samples = sorted(str(p.relative_to(folder)) for p in folder.glob("samples/*.png"))
    return ModelCard.from_template(
        data,
        template_path=str(find_resource("model_cards", template, ".md")),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        base_model=base,
        base_model_name=base,
        base_preset=config.base_preset,
        text_encoder=config.text_encoder or "the preset's T5",
        resolution=config.resolution,
        num_scales=len(config.scale_schedule),
        attention=config.attention,
        has_adapter=config.has_adapter,
        files=files,
        recipe_name=recipe["name"],
        mode=config.mode,
        max_steps=recipe["train"]["max_steps"],
        global_batch_size=recipe["train"]["global_batch_size"],
        lr=recipe["optim"]["lr"],
        loss=loss_text,
        trainable=trainable,
        dataset=dataset,
        degradation=recipe["degradation"]["preset"],
        degradation_kind=_degradation_kind(recipe["degradation"]["preset"]),
        eval_table=_eval_table(folder),
        samples=samples,
        has_encoder=config.has_encoder,
        restorer=config.restorer,
        weights_license=weights.text,
        weights_license_why=weights.why,
        licences=licences,
        imported=config.source.get("release") if config.is_release else None,
        imported_file=config.source.get("checkpoint"),
        imported_rank=config.source.get("lora_rank"),
    )


def validate_card(text: str) -> list[str]:
    """Problems of a model card's metadata, checked locally (empty when it is fine)."""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(text)
    except Exception as exc:
        return [f"the card does not parse: {exc}"]
    meta = card.data.to_dict()
    problems = [f"metadata has no {key!r}" for key in REQUIRED_METADATA if not meta.get(key)]
    if meta.get("pipeline_tag") not in (None, PIPELINE_TAG):
        problems.append(f"pipeline_tag should be {PIPELINE_TAG!r}")
    if not isinstance(meta.get("tags", []), list):
        problems.append("tags must be a list")
    if "{{" in card.text or "{%" in card.text:
        problems.append("the card still holds template placeholders")
    return problems + license_problems(meta)


def _card_license(path: Path) -> dict:
    """The licence metadata of the card at ``path`` (empty when there is none, or it does not parse)."""
    from huggingface_hub import ModelCard

    try:
        meta = ModelCard.load(path).data.to_dict() if path.is_file() else {}
    except Exception:  # a card that does not parse is replaced without a word about its licence
        return {}
    return {k: v for k, v in meta.items() if k.startswith("license")}


def _license_notes(path: Path, before: dict, weights: WeightsLicense) -> list[str]:
    """What the publisher should know of the licence: one not known here, or one the folder's card
    stated that the new card replaces."""
    notes = []
    if weights.id == "unknown":
        notes.append(f"the weights' licence is unknown ({weights.why}): set it with --license ID")
    after = {k: v for k, v in weights.metadata().items() if v}
    if before and before != after:
        was = ", ".join(f"{k}: {v}" for k, v in before.items())
        notes.append(f"{path} said {was}; the card now says license: {weights.id} (pass --license to keep the old one)")
    return notes


def publish(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    dry_run: bool = False,
    commit_message: str = "Upload VARestorer model",
    license: WeightsLicense | None = None,
) -> dict:
    """Write/refresh the card, then create the repo and upload the folder (unless ``dry_run``).
    ``license``: the weights' licence (:func:`~varestorer.export.licenses.chosen_license`); by
    default the licence of what they were made from."""

    folder = Path(folder)
    check_weights(folder)  # a damaged or diverged model is not uploaded
    before = _card_license(folder / CARD_FILE)
    weights, rows = card_license(folder, repo_id, license)
    card = render_card(folder, repo_id, license=weights)
    problems = validate_card(str(card))
    if problems:
        raise VARestorerError("the model card is not valid: " + "; ".join(problems))
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != CARD_FILE)
    files.append(CARD_FILE)
    result = {
        "repo_id": repo_id,
        "private": private,
        "files": sorted(files),
        "bytes": sum((folder / f).stat().st_size for f in files if (folder / f).is_file()),
        "card_metadata": card.data.to_dict(),
        "license": {**{k: v for k, v in weights.metadata().items() if v}, "why": weights.why},
        "licenses": rows,
        "notes": _license_notes(folder / CARD_FILE, before, weights),
    }
    if dry_run:
        result["card"] = str(card)
        return result
    card.save(folder / CARD_FILE)
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message)
    except Exception as exc:
        raise VARestorerError(
            f"uploading to {repo_id} failed ({type(exc).__name__}: {exc}). Log in with `huggingface-cli login` "
            f"or set HF_TOKEN to a token with write access."
        ) from exc
    result["url"] = str(url)
    return result
