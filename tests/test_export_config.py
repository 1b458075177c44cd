"""The export config has one owner (ExportConfig): written from the recipe, read everywhere, every
version written so far migrated when it is read, and a damaged one refused with the field named."""

import dataclasses
import json

import pytest
import torch
from conftest import exported_student

from varestorer.errors import ConfigError
from varestorer.export import CONFIG_FILE, FORMAT_VERSION, ExportConfig
from varestorer.inference import VARestorerPipeline

#: The keys each layout of version 1 wrote (all said format_version 1): 2026-11-22 (94121f5),
#: + upscale (8607df7), + lq_input (ae8702e), + keep_lq_scales (e384ef8, the last version 1).
V1_LAYOUTS = {
    "2026-11-22": (
        "format mode base_preset base_transformer base_vae text_encoder random_init_base resolution "
        "scale_schedule attention use_captions has_adapter has_encoder recipe"
    ).split(),
    "2026-11-23": ["upscale"],
    "2026-11-24": ["lq_input"],
    "2026-12-01": ["keep_lq_scales"],
}
#: Version 2 (2026-12-03): every field of version 1's last layout, written explicitly.
V2_KEYS = [*(k for keys in V1_LAYOUTS.values() for k in keys), "format_version"]


def _v1_layouts() -> dict[str, list[str]]:
    out, keys = {}, ["format_version"]
    for date, added in V1_LAYOUTS.items():
        keys = keys + added
        out[date] = keys
    return out


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A tiny student (LoRA away from zero, shifted LQ input: what version 1 without lq_input meant)."""
    return exported_student(tmp_path_factory.mktemp("export"), "student.lq_input=shifted", "degradation.scale=2")[1]


def _restore(folder, **call):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    pipe = VARestorerPipeline.from_pretrained(folder, merge_lora=False)
    return pipe(list(x), prompt="a photo", output_type="pt", **call).images[0]


def test_the_trainer_writes_every_field_of_the_current_version_from_the_recipe(export):
    data = json.loads((export / CONFIG_FILE).read_text())
    fields = {f.name for f in dataclasses.fields(ExportConfig)}
    assert set(data) == fields | {"format", "format_version"}
    assert data["format_version"] == FORMAT_VERSION == 4
    config = ExportConfig.load(export)
    assert (config.lq_input, config.upscale, config.has_adapter, config.base_preset) == ("shifted", 2, True, "tiny")
    assert config.recipe["student"]["lq_input"] == "shifted"


def test_a_saved_config_loads_back_equal(tmp_path, export):
    config = ExportConfig.load(export)
    config.save(tmp_path)
    assert ExportConfig.load(tmp_path) == config


@pytest.mark.parametrize("date", list(V1_LAYOUTS))
def test_a_folder_of_every_version_written_so_far_restores_as_it_meant(tmp_path, export, date):
    """Each layout of version 1 loads, with what was missing read as it was meant then: the same
    restoration as the current folder (lq_input missing: shifted; upscale: the recipe's scale)."""
    current = json.loads((export / CONFIG_FILE).read_text())
    old = tmp_path / date
    old.mkdir()
    for f in export.iterdir():
        if f.name != CONFIG_FILE:
            (old / f.name).write_bytes(f.read_bytes())
    keys = _v1_layouts()[date]
    (old / CONFIG_FILE).write_text(json.dumps({k: current[k] for k in keys} | {"format_version": 1}))
    migrated = ExportConfig.load(old)
    assert migrated == ExportConfig.load(export).replace(color_fix="none")  # colour correction came later
    assert torch.equal(_restore(old), _restore(export, color_fix="none"))


def test_a_version_2_folder_restores_as_it_did(tmp_path, export):
    """Version 2 knew none of the release's choices: argmax bits, no restorer, bicubic, linear tiles."""
    current = json.loads((export / CONFIG_FILE).read_text())
    old = tmp_path / "v2"
    old.mkdir()
    for f in export.iterdir():
        if f.name != CONFIG_FILE:
            (old / f.name).write_bytes(f.read_bytes())
    (old / CONFIG_FILE).write_text(json.dumps({k: current[k] for k in V2_KEYS} | {"format_version": 2}))
    migrated = ExportConfig.load(old)
    assert migrated == ExportConfig.load(export).replace(color_fix="none")
    assert (migrated.decode, migrated.restorer, migrated.resize, migrated.tile_weights, migrated.color_fix) == (
        "argmax",
        None,
        "bicubic",
        "linear",
        "none",
    )
    assert torch.equal(_restore(old), _restore(export, color_fix="none"))


@pytest.mark.parametrize(
    "source, origin, color_fix",
    [
        ({}, "trained", "wavelet"),
        ({"release": "EternalEvan/VARestorer", "checkpoint": "varestorer.pth"}, "release", "none"),
        ({"release": "EternalEvan/VARestorer", "init_from": "models/release"}, "release-finetune", "wavelet"),
    ],
)
def test_a_version_3_folder_gets_the_origin_and_colour_fix_that_its_source_meant(export, source, origin, color_fix):
    """Version 3 guessed both from ``source`` when it was read; version 4 writes them."""
    data = json.loads((export / CONFIG_FILE).read_text())
    data = {k: v for k, v in data.items() if k not in ("color_fix", "origin")} | {"format_version": 3, "source": source}
    config = ExportConfig.from_dict(data)
    assert (config.origin, config.color_fix) == (origin, color_fix)
    assert config.is_release == (origin == "release") and config.builds_on_release == (origin != "trained")


def test_the_colour_fix_a_recipe_names_is_what_its_export_restores_with(tmp_path):
    recipe_export = exported_student(tmp_path, "inference.color_fix=adain")[1]
    assert ExportConfig.load(recipe_export).color_fix == "adain"
    assert torch.equal(_restore(recipe_export), _restore(recipe_export, color_fix="adain"))
    assert not torch.equal(_restore(recipe_export), _restore(recipe_export, color_fix="none"))


@pytest.mark.parametrize("version", range(1, FORMAT_VERSION + 1))
def test_a_stored_export_of_every_format_version_restores_to_the_stored_bytes(tmp_path, version):
    """``tests/golden/exports``: one tiny export with its config as each version wrote it. What it
    restores to is pinned by hash: a change of any default that alters an existing export's output
    fails here (versions 1-2 restore without colour fix, 3-4 with wavelet, as when they were made).
    Regenerate (python tests/golden/make_exports.py) only for a change meant to do that."""
    from golden.make_exports import EXPORTS, assemble, restored_hash

    expected = json.loads((EXPORTS / "expected.json").read_text())
    assert restored_hash(assemble(version, tmp_path / f"v{version}")) == expected[f"v{version}"]
    assert expected["v1"] == expected["v2"] != expected["v3"] == expected["v4"]  # the colour fix, and only it


def test_a_missing_lq_input_in_version_1_means_shifted_not_the_recipes_default(tmp_path):
    data = {
        "format": "varestorer",
        "format_version": 1,
        "base_preset": "tiny",
        "resolution": 64,
        "scale_schedule": [[1, 1], [2, 2]],
        "recipe": {"degradation": {"scale": 4}},
    }
    config = ExportConfig.from_dict(data)
    assert (config.lq_input, config.upscale, config.keep_lq_scales) == ("shifted", 4, 0)
    with pytest.raises(ConfigError, match="lacks base_preset"):  # version 2 writes everything
        ExportConfig.from_dict({k: v for k, v in data.items() if k != "base_preset"} | {"format_version": 2})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"attention": "sparse"}, "attention='sparse' is not one of full, causal"),
        ({"lq_input": "bogus"}, "lq_input='bogus' is not one of"),
        ({"mode": "tokenizer"}, "mode='tokenizer' is not one of distill, teacher, varsr"),
        ({"color_fix": "histogram"}, "color_fix='histogram' is not one of none, adain, wavelet"),
        ({"origin": "mine"}, "origin='mine' is not one of trained, release, release-finetune"),
        ({"resolution": 0}, "resolution=0 is not a side in pixels"),
        ({"upscale": float("nan")}, "upscale=nan must be a positive number"),
        ({"upscale": -1}, "upscale=-1 must be a positive number"),
        ({"keep_lq_scales": 99}, r"keep_lq_scales=99 must be in \[0, 4\]"),
        ({"scale_schedule": "1x1"}, "scale_schedule is not a list of scale sizes"),
        ({"format_version": 99}, "upgrade varestorer"),
        ({"format_version": 0}, "format_version=0 is not a version this format ever had"),
        ({"format_version": -5}, "format_version=-5 is not a version this format ever had"),
        ({"extra_knob": 1}, "fields this varestorer does not know \\(extra_knob\\)"),
    ],
)
def test_a_damaged_config_is_refused_with_the_field_named(tmp_path, export, change, message):
    data = json.loads((export / CONFIG_FILE).read_text()) | change
    (tmp_path / CONFIG_FILE).write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message):
        ExportConfig.load(tmp_path)


def test_a_config_that_is_not_an_object_or_not_json_is_refused(tmp_path):
    (tmp_path / CONFIG_FILE).write_text("[1, 2]")
    with pytest.raises(ConfigError, match="holds a list, not an object"):
        ExportConfig.load(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ExportConfig.load(tmp_path)


def test_save_pretrained_writes_the_same_config_and_the_same_model(tmp_path, export):
    pipe = VARestorerPipeline.from_pretrained(export, merge_lora=False)
    pipe.save_pretrained(tmp_path / "again")
    assert ExportConfig.load(tmp_path / "again") == ExportConfig.load(export)
    assert torch.equal(_restore(tmp_path / "again"), _restore(export))
