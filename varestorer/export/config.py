"""``varestorer_config.json``: what an export's trained parts apply to and how they restore.

One owner for the export's configuration. :class:`ExportConfig` is written from a recipe by the
trainer (:meth:`ExportConfig.from_recipe`), read by the pipeline, the model card and the CLI
(:meth:`ExportConfig.load`), and its defaults live here and nowhere else. A folder written by an
older version is migrated when it is read (:data:`MIGRATIONS`: one function per version, each
filling in what that version did not write with what it meant then).

Adding a field: give it a default here, write it in :meth:`from_recipe`, validate it in
:meth:`validate`, bump :data:`FORMAT_VERSION` and add the migration from the previous version (what
an export without the field restores as); ``tests/test_export_config.py`` loads a folder of every
version.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..outputs import write_text
from ..restorer import RESTORER_FILE
from ..tokenizer.quantizer import LQ_INPUT_FORMS

CONFIG_FILE = "varestorer_config.json"
FORMAT = "varestorer"
#: 1: 2026-11 (fields added without a version bump: see :func:`_from_v1`); 2: every field written;
#: 3: the released VARestorer's inference choices (decode, restorer, resize, tile_weights,
#: transformer_config, source); 4: the colour fix its restorations get by default (``color_fix``) and
#: where it came from (``origin``), both once guessed at read time.
FORMAT_VERSION = 4
#: What an export can hold (a ``tokenizer``-mode run writes a tokenizer export instead).
EXPORT_MODES = ("distill", "teacher", "varsr")
ATTENTION_MODES = ("full", "causal")
#: How bits are read from the logits: the most likely (``argmax``) or drawn from each bit's
#: Bernoulli with Gumbel noise (``gumbel``: the released VARestorer's ``GumbelArgmax``).
DECODINGS = ("argmax", "gumbel")
#: How images are resized to and from the model's resolution: torch bicubic (area when shrinking
#: a lot), or PIL's LANCZOS on 8-bit images (the release's).
RESIZES = ("bicubic", "lanczos")
#: How overlapping tiles are blended: a linear ramp over the overlap, or the release's Gaussian
#: weights (sigma 0.1 tile) over reflect-padded borders.
TILE_WEIGHTS = ("linear", "gaussian")
#: How a restoration's colour is corrected against its input (:mod:`varestorer.inference.color`).
COLOR_FIXES = ("none", "adain", "wavelet")
#: What the toolkit's own models get (the best measured on the small base's held-out photos,
#: docs/evaluation.md); an imported release gets ``none``, as the release restores.
DEFAULT_COLOR_FIX = "wavelet"
#: ``trained``: trained by varestorer from a base; ``release``: the authors' released model as
#: imported (``import-release``); ``release-finetune``: trained from an imported release
#: (``model.init_from``), so its weights build on the release's.
ORIGINS = ("trained", "release", "release-finetune")


@dataclass
class ExportConfig:
    """The configuration of an export folder (``varestorer_config.json``).

    Attributes:
        base_preset: the base model's preset (architecture, tokenizer, sampler settings).
        resolution: the side the model restores at (pixels); ``scale_schedule`` its scales.
        upscale: the super-resolution factor the model was trained for.
        mode: ``distill`` (a one-step student), ``teacher`` (a fine-tuned base) or ``varsr``.
        base_transformer, base_vae, text_encoder: the base's checkpoints (file, folder or Hub id);
            ``None``: the preset's official ones.
        random_init_base: the base had random weights (it then travels with the export).
        attention: the student's attention (``full``: cross-scale; ``causal``: block-causal).
        lq_input: how the student reads the LQ tokens (``MultiScaleTokens.lq_input_sequence``).
        keep_lq_scales: the first N scales of a restoration are the LQ tokens' own.
        use_captions: the model was trained with prompts (without, it is given none).
        has_adapter, has_encoder: the folder holds a LoRA adapter / a fine-tuned LQ encoder.
        recipe: the whole training recipe (``Recipe.to_dict()``), for the card and for the record;
            empty for an imported model.
        decode: ``argmax`` or ``gumbel`` (:data:`DECODINGS`).
        restorer: the stage-1 restorer's file in the folder (DiffBIR's SwinIR), run on the LQ image
            before the tokenizer and the captioner; ``None``: none.
        resize: ``bicubic`` or ``lanczos`` (:data:`RESIZES`).
        tile_weights: ``linear`` or ``gaussian`` (:data:`TILE_WEIGHTS`).
        transformer_config: the transformer's architecture when it is not the preset's (an
            imported checkpoint of another size); ``None``: the preset's.
        source: where an imported model came from (release, files); empty for a trained one.
        color_fix: the colour correction its own restorations (``onestep``, ``varsr``) get unless a
            call asks for another (:data:`COLOR_FIXES`); the baselines never get one.
        origin: ``trained``, ``release`` or ``release-finetune`` (:data:`ORIGINS`).
    """

    base_preset: str
    resolution: int
    scale_schedule: list[list[int]]
    upscale: float = 4.0
    mode: str = "distill"
    base_transformer: str | None = None
    base_vae: str | None = None
    text_encoder: str | None = None
    random_init_base: bool = False
    attention: str = "full"
    lq_input: str = "pyramid"
    keep_lq_scales: int = 0
    use_captions: bool = True
    has_adapter: bool = False
    has_encoder: bool = False
    recipe: dict = field(default_factory=dict)
    decode: str = "argmax"
    restorer: str | None = None
    resize: str = "bicubic"
    tile_weights: str = "linear"
    transformer_config: dict | None = None
    source: dict = field(default_factory=dict)
    color_fix: str = DEFAULT_COLOR_FIX
    origin: str = "trained"

    # ------------------------------------------------------------------ making one
    @classmethod
    def from_recipe(cls, recipe, schedule, *, has_adapter: bool, has_encoder: bool) -> ExportConfig:
        """The configuration of what ``recipe`` trains (``schedule``: its scale schedule)."""
        model, student = recipe.model, recipe.student
        return cls(
            base_preset=model.preset,
            resolution=model.resolution,
            scale_schedule=[list(s) for s in schedule],
            upscale=recipe.degradation.scale,
            mode=recipe.mode,
            base_transformer=model.transformer,
            base_vae=model.vae,
            text_encoder=model.text_encoder,
            random_init_base=model.random_init,
            attention=student.attention,
            lq_input=student.lq_input,
            keep_lq_scales=student.keep_lq_scales,
            use_captions=recipe.data.use_captions,
            has_adapter=has_adapter,
            has_encoder=has_encoder,
            recipe=recipe.to_dict(),
            decode=recipe.inference.decode,
            restorer=RESTORER_FILE if model.restorer else None,
            resize=recipe.inference.resize,
            tile_weights=recipe.inference.tile_weights,
            color_fix=recipe.inference.color_fix,
        ).validate()

    def replace(self, **changes) -> ExportConfig:
        return dataclasses.replace(self, **changes).validate()

    @property
    def schedule(self) -> list[tuple[int, ...]]:
        return [tuple(s) for s in self.scale_schedule]

    @property
    def is_release(self) -> bool:
        """The authors' released model as imported (not a fine-tune of it)."""
        return self.origin == "release"

    @property
    def builds_on_release(self) -> bool:
        """Its weights are the release's or a fine-tune of them (their licence and card apply)."""
        return self.origin != "trained"

    def validate(self, where: str = "the export config") -> ExportConfig:  # noqa: C901
        choices = {
            "mode": (self.mode, EXPORT_MODES),
            "attention": (self.attention, ATTENTION_MODES),
            "lq_input": (self.lq_input, LQ_INPUT_FORMS),
            "decode": (self.decode, DECODINGS),
            "resize": (self.resize, RESIZES),
            "tile_weights": (self.tile_weights, TILE_WEIGHTS),
            "color_fix": (self.color_fix, COLOR_FIXES),
            "origin": (self.origin, ORIGINS),
        }
        for key, (value, valid) in choices.items():
            if value not in valid:
                raise ConfigError(f"{where}: {key}={value!r} is not one of {', '.join(valid)}; re-export the model")
        if not isinstance(self.resolution, int) or isinstance(self.resolution, bool) or self.resolution < 16:
            raise ConfigError(f"{where}: resolution={self.resolution!r} is not a side in pixels; re-export the model")
        if not isinstance(self.upscale, (int, float)) or not math.isfinite(self.upscale) or self.upscale <= 0:
            raise ConfigError(f"{where}: upscale={self.upscale!r} must be a positive number; re-export the model")
        schedule = self.scale_schedule
        if not (isinstance(schedule, list) and schedule and all(_is_scale(s) for s in schedule)):
            raise ConfigError(f"{where}: scale_schedule is not a list of scale sizes; re-export the model")
        if not isinstance(self.keep_lq_scales, int) or not 0 <= self.keep_lq_scales < len(schedule):
            raise ConfigError(
                f"{where}: keep_lq_scales={self.keep_lq_scales!r} must be in [0, {len(schedule) - 1}]; "
                f"re-export the model"
            )
        if self.restorer is not None and (not isinstance(self.restorer, str) or "/" in self.restorer):
            raise ConfigError(f"{where}: restorer={self.restorer!r} must be a file name in the folder; re-export")
        for key in ("random_init_base", "use_captions", "has_adapter", "has_encoder"):
            if not isinstance(getattr(self, key), bool):  # "no" would read as true
                raise ConfigError(f"{where}: {key}={getattr(self, key)!r} must be true or false; re-export the model")
        for key in ("base_preset", "base_transformer", "base_vae", "text_encoder"):
            value = getattr(self, key)
            if not (isinstance(value, str) and value) and not (value is None and key != "base_preset"):
                raise ConfigError(f"{where}: {key}={value!r} must be a name or a path; re-export the model")
        for key in ("transformer_config", "recipe", "source"):
            value = getattr(self, key)
            if not isinstance(value, dict) and not (value is None and key == "transformer_config"):
                raise ConfigError(f"{where}: {key} must be a JSON object, got {value!r:.60}; re-export the model")
        return self

    # ------------------------------------------------------------------ the file
    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CONFIG_FILE
        write_text(path, json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def from_dict(cls, data, where: str = "the export config") -> ExportConfig:
        """An export config from its JSON form, migrated from the version that wrote it."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where} holds a {type(data).__name__}, not an object; re-export the model")
        version = data.get("format_version")
        if data.get("format") != FORMAT or not isinstance(version, int) or version > FORMAT_VERSION:
            raise ConfigError(
                f"{where} is a format this varestorer does not read (format {data.get('format')!r}, "
                f"version {version!r}; this version reads up to {FORMAT_VERSION}): upgrade varestorer"
            )
        if version < 1 or isinstance(version, bool):
            raise ConfigError(
                f"{where}: format_version={version!r} is not a version this format ever had (1 to "
                f"{FORMAT_VERSION}): the file is damaged; re-export the model"
            )
        data = dict(data)
        while version < FORMAT_VERSION:
            data, version = MIGRATIONS[version](data), version + 1
        data.pop("format"), data.pop("format_version", None)
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls) if _required(f) and f.name not in data]
        if missing:
            raise ConfigError(f"{where} lacks {', '.join(missing)}; re-export the model")
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{where} holds fields this varestorer does not know ({', '.join(unknown)}): upgrade varestorer"
            )
        return cls(**data).validate(where)

    @classmethod
    def load(cls, folder: str | Path) -> ExportConfig:
        """The config of the export folder ``folder`` (an error saying what to do if it is none)."""
        path = Path(folder) / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(
                f"{folder} is not a VARestorer export (no {CONFIG_FILE}); make one with: "
                f"varestorer export CHECKPOINT OUT"
            )
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc}); re-export the model") from None
        return cls.from_dict(data, where=str(path))


def _is_scale(s) -> bool:
    return isinstance(s, list) and len(s) in (2, 3) and all(isinstance(v, int) and v > 0 for v in s)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _from_v1(data: dict) -> dict:
    """Version 1 grew without a bump: ``upscale`` (missing: the recipe's degradation scale),
    ``lq_input`` (missing: ``shifted``, the only form then), ``keep_lq_scales`` (missing: 0) came
    later; ``attention`` and ``use_captions`` were always written."""
    recipe = data.get("recipe") or {}
    data.setdefault("upscale", recipe.get("degradation", {}).get("scale", 4))
    data.setdefault("lq_input", "shifted")
    data.setdefault("keep_lq_scales", 0)
    return data


def _from_v2(data: dict) -> dict:
    """Version 2 had none of the release's choices: argmax bits, no restorer, bicubic resizing,
    linear tile ramps, the preset's transformer. Versions 1 and 2 also predate colour correction
    (2026-12-03, 14:47 UTC): they restored without one, which version 4 writes as ``color_fix``
    (set here, since version 3's own migration cannot tell them from version 3)."""
    data.update(decode="argmax", restorer=None, resize="bicubic", tile_weights="linear", transformer_config=None)
    data["color_fix"] = "none"
    data.setdefault("source", {})
    return data


def _from_v3(data: dict) -> dict:
    """Version 3 wrote neither the colour fix nor the origin: both were read from ``source`` (a
    ``release`` key: built on the release; with ``init_from`` too: a fine-tune of it). Its models
    restored with ``wavelet``, an imported release with ``none`` -- except those exported on
    2026-12-03 before 14:47 UTC (the six hours between format 3 and the wavelet default), which
    restored with ``none`` and now need ``--color-fix none`` to restore as they did then."""
    source = data.get("source") or {}
    if not source.get("release"):
        origin = "trained"
    else:
        origin = "release-finetune" if "init_from" in source else "release"
    data["origin"] = origin
    data.setdefault("color_fix", "none" if origin == "release" else DEFAULT_COLOR_FIX)  # set: from version 2
    return data


#: ``MIGRATIONS[v]``: a version-``v`` config (as a dict) -> version ``v + 1``.
MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _from_v1, 2: _from_v2, 3: _from_v3}
