"""The `small` base: its photo collection, its shipped weights, the recipes that rebuild it
(shortened), and the demo that distils and evaluates it."""

import json
from argparse import Namespace

import pytest
import torch

from varestorer.data.photos import PhotoCollection, entries, heldout_crops, manifest
from varestorer.errors import ConfigError
from varestorer.presets import PRESETS, get_preset

SHIPPED = (get_preset("small").weights_dir() / "transformer.safetensors").is_file()


def test_the_photo_collection_lists_source_author_and_licence_and_keeps_a_disjoint_held_out_split():
    photos = manifest()
    assert len(photos) == 42
    for e in photos:
        assert e["author"] and e["licence"] and e["source"] and e["caption"], e
    train, held = {e["name"] for e in entries("train")}, {e["name"] for e in entries("heldout")}
    assert len(train) == 36 and len(held) == 6 and not train & held
    with pytest.raises(ConfigError, match="unknown photo split"):
        entries("test")


def test_photo_crops_are_a_function_of_seed_epoch_and_index():
    ds = PhotoCollection(128, repeats=2, seed=3)
    a = ds[5]["pixel_values"]
    assert a.shape == (3, 128, 128) and 0 <= a.min() and a.max() <= 1
    torch.testing.assert_close(PhotoCollection(128, repeats=2, seed=3)[5]["pixel_values"], a)
    assert not torch.equal(ds[(1, 5)]["pixel_values"], a)
    crops = heldout_crops(128)
    assert len(crops) == 12 and all(c[1].shape == (3, 128, 128) for c in crops)
    torch.testing.assert_close(heldout_crops(128)[3][1], crops[3][1])
    with pytest.raises(ConfigError, match="stored at 256 px"):
        PhotoCollection(512)


def test_the_small_preset_has_the_sizes_its_card_states():
    from varestorer.tokenizer.loading import build_vae
    from varestorer.transformer.loading import build_transformer

    p = PRESETS["small"]
    with torch.device("meta"):
        vae, transformer = build_vae(p), build_transformer(p)
    assert sum(t.numel() for t in vae.parameters()) == 2_919_747
    assert sum(t.numel() for t in transformer.parameters()) == 7_229_784
    assert vae.schedule(128)[-1] == (16, 16) and vae.codebook_dim == 32
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in vae.modules())  # no norms: see tokenizer/vae.py


def test_a_preset_without_its_shipped_file_says_how_to_rebuild_it(tmp_path, monkeypatch):
    from varestorer.tokenizer.loading import load_vae

    p = get_preset("small")
    monkeypatch.setattr(type(p), "weights_dir", lambda self: tmp_path / "missing")
    with pytest.raises(ConfigError, match="rebuild the base"):
        load_vae(p)


@pytest.mark.skipif(not SHIPPED, reason="the small base's weights are not in this checkout")
def test_the_shipped_small_base_loads_with_no_download_and_is_small_enough():
    from varestorer.tokenizer.loading import load_vae
    from varestorer.transformer.loading import load_transformer

    folder = get_preset("small").weights_dir()
    assert sum(f.stat().st_size for f in folder.glob("*.safetensors")) <= 30 * 2**20
    vae, transformer = load_vae("small"), load_transformer("small")
    assert next(vae.parameters()).dtype == torch.float32  # float16 on disk, float32 as asked
    assert transformer.config.depth == 6


def test_the_shipped_small_base_measures_what_its_card_says():
    """Measured again here, not read back: the shipped tokenizer reconstructs the held-out photos
    at its card's PSNR and keeps their colour; the teacher is a real prior on their tokens."""
    from varestorer.distill.heldout import teacher_cross_entropy, tokenizer_quality
    from varestorer.tokenizer.loading import load_vae
    from varestorer.transformer.loading import load_transformer
    from varestorer.transformer.text import TextEncoder

    info = json.loads((get_preset("small").weights_dir() / "base_info.json").read_text())
    vae, transformer = load_vae("small").eval(), load_transformer("small").eval()
    with torch.no_grad():
        q = tokenizer_quality(vae, 128)
        ce = teacher_cross_entropy(transformer, vae, TextEncoder.from_preset(get_preset("small")), 128)
    assert q["psnr_db"] == pytest.approx(info["tokenizer_heldout_psnr_db"], abs=0.05) and q["psnr_db"] > 24
    assert q["chroma_energy_ratio"] > 0.85 and q["chroma_correlation"] > 0.95  # the colours kept
    assert ce == pytest.approx(info["teacher_heldout_cross_entropy"], abs=1e-3)
    assert ce < 0.5 * info["initial_heldout_cross_entropy"]  # far below a random initialisation's 0.693


def test_the_rebuild_recipes_run_shortened_and_bundle_a_base_that_loads(tmp_path):
    from varestorer.cli import main
    from varestorer.distill.recipe import load_recipe
    from varestorer.distill.trainer import train

    short = [
        "train.max_steps=2",
        "train.global_batch_size=2",
        "train.report_to=none",
        "train.checkpointing_steps=2",
        "train.validation_steps=2",
        "train.num_validation_images=1",
    ]
    tok = tmp_path / "tok"
    logs = train(load_recipe("small-tokenizer", short + [f"train.output_dir={tok}"]))
    assert "psnr" in logs
    history = [json.loads(line) for line in (tok / "losses.jsonl").read_text().splitlines()]
    assert "heldout_psnr" in history[-1]  # measured on the held-out photos at validation
    teacher = tmp_path / "teacher"
    train(load_recipe("small-teacher", short + [f"train.output_dir={teacher}", f"model.vae={tok / 'final'}"]))
    history = [json.loads(line) for line in (teacher / "losses.jsonl").read_text().splitlines()]
    assert 0.5 < history[-1]["heldout_cross_entropy"] < 0.8
    out = tmp_path / "bundle"
    assert (
        main(["bundle", "--tokenizer", str(tok / "final"), "--teacher", str(teacher / "final"), "--out", str(out)]) == 0
    )
    info = json.loads((out / "base_info.json").read_text())
    assert set(info) >= {
        "tokenizer_heldout_psnr_db",
        "tokenizer_heldout_chroma_energy_ratio",
        "teacher_heldout_cross_entropy",
        "initial_heldout_cross_entropy",
    }
    assert (out / "samples.png").is_file()
    from safetensors.torch import load_file

    assert all(
        v.dtype == torch.float16 for v in load_file(out / "transformer.safetensors").values() if v.is_floating_point()
    )
    restorer = tmp_path / "restorer"
    train(load_recipe("small-restorer", short + [f"train.output_dir={restorer}"]))
    assert main(["bundle", "--restorer", str(restorer / "final"), "--out", str(out)]) == 0
    info = json.loads((out / "base_info.json").read_text())
    assert "teacher_heldout_cross_entropy" in info  # kept: the restorer is added to the base's numbers
    assert info["restorer_parameters"] == 382_435 and info["restorer_heldout_psnr"] > 20
    assert all(
        v.dtype == torch.float16 for v in load_file(out / "restorer.safetensors").values() if v.is_floating_point()
    )


def test_bundle_needs_the_base_pair_or_a_restorer(capsys):
    from varestorer.cli import main

    assert main(["bundle", "--tokenizer", "x"]) == 2
    assert "pass --tokenizer and --teacher" in capsys.readouterr().err


RESTORER_SHIPPED = (get_preset("small").weights_dir() / "restorer.safetensors").is_file()


@pytest.mark.skipif(not RESTORER_SHIPPED, reason="the small restorer is not in this checkout")
def test_the_shipped_small_restorer_beats_its_input_on_the_held_out_photos_as_its_card_says():
    from varestorer.degradations import DegradationPipeline
    from varestorer.distill.heldout import heldout_restorer_psnr
    from varestorer.distill.model import restorer_source
    from varestorer.distill.recipe import load_recipe
    from varestorer.restorer import load_restorer

    info = json.loads((get_preset("small").weights_dir() / "base_info.json").read_text())
    path = restorer_source(load_recipe("small", ["model.restorer=preset"]))
    with torch.no_grad():
        scores = heldout_restorer_psnr(load_restorer(path), DegradationPipeline.from_preset("realesrgan-x4"), 128)
    assert scores["heldout_psnr"] == pytest.approx(info["restorer_heldout_psnr"], abs=0.01)
    assert scores["heldout_psnr"] > scores["heldout_lq_psnr"] + 0.2  # 29.52 against 29.20: its card


def test_a_preset_without_a_shipped_restorer_says_so():
    from varestorer.distill.model import restorer_source
    from varestorer.distill.recipe import load_recipe

    with pytest.raises(ConfigError, match="ships no stage-1 restorer"):
        restorer_source(load_recipe("tiny", ["model.restorer=preset"]))


def test_a_caption_file_gives_each_image_its_caption(tmp_path):
    from varestorer.cli.options import prompts_for
    from varestorer.data.captions import write_caption_file

    write_caption_file(tmp_path / "c.jsonl", {"a.png": "a cat", "sub/b.png": "a dog"})
    args = Namespace(prompt=None, caption=str(tmp_path / "c.jsonl"))
    assert prompts_for(args, [tmp_path / "lq" / "a.png", tmp_path / "sub" / "b.png"]) == ["a cat", "a dog"]
    with pytest.raises(ConfigError, match="has no caption"):
        prompts_for(args, [tmp_path / "c.png"])
    assert prompts_for(Namespace(prompt="x", caption=str(tmp_path / "c.jsonl")), [tmp_path / "a.png"]) == "x"
    with pytest.raises(ConfigError, match="not blip, none or a caption file"):
        prompts_for(Namespace(prompt=None, caption="nope"), [tmp_path / "a.png"])


@pytest.mark.skipif(not SHIPPED, reason="the small base's weights are not in this checkout")
def test_the_demo_distils_the_small_base_and_reports_every_method(tmp_path, capsys):
    from varestorer.cli import main

    out = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "--output-dir",
                str(out),
                "--steps",
                "2",
                "--images",
                "2",
                "--methods",
                "bicubic,restorer,zeroshot,multistep,onestep",
            ]
        )
        == 0
    )
    report = (out / "report.md").read_text()
    for method in ("bicubic", "restorer", "zeroshot", "multistep", "onestep"):
        assert f"| {method} |" in report
    assert "against zeroshot: PSNR" in report
    rows = json.loads((out / "evaluation" / "results.json").read_text())["rows"]
    assert all(r["images"] == 2 and r["psnr"] > 5 for r in rows)
    # the shipped recipe's student starts as a copy of the LQ tokens with the LQ's colour (tokens
    # input, keep_lq_scales=1): after 2 steps it already beats zero-shot (600 steps: the README's table)
    psnr = {r["method"]: r["psnr"] for r in rows}
    assert psnr["onestep"] > psnr["zeroshot"] + 1, psnr
    from PIL import Image

    grid = Image.open(out / "grid.png")
    assert grid.width > 7 * 128  # LQ | 5 methods | HQ
    assert (out / "train" / "losses.png").is_file() and (out / "train" / "final" / "adapter_config.json").is_file()
    assert str(out / "report.md") in capsys.readouterr().out


def test_the_demo_refuses_the_restorer_row_for_a_recipe_without_a_restorer_before_training(tmp_path, capsys):
    from varestorer.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--recipe", "tiny", "--methods", "bicubic,restorer", "--output-dir", str(out)]) == 2
    assert "names no stage-1 restorer" in capsys.readouterr().err
    assert not (out / "train").exists()
