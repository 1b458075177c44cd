"""Licences: the model card and ``publish`` state the licence of the weights an export holds (by
default the one of what they were made from) and every part's own (Infinity, T5, BLIP, SwinIR, the
training photos); ``--license`` sets another, and one the Hub would refuse is refused."""

import configparser
import json
import shutil
from pathlib import Path

import pytest
from conftest import exported_student
from huggingface_hub import ModelCard

from varestorer.cli import main
from varestorer.data.photos import manifest
from varestorer.data.samples import SAMPLES
from varestorer.export import BASE_TRANSFORMER_FILE, BASE_VAE_FILE, RESTORER_FILE, ExportConfig, import_release
from varestorer.export.hub import REQUIRED_METADATA, render_card, validate_card
from varestorer.export.licenses import (
    HUB_LICENSES,
    PROJECT_LICENSE,
    SKIMAGE_LICENSES,
    derived_license,
    license_problems,
    licenses_of,
)

ROOT = Path(__file__).resolve().parents[1]
BASE = "base transformer (this model's weights build on it)"  # the row of the base


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny exported student: random base weights (they travel in it), the local T5, skimage's photos."""
    return exported_student(tmp_path_factory.mktemp("tiny"))[1]


def _variant(tiny: Path, folder: Path, drop=(), add=(), **changes) -> Path:
    """A copy of ``tiny`` without the files ``drop``, with empty files ``add`` and its config changed
    (``recipe_model``/``recipe_data``: entries of the recipe's sections): what another base, restorer
    or dataset would have written; cards and licences read names and the config, not the weights."""
    shutil.copytree(tiny, folder)
    for name in drop:
        (folder / name).unlink()
    for name in add:
        (folder / name).write_bytes(b"")
    config = ExportConfig.load(folder)
    recipe = json.loads(json.dumps(config.recipe))
    recipe["model"].update(changes.pop("recipe_model", {}))
    recipe["data"].update(changes.pop("recipe_data", {}))
    config.replace(recipe=recipe, **changes).save(folder)
    return folder


@pytest.fixture
def infinity(tiny, tmp_path) -> Path:
    """The tiny export as an Infinity-2B one would be: the base downloaded when it loads, flan-t5-xl."""
    return _variant(
        tiny,
        tmp_path / "infinity",
        drop=(BASE_TRANSFORMER_FILE, BASE_VAE_FILE),
        base_preset="infinity-2b",
        random_init_base=False,
        text_encoder=None,
    )


def _rows(folder: Path) -> dict[str, tuple[str, str, str]]:
    """The card's Licences table: role -> (part, licence, in this repository)."""
    text = str(render_card(folder, "me/model"))
    table = text.split("## Licences", 1)[1].split("\n## ", 1)[0]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| ")]
    return {role: (part, licence, where) for part, role, licence, where in cells[1:]}


def test_the_card_of_a_tiny_export_lists_each_part_with_its_licence(tiny):
    card = render_card(tiny, "me/tiny")
    assert validate_card(str(card)) == []
    assert card.data.license == "apache-2.0"  # random weights drawn by varestorer: the toolkit's licence
    rows = _rows(tiny)
    own = rows["LoRA adapter, fine-tuned VAE encoder"]
    assert own[1] == "**Apache-2.0**" and "`adapter_model.safetensors`" in own[2] and "`encoder.safetensors`" in own[2]
    part, licence, where = rows[BASE]
    assert "random weights" in part and "Apache-2.0" in licence and where == f"yes: `{BASE_TRANSFORMER_FILE}`"
    assert "T5" in rows["text encoder (reads the prompt)"][0]
    part, licence, where = rows["captioner (writes the prompt when none is given)"]
    assert "Salesforce/blip-image-captioning-large" in part and "[BSD-3-Clause]" in licence and where.startswith("no")
    part, licence, where = rows["training photos"]
    assert "scikit-image" in part and "CC0-1.0 (6), public domain (3)" in licence and where == "no: trained on"


def test_an_infinity_based_export_is_mit_and_names_what_it_downloads(infinity):
    card = render_card(infinity, "me/model")
    assert card.data.license == "mit" and validate_card(str(card)) == []
    rows = _rows(infinity)
    part, licence, where = rows[BASE]
    assert "Infinity-2B" in part and "[MIT]" in licence and "downloaded from `FoundationVision/Infinity`" in where
    part, licence, where = rows["text encoder (reads the prompt)"]
    assert "google/flan-t5-xl" in part and "[Apache-2.0]" in licence and "downloaded" in where
    assert "MIT" in card.text.split("## Licences", 1)[1].split("\n", 3)[2]  # the sentence above the table


def test_a_small_based_export_carries_the_toolkits_licence_from_its_shipped_base(tiny, tmp_path):
    small = _variant(
        tiny, tmp_path / "small", drop=(BASE_TRANSFORMER_FILE, BASE_VAE_FILE), add=(RESTORER_FILE,),
        base_preset="small", random_init_base=False, restorer=RESTORER_FILE,
        recipe_model={"restorer": "preset"}, recipe_data={"dataset": "photos"},
    )  # fmt: skip
    assert render_card(small).data.license == "apache-2.0"
    rows = _rows(small)
    part, licence, where = rows[BASE]
    assert "`small` base" in part and "[Apache-2.0]" in licence and where == "no: shipped inside the varestorer package"
    assert "`small` base" in rows["text encoder (reads the prompt)"][0]  # its T5 weights ship with it
    assert "`small` stage-1 restorer" in rows["stage-1 restorer (runs before the encoder)"][0]


def test_a_stage1_restorer_keeps_its_own_licence_and_the_weights_theirs(tiny, infinity, tmp_path):
    swinir = _variant(
        infinity, tmp_path / "swinir", add=(RESTORER_FILE,), restorer=RESTORER_FILE,
        recipe_model={"restorer": "/weights/general_swinir_v1.ckpt"},
    )  # fmt: skip
    assert render_card(swinir).data.license == "mit"
    part, licence, where = _rows(swinir)["stage-1 restorer (runs before the encoder)"]
    assert "DiffBIR" in part and "[Apache-2.0]" in licence and where == f"yes: `{RESTORER_FILE}`"
    theirs = _variant(
        infinity, tmp_path / "theirs", add=(RESTORER_FILE,), restorer=RESTORER_FILE,
        recipe_model={"restorer": "/weights/my_restorer.safetensors"},
    )  # fmt: skip
    part, licence, _ = _rows(theirs)["stage-1 restorer (runs before the encoder)"]
    assert "my_restorer" in part and licence.startswith("unknown")


def test_the_training_photos_are_the_recipes_dataset_with_their_licences(infinity, tmp_path):
    photos = _variant(infinity, tmp_path / "photos", recipe_data={"dataset": "photos"})
    part, licence, _ = _rows(photos)["training photos"]
    counts = {}
    for e in manifest():
        counts[e["licence"]] = counts.get(e["licence"], 0) + (e["split"] == "train")
    assert "shipped with varestorer" in part and f"GPL-2+ ({counts['GPL-2+']})" in licence
    assert f"CC-BY-SA-4.0 ({counts['CC-BY-SA-4.0']})" in licence
    theirs = _variant(infinity, tmp_path / "theirs", recipe_data={"dataset": "/data/my-photos"})
    part, licence, _ = _rows(theirs)["training photos"]
    assert part.startswith("`/data/my-photos`") and licence.startswith("unknown")
    assert render_card(theirs).data.license == "mit"  # the photos are listed, not the weights' licence


def test_a_base_of_the_users_makes_the_licence_unknown_and_publish_says_to_set_it(infinity, tmp_path, capsys):
    mine = _variant(infinity, tmp_path / "mine", base_transformer="/ckpt/my_base.pth")
    assert derived_license(ExportConfig.load(mine), licenses_of(mine)).id == "unknown"
    official = _variant(infinity, tmp_path / "official", base_transformer="/ckpt/infinity_2b_reg.pth")
    assert derived_license(ExportConfig.load(official), licenses_of(official)).id == "mit"  # Infinity's file
    assert main(["publish", str(mine), "--repo-id", "me/model", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "licence of the weights: unknown" in out and "set it with --license ID" in out


def test_license_overrides_the_card_license(infinity, tmp_path, capsys):
    assert main(["publish", str(infinity), "--repo-id", "me/model", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["card_metadata"]["license"] == "mit"
    argv = ["publish", str(infinity), "--repo-id", "me/model", "--dry-run", "--json", "--license", "Apache-2.0"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["card_metadata"]["license"] == "apache-2.0"
    assert result["license"] == {"license": "apache-2.0", "why": "set by the publisher (--license)"}
    (infinity / "LICENSE").write_text("My terms.\n")
    argv[-2:] = ["--license", "other", "--license-name", "my-license-1.0", "--license-link", "LICENSE"]
    assert main(argv) == 0
    meta = json.loads(capsys.readouterr().out)["card_metadata"]
    assert (meta["license"], meta["license_name"], meta["license_link"]) == ("other", "my-license-1.0", "LICENSE")


def test_export_writes_the_license_it_is_given_and_publish_says_when_it_replaces_it(infinity, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", str(infinity), str(out), "--samples", "0", "--license", "cc-by-nc-4.0"]) == 0
    assert ModelCard.load(out / "README.md").data.license == "cc-by-nc-4.0"
    assert "--license cc-by-nc-4.0" in capsys.readouterr().out  # the publish command it prints
    assert main(["publish", str(out), "--repo-id", "me/model", "--dry-run"]) == 0
    assert "said license: cc-by-nc-4.0; the card now says license: mit" in capsys.readouterr().out


@pytest.mark.parametrize(
    "options, said",
    [
        (["--license", "Apache 2.0"], "did you mean apache-2.0?"),
        (["--license", "GPL-2+"], "is not a licence identifier the Hugging Face Hub accepts"),
        (["--license", "other"], "--license other needs --license-name"),
        (["--license", "other", "--license-name", "mine"], "needs --license-link"),
        (["--license", "other", "--license-name", "mine", "--license-link", "NOTICE"], "neither a URL nor a file"),
        (["--license", "mit", "--license-name", "mine"], "go with --license other only"),
        (["--license-link", "https://example.org/terms"], "go with --license other"),
    ],
)
def test_a_license_the_hub_would_refuse_is_refused_saying_what_it_accepts(tiny, capsys, options, said):
    code = main(["publish", str(tiny), "--repo-id", "me/model", "--dry-run", *options])
    err = capsys.readouterr().err
    assert code == 2 and "varestorer publish: error: " in err and said in err and "Traceback" not in err


def test_the_release_import_card_says_mit_and_swinir_apache(tmp_path):
    import torch
    from test_release import RANK, _release_state

    from varestorer.export import save_weights
    from varestorer.restorer import SwinIR
    from varestorer.restorer.swinir import TINY_CONFIG
    from varestorer.tokenizer.loading import build_vae

    torch.save(_release_state(), tmp_path / "varestorer.pth")
    save_weights(build_vae("tiny").state_dict(), tmp_path / "vae.safetensors")
    swinir = SwinIR(**TINY_CONFIG).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in swinir.items()}}, tmp_path / "swinir.ckpt")
    out = import_release(
        tmp_path / "varestorer.pth", tmp_path / "imported", vae=tmp_path / "vae.safetensors",
        restorer=tmp_path / "swinir.ckpt", preset="tiny", rank=RANK,
    )  # fmt: skip
    card = render_card(out, "me/release")
    assert card.data.license == "mit" and validate_card(str(card)) == []
    rows = _rows(out)
    part, licence, where = rows[BASE]
    assert "the authors' release" in part and "[MIT]" in licence and BASE_TRANSFORMER_FILE in where
    assert rows["LoRA adapter"][1] == "**MIT**"
    part, licence, where = rows["stage-1 restorer (runs before the encoder)"]
    assert "DiffBIR" in part and "[Apache-2.0]" in licence and RESTORER_FILE in where
    assert rows["training photos"][1] == "not stated by the release"


def test_a_fine_tune_of_the_release_describes_its_own_training(tiny, tmp_path):
    source = {"init_from": "models/release", "release": "EternalEvan/VARestorer", "lora_rank": 4}
    tuned = _variant(tiny, tmp_path / "tuned", source=source, origin="release-finetune")
    text = str(render_card(tuned))
    assert "Imported from the authors' release" not in text and "- Recipe: `tiny`" in text
    assert "the authors' release" in _rows(tuned)[BASE][0]


def test_every_photo_a_model_trains_on_or_shows_has_its_licence():
    assert set(SKIMAGE_LICENSES) == set(SAMPLES)
    assert all(e["licence"] for e in manifest())


def test_the_toolkits_own_weights_carry_the_packages_licence():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["license"] == PROJECT_LICENSE


@pytest.mark.parametrize("name", ["varestorer-small-base", "varestorer-small-restorer"])
def test_the_hand_written_cards_state_a_licence_the_hub_accepts_and_list_each_part(name):
    card = ModelCard.load(ROOT / "model_cards" / f"{name}.md")
    assert card.data.license == PROJECT_LICENSE.lower() and license_problems(card.data.to_dict()) == []
    assert "## Licences" in card.text and "| part | what it is here | licence | in this repository |" in card.text


def test_the_card_checks_refuse_a_licence_the_hub_does_not_know():
    text = "---\nlicense: GPL-2+\nlibrary_name: varestorer\npipeline_tag: image-to-image\nbase_model: a/b\ntags:\n- x\n---\n\nA card.\n"
    assert any("not one of the Hub's identifiers" in p for p in validate_card(text))
    other = text.replace("GPL-2+", "other")
    assert validate_card(other) == ["license 'other' needs license_name and license_link"]
    assert "license" in REQUIRED_METADATA and {"mit", "apache-2.0", "bsd-3-clause", "other"} <= set(HUB_LICENSES)
