"""The bad-input table (docs/reliability.md), row by row: what a user can get wrong, and what they get back
(one paragraph saying what to do, exit code 2, no traceback, nothing half-written)."""

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from varestorer.cli import main


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(map(str, argv)))
    err = capsys.readouterr().err
    return code, err


def assert_refused(code: int, err: str, command: str, *fragments: str) -> None:
    assert code == 2, err
    assert f"varestorer {command}: error: " in err, err  # after any library warnings
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, err


@pytest.fixture
def photos(tmp_path) -> Path:
    """One good image and one of each kind of bad image file."""
    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(src / "good.png")
    (src / "zero.png").write_bytes(b"")
    (src / "text.png").write_text("hello, not a png")
    data = (src / "good.png").read_bytes()
    (src / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.new("I;16", (32, 32)).save(src / "sixteen-bit.png")
    Image.new("RGBA", (32, 32), (1, 2, 3, 100)).save(src / "alpha.png")
    Image.new("P", (32, 32)).save(src / "palette.png")
    Image.new("L", (2, 2)).save(src / "two-pixels.png")
    Image.new("RGB", (32, 32)).save(src / "ñame-é.png")
    Image.new("1", (20000, 20000)).save(src / "bomb.png")  # 400 Mpx in 48 kB
    return src


def test_restore_converts_what_it_can_and_lists_every_file_it_skipped_with_the_reason(photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["restore", str(photos), "-o", str(out), "--method", "bicubic"]) == 0
    printed = capsys.readouterr().out
    listed = (out / "skipped.tsv").read_text()
    skipped = dict(line.split("\t")[:2] for line in listed.splitlines())
    assert {Path(p).name: r.split(":")[0] for p, r in skipped.items()} == {
        "zero.png": "empty file",
        "text.png": "not an image",
        "truncated.png": "truncated or corrupt",
        "bomb.png": "too large",
    }, listed
    assert "skipped 4 file(s)" in printed
    restored = sorted(p.name for p in out.glob("*.png"))
    assert restored == sorted(
        ["good.png", "sixteen-bit.png", "alpha.png", "palette.png", "two-pixels.png", "ñame-é.png"]
    )
    for p in out.glob("*.png"):
        assert Image.open(p).mode == "RGB"


def test_an_unreadable_file_is_skipped_and_named(photos, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    (photos / "good.png").chmod(0)
    out = tmp_path / "out"
    assert (
        main(["restore", str(photos / "good.png"), str(photos / "alpha.png"), "-o", str(out), "--method", "bicubic"])
        == 0
    )
    assert "good.png" in (out / "skipped.tsv").read_text()


def test_folders_that_cannot_be_used_are_refused(photos, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert_refused(
        *run(capsys, "restore", tmp_path / "empty", "-o", tmp_path / "o1", "--method", "bicubic"),
        "restore",
        "no images in",
    )
    assert_refused(
        *run(capsys, "restore", tmp_path / "missing", "-o", tmp_path / "o2", "--method", "bicubic"),
        "restore",
        "does not exist",
    )
    assert_refused(
        *run(capsys, "restore", photos, "-o", photos, "--method", "bicubic"),
        "restore",
        "is the input folder",
        "choose an -o folder outside it",
    )
    assert_refused(
        *run(capsys, "restore", photos, "-o", photos / "restored", "--method", "bicubic"),
        "restore",
        "is inside the input folder",
        "searched recursively",
    )
    assert_refused(
        *run(capsys, "restore", photos / "good.png", "-o", photos, "--ext", "png", "--method", "bicubic"),
        "restore",
        "would write over the input",
    )
    assert sorted(p.name for p in photos.iterdir()) == sorted(
        [
            "good.png",
            "zero.png",
            "text.png",
            "truncated.png",
            "sixteen-bit.png",
            "alpha.png",
            "palette.png",
            "two-pixels.png",
            "ñame-é.png",
            "bomb.png",
        ]
    )  # nothing written into the input


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["max_steps=3"], ["unknown key 'max_steps'", "did you mean train.max_steps?"]),
        (["optim.lrr=1"], ["did you mean optim.lr?"]),
        (["train.max_steps=many"], ["train.max_steps must be int"]),
        (["optim.lr=-1"], ["optim.lr must be > 0"]),
        (["model.preset=nope"], ["unknown preset 'nope'", "valid presets"]),
        (["model.resolution=100"], ["no Infinity scale schedule for 100px", "valid resolutions"]),
        (["data.dataset=/nonexistent/folder"], ["not a dataset written by varestorer prepare"]),
        (["student.attention=sideways"], ["choose one of full, causal"]),
    ],
)
def test_recipe_mistakes_are_refused_before_anything_is_written(tmp_path, capsys, args, fragments):
    out = tmp_path / "run"
    code, err = run(
        capsys,
        "train",
        "--recipe",
        "tiny",
        f"train.output_dir={out}",
        "train.max_steps=1",
        "train.report_to=none",
        *args,
    )
    assert_refused(code, err, "train", *fragments)
    assert not out.exists() or not any(p.name.startswith("checkpoint") for p in out.iterdir())


def test_a_recipe_file_that_is_not_yaml_or_does_not_exist_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: distill\n  bad: [\n")
    assert_refused(*run(capsys, "train", "--recipe", bad), "train", "not a valid YAML recipe (line 2")
    assert_refused(*run(capsys, "train", "--recipe", "nope"), "train", "no recipe 'nope'")


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """The export form of a tiny model (random LoRA), as training writes it."""
    import torch

    from varestorer.distill.model import VARestorerModel
    from varestorer.distill.recipe import load_recipe

    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = VARestorerModel.from_recipe(load_recipe("tiny", [f"train.output_dir={root}", "train.report_to=none"]))
    model.save_export(root / "export")
    return root / "export"


def _restore(capsys, model: Path, tmp_path: Path) -> tuple[int, str]:
    image = tmp_path / "lq.png"
    Image.new("RGB", (16, 16), (90, 120, 60)).save(image)
    return run(capsys, "restore", image, "-o", tmp_path / "restored", "--model", model, "--caption", "none")


def test_models_that_are_not_exports_or_are_damaged_are_refused(export, tmp_path, capsys):
    assert_refused(
        *_restore(capsys, tmp_path, tmp_path), "restore", "not a VARestorer export", "varestorer export CHECKPOINT OUT"
    )
    assert_refused(*run(capsys, "export", tmp_path, tmp_path / "x"), "export", "no trained model found")
    missing = tmp_path / "missing-adapter"
    shutil.copytree(export, missing)
    (missing / "adapter_model.safetensors").unlink()
    assert_refused(*_restore(capsys, missing, tmp_path), "restore", "holds no adapter_model.safetensors")
    truncated = tmp_path / "truncated"
    shutil.copytree(export, truncated)
    data = (truncated / "encoder.safetensors").read_bytes()
    (truncated / "encoder.safetensors").write_bytes(data[: len(data) // 2])
    assert_refused(*_restore(capsys, truncated, tmp_path), "restore", "encoder.safetensors")
    assert not (tmp_path / "restored").exists() or not list((tmp_path / "restored").iterdir())


def test_an_adapter_that_does_not_fit_the_base_is_refused_naming_it(export, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    foreign = tmp_path / "foreign"
    shutil.copytree(export, foreign)
    state = load_file(str(foreign / "adapter_model.safetensors"))
    save_file(
        {k: torch.cat([v, v]) if "lora_A" in k else v for k, v in state.items()},  # twice the rank
        str(foreign / "adapter_model.safetensors"),
    )
    assert_refused(*_restore(capsys, foreign, tmp_path), "restore", "does not fit the tiny base transformer", "--base")


def test_resuming_with_another_lora_rank_or_preset_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    common = [
        "train",
        "--recipe",
        "tiny",
        f"train.output_dir={out}",
        "train.report_to=none",
        "train.validation_steps=100",
    ]
    assert main([*common, "train.max_steps=1"]) == 0
    capsys.readouterr()
    code, err = run(capsys, *common, "train.max_steps=2", "student.lora_rank=2", "train.resume_from_checkpoint=latest")
    assert_refused(code, err, "train", "another preset or LoRA rank", "resume it with its own recipe")


def test_a_caption_file_that_is_not_utf8_is_refused_naming_the_line(photos, tmp_path, capsys):
    captions = tmp_path / "captions.jsonl"
    captions.write_bytes(b'{"path": "good.png", "caption": "a field"}\n{"path": "alpha.png", "caption": "caf\xe9"}\n')
    code, err = run(
        capsys, "restore", photos / "good.png", "-o", tmp_path / "out", "--method", "bicubic", "--caption", captions
    )
    assert_refused(code, err, "restore", "captions.jsonl:2: not UTF-8 (byte 0xe9)")


def test_a_file_name_that_is_not_utf8_is_restored_under_the_same_bytes(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(src / "x.png")
    os.rename(os.fsencode(src / "x.png"), os.fsencode(src) + b"/\xff\xfe.png")  # Latin-1 bytes, not UTF-8
    assert main(["restore", str(src), "-o", str(out), "--method", "bicubic"]) == 0
    assert os.listdir(os.fsencode(out)) == [b"\xff\xfe.png"]
    assert "restored 1 image(s)" in capsys.readouterr().out


def test_every_file_of_a_folder_is_restored_or_listed_in_a_skip_list_that_stays_parseable(tmp_path, capsys):
    """A .gif or a .txt in a folder is listed with why (it was silently dropped); a name with a tab
    or a newline is quoted, so each row is still one (path, why) pair for a TSV/CSV reader."""
    import csv

    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(src / "good.png")
    Image.new("RGB", (16, 16)).save(src / "anim.gif")
    (src / "notes.txt").write_text("captions elsewhere")
    (src / ".hidden").write_text("a dotfile: not an input")
    (src / "tab\tand\nnewline.png").write_bytes(b"")  # an empty image with a hostile name
    out = tmp_path / "out"
    assert main(["restore", str(src), "-o", str(out), "--method", "bicubic"]) == 0
    with open(out / "skipped.tsv", newline="") as f:
        rows = {Path(p).name: why for p, why in csv.reader(f, delimiter="\t")}
    assert set(rows) == {"anim.gif", "notes.txt", "tab\tand\nnewline.png"}, rows
    assert (
        rows["anim.gif"].startswith("not a file type restore reads (.gif")
        and "empty file" in rows["tab\tand\nnewline.png"]
    )
    assert "skipped 3 file(s)" in capsys.readouterr().out and (out / "good.png").is_file()


def test_an_upscale_that_gives_less_than_a_pixel_is_refused_not_written_as_1x1(tmp_path, capsys):
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert main(["restore", str(tmp_path / "a.png"), "-o", str(out), "--method", "bicubic", "--upscale", "1e-9"]) == 1
    assert "less than one on a side: raise --upscale" in (out / "skipped.tsv").read_text()
    assert not list(out.glob("*.png"))
