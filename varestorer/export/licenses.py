"""The licences of an export: the one its own weights are released under, and each one of what it
was made from, runs with or was trained on.

:data:`COMPONENTS` is the one table of the parts VARestorer models are made from, each with the
licence its publisher states. :func:`licenses_of` reads an export folder (its
``varestorer_config.json``, its recipe and its files) and lists every part it contains, names or
was trained on (:class:`Entry`); :func:`derived_license` is the licence its own weights get by
default: the one licence of the weights they were trained from (``other`` when those disagree,
``unknown`` when one is not known here). :func:`chosen_license` checks a licence given with
``--license`` against the identifiers the Hugging Face Hub accepts (:data:`HUB_LICENSES`).
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..data.photos import entries as photo_entries
from ..data.samples import SAMPLES
from ..errors import ConfigError
from ..presets import Preset, get_preset
from .config import RESTORER_FILE, ExportConfig
from .folder import ADAPTER_FILES, BASE_TRANSFORMER_FILE, BASE_VAE_FILE, ENCODER_FILE, MERGED_FILE, TRANSFORMER_FILE

#: This toolkit's licence (``setup.cfg``): the one of the weights it trains and ships itself.
PROJECT_LICENSE = "Apache-2.0"
APACHE_URL = "https://www.apache.org/licenses/LICENSE-2.0"
HUB_LICENSES_URL = "https://huggingface.co/docs/hub/repositories-licenses"
#: The ``license:`` identifiers the Hub accepts in a model card (huggingface/hub-docs,
#: docs/hub/repositories-licenses.md at 242f4a1, 2026-08-22); another is refused when pushed.
HUB_LICENSES = (
    "apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 "
    "bigcode-openrail-m afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear "
    "c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 "
    "cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 "
    "cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl "
    "ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl "
    "lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 "
    "odc-by odbl openmdw-1.0 openmdw-1.1 openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl "
    "lgpl-lr deepfloyd-if-license fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 "
    "llama3.3 llama4 grok2-community gemma unknown other"
).split()
#: How the card writes a Hub identifier (its SPDX form where it has one).
_SPDX = {"mit": "MIT", "apache-2.0": "Apache-2.0", "bsd-3-clause": "BSD-3-Clause", "cc0-1.0": "CC0-1.0"}
_NAME = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,63}$")


@dataclass(frozen=True)
class Component:
    """A part models are made from: its name, its licence as its publisher states it (SPDX where
    there is one), the Hub's identifier for that licence (``None``: no single one), the page
    stating it, and where the part comes from."""

    name: str
    license: str
    hub: str | None
    link: str | None
    source: str


COMPONENTS: dict[str, Component] = {
    "infinity": Component(
        "Infinity-2B",
        "MIT",
        "mit",
        "https://github.com/FoundationVision/Infinity/blob/main/LICENSE",
        "FoundationVision/Infinity",
    ),
    "release": Component(
        "VARestorer, the authors' release",
        "MIT",
        "mit",
        "https://github.com/EternalEvan/VARestorer/blob/main/LICENSE",
        "EvanEternal/VARestorer",
    ),
    "flan-t5-xl": Component(
        "FLAN-T5-XL", "Apache-2.0", "apache-2.0", "https://huggingface.co/google/flan-t5-xl", "google/flan-t5-xl"
    ),
    "blip": Component(
        "BLIP image captioning (large)",
        "BSD-3-Clause",
        "bsd-3-clause",
        "https://huggingface.co/Salesforce/blip-image-captioning-large",
        "Salesforce/blip-image-captioning-large",
    ),
    # the Hub repo states no licence; the DiffBIR project that publishes the file is Apache-2.0
    "diffbir-swinir": Component(
        "DiffBIR's SwinIR (`general_swinir_v1.ckpt`)",
        "Apache-2.0",
        "apache-2.0",
        "https://github.com/XPixelGroup/DiffBIR/blob/main/LICENSE",
        "lxq007/DiffBIR",
    ),
    "small-base": Component(
        "VARestorer `small` base",
        PROJECT_LICENSE,
        "apache-2.0",
        APACHE_URL,
        "trained by varestorer, shipped in its package (`varestorer/assets/small/`)",
    ),
    "small-restorer": Component(
        "VARestorer `small` stage-1 restorer",
        PROJECT_LICENSE,
        "apache-2.0",
        APACHE_URL,
        "trained by varestorer, shipped in its package (`varestorer/assets/small/`)",
    ),
    "local-t5": Component(
        "a 2-layer T5 encoder with random weights (seed 0)",
        PROJECT_LICENSE,
        "apache-2.0",
        APACHE_URL,
        "drawn by varestorer's code (`text_encoder: local`)",
    ),
    "random": Component(
        "random weights (`model.random_init`)",
        PROJECT_LICENSE,
        "apache-2.0",
        APACHE_URL,
        "drawn by varestorer's code",
    ),
}

#: scikit-image's sample photos (``data.dataset: skimage``, the cards' samples) and their licences,
#: as ``skimage.data``'s docstrings state them.
SKIMAGE_LICENSES = {
    "astronaut": "public domain",
    "chelsea": "CC0-1.0",
    "coffee": "CC0-1.0",
    "rocket": "public domain",
    "hubble_deep_field": "public domain",
    "immunohistochemistry": "no known copyright restrictions",
    "retina": "CC0-1.0",
    "camera": "CC0-1.0",
    "brick": "CC0-1.0",
    "gravel": "CC0-1.0",
}
SKIMAGE_URL = "https://scikit-image.org/docs/stable/api/skimage.data.html"
PHOTOS_NOTE = "`varestorer/assets/photos/` (each photo's author and licence in its `photos.json`)"


@dataclass(frozen=True)
class Entry:
    """One row of a card's licences: what ``part`` is in the model (``role``), its licence, and
    where it is (``files``: the files of the repo holding it; else ``where``: how the model gets it)."""

    role: str
    part: Component
    files: tuple[str, ...] = ()
    where: str = ""


@dataclass(frozen=True)
class WeightsLicense:
    """The licence of an export's own weights: the card's ``license`` (a Hub identifier), with
    ``name`` and ``link`` when it is ``other``, and ``why`` it is that one."""

    id: str
    why: str
    name: str | None = None
    link: str | None = None

    @property
    def text(self) -> str:
        return f"{self.name} (`other`, {self.link})" if self.id == "other" else _SPDX.get(self.id, self.id)

    def metadata(self) -> dict:
        return {"license": self.id, "license_name": self.name, "license_link": self.link}


def _user(value: str, what: str) -> Component:
    return Component(f"`{value}`", f"unknown here: the licence {what} came with", "unknown", None, "set by the user")


def _summary(licences: list[str]) -> str:
    """``"GPL-2+ (10), CC0-1.0 (2)"``: each licence with its number of photos, the most common first."""
    return ", ".join(f"{name} ({n})" for name, n in Counter(licences).most_common())


def _photo_set(name: str, licences: list[str], link: str | None, source: str) -> Component:
    return Component(name, _summary(licences), None, link, source)


def _official(value: str | None, preset: Preset, official_file: str | None, what: str) -> Component:
    """The component a base checkpoint names: the preset's own (shipped or on the Hub), Infinity's by
    its Hub repo or file name, or a checkpoint of the user's."""
    if value is None:
        if preset.bundled:
            return COMPONENTS["small-base"]
        if preset.hub_repo == COMPONENTS["infinity"].source:
            return COMPONENTS["infinity"]
        return _user(f"the {preset.name} preset's {what}", "it")
    if value == COMPONENTS["infinity"].source or (official_file and Path(value).name == official_file):
        return COMPONENTS["infinity"]
    return _user(value, "this checkpoint")


def _where(part: Component) -> str:
    """How a model whose folder does not hold ``part`` gets it."""
    if part in (COMPONENTS["infinity"], COMPONENTS["flan-t5-xl"]):
        return f"no: downloaded from `{part.source}` when the model loads"
    if part in (COMPONENTS["small-base"], COMPONENTS["small-restorer"]):
        return "no: shipped inside the varestorer package"
    if part == COMPONENTS["local-t5"]:
        return "no: drawn by varestorer when the model loads"
    return "no: loaded from the user's copy"


def _base_entries(config: ExportConfig, preset: Preset, files: set[str]) -> list[Entry]:
    """The base transformer and the VAE the model applies to."""
    release = config.builds_on_release
    if release:
        transformer = COMPONENTS["release"]
    elif config.random_init_base:
        transformer = COMPONENTS["random"]
    else:
        transformer = _official(config.base_transformer, preset, preset.transformer_file, "transformer")
    if release:
        vae = COMPONENTS["infinity"]  # the public VAE the release encodes and decodes with
    elif config.random_init_base and config.base_vae is None:
        vae = COMPONENTS["random"]
    else:
        vae = _official(config.base_vae, preset, preset.vae_file, "VAE")
    rows = []
    for role, part, name in (
        ("base transformer (this model's weights build on it)", transformer, BASE_TRANSFORMER_FILE),
        ("VAE (tokenizer and decoder)", vae, BASE_VAE_FILE),
    ):
        rows.append(Entry(role, part, (name,)) if name in files else Entry(role, part, where=_where(part)))
    return rows


def _text_entries(config: ExportConfig, preset: Preset) -> list[Entry]:
    """The text encoder (always loaded: a model without prompts encodes empty ones) and BLIP."""
    name = config.text_encoder or preset.text_encoder
    if name == "local":  # the small base's shipped weights, or random ones (tiny)
        part = COMPONENTS["small-base" if preset.bundled else "local-t5"]
    elif name == COMPONENTS["flan-t5-xl"].source or Path(name).name == "flan-t5-xl":
        part = COMPONENTS["flan-t5-xl"]
    else:
        part = _user(name, "this encoder")
    rows = [Entry("text encoder (reads the prompt)", part, where=_where(part))]
    if config.use_captions:
        rows.append(
            Entry(
                "captioner (writes the prompt when none is given)",
                COMPONENTS["blip"],
                where="no: downloaded when `varestorer restore` captions an image, as it does by default",
            )
        )
    return rows


def _restorer_entry(config: ExportConfig, files: set[str]) -> list[Entry]:
    if config.restorer is None or RESTORER_FILE not in files:
        return []
    named = ((config.recipe.get("model") or {}).get("restorer")) if config.recipe else None
    if config.builds_on_release or (named and Path(str(named)).name == "general_swinir_v1.ckpt"):
        part = COMPONENTS["diffbir-swinir"]
    elif named == "preset" and get_preset(config.base_preset).bundled:
        part = COMPONENTS["small-restorer"]
    else:
        part = _user(str(named or config.restorer), "this restorer")
    return [Entry("stage-1 restorer (runs before the encoder)", part, (RESTORER_FILE,))]


def _data_entries(config: ExportConfig, samples: list[str]) -> list[Entry]:
    rows = []
    if config.is_release:
        part = Component("LSDIR (the paper's training data)", "not stated by the release", None, None, "")
        rows.append(Entry("training photos", part, where="no: trained on (the release publishes no recipe)"))
    else:
        dataset = (config.recipe.get("data") or {}).get("dataset")
        if dataset in (None, "skimage"):
            licences = [SKIMAGE_LICENSES[n] for n in SAMPLES]
            part = _photo_set("scikit-image's sample photos", licences, SKIMAGE_URL, "`skimage.data`")
        elif dataset == "photos":
            licences = [e["licence"] for e in photo_entries("train")]
            part = _photo_set("the photos shipped with varestorer (training split)", licences, None, PHOTOS_NOTE)
        else:
            part = _user(str(dataset), "each photo")
        rows.append(Entry("training photos", part, where="no: trained on"))
    if samples:
        licences = [SKIMAGE_LICENSES.get(Path(s).stem, "unknown") for s in samples]
        part = _photo_set("scikit-image's sample photos, restored", licences, SKIMAGE_URL, "`skimage.data`")
        rows.append(Entry("sample comparisons (LQ, restored, HQ)", part, tuple(samples)))
    return rows


def own_files(files: set[str]) -> tuple[str, ...]:
    """The files of an export that are its own weights (trained, or the release's converted)."""
    own = (*ADAPTER_FILES, ENCODER_FILE, TRANSFORMER_FILE, MERGED_FILE)
    return tuple(n for n in own if n in files)


def _files(folder: Path) -> tuple[set[str], list[str]]:
    files = {p.name for p in folder.iterdir() if p.is_file()}
    return files, sorted(str(p.relative_to(folder)) for p in folder.glob("samples/*.png"))


def licenses_of(folder: str | Path, config: ExportConfig | None = None) -> list[Entry]:
    """Every part the export ``folder`` contains, names or was trained on, with its licence and
    where it is: its base transformer and VAE, text encoder, captioner, stage-1 restorer, training
    photos and sample images (its own weights are :func:`own_files`, their licence
    :func:`derived_license` or the publisher's)."""
    folder = Path(folder)
    config = config or ExportConfig.load(folder)
    preset = get_preset(config.base_preset)
    files, samples = _files(folder)
    return [
        *_base_entries(config, preset, files),
        *_text_entries(config, preset),
        *_restorer_entry(config, files),
        *_data_entries(config, samples),
    ]


def derived_license(config: ExportConfig, entries: list[Entry], repo_id: str = "USER/MODEL") -> WeightsLicense:
    """The licence of an export's own weights by default: the licence of the weights they were
    trained from (the base transformer; the VAE too when the export holds a fine-tuned encoder).
    One licence: that one; several: ``other``, its link the card's Licences section; one not known
    here: ``unknown`` (publish with ``--license``)."""
    roles = ("base transformer",) + (("VAE",) if config.has_encoder else ())
    parts = list(dict.fromkeys(e.part for e in entries if e.role.startswith(roles)))
    names = " and ".join(p.name for p in parts)
    if any(p.hub in (None, "unknown") for p in parts):
        return WeightsLicense("unknown", f"made from {names}, whose licence is not known here: publish with --license")
    ids = sorted({p.hub for p in parts})
    if len(ids) == 1:
        return WeightsLicense(ids[0], f"the licence of {names}, which they were made from")
    return WeightsLicense(
        "other",
        f"made from {names}, under {' and '.join(_SPDX.get(i, i) for i in ids)}",
        name="-and-".join(ids),
        link=f"https://huggingface.co/{repo_id}/blob/main/README.md#licences",
    )


def chosen_license(
    value: str, name: str | None = None, link: str | None = None, folder: str | Path | None = None
) -> WeightsLicense:
    """The licence ``--license VALUE`` (``--license-name``, ``--license-link`` with ``other``) sets,
    or a :class:`ConfigError` saying what the Hub accepts. A link that is not a URL must be a file
    of ``folder`` (``None``: a folder not written yet, not checked)."""
    lid = value.strip().lower()
    if lid not in HUB_LICENSES:
        close = difflib.get_close_matches(lid.replace(" ", "-"), HUB_LICENSES, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(
            f"--license {value!r} is not a licence identifier the Hugging Face Hub accepts{hint}: use one of "
            f"its identifiers (apache-2.0, mit, bsd-3-clause, cc-by-4.0, ...: {HUB_LICENSES_URL}), or "
            f"--license other --license-name NAME --license-link URL for another licence"
        )
    if lid != "other":
        if name or link:
            raise ConfigError("--license-name and --license-link go with --license other only; drop them")
        return WeightsLicense(lid, "set by the publisher (--license)")
    if not name or not _NAME.match(name):
        raise ConfigError(
            f"--license other needs --license-name: an identifier of the licence in lower case, such as "
            f"my-license-1.0 (got {name!r})"
        )
    if not link:
        raise ConfigError("--license other needs --license-link: a URL of the licence's text, or LICENSE (a file)")
    local = ".." not in Path(link).parts and (folder is None or (Path(folder) / link).is_file())  # None: not yet
    if not re.match(r"^https?://\S+$", link) and not local:
        raise ConfigError(
            f"--license-link {link!r} is neither a URL nor a file in the folder: put the licence's text in "
            f"{Path(folder or '.') / 'LICENSE'} (it is uploaded with the folder) or pass its URL"
        )
    return WeightsLicense("other", "set by the publisher (--license)", name=name, link=link)


def license_problems(meta: dict) -> list[str]:
    """What the Hub would refuse in a card's licence metadata (empty when it is fine)."""
    lid = meta.get("license")
    if lid is None:
        return []  # the card's other checks say it is missing
    if lid not in HUB_LICENSES:
        return [f"license {lid!r} is not one of the Hub's identifiers ({HUB_LICENSES_URL})"]
    if lid == "other" and not (meta.get("license_name") and meta.get("license_link")):
        return ["license 'other' needs license_name and license_link"]
    return []
