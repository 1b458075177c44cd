"""Outputs: no lost file, nothing half-written (issue 26). Each input gets one output, the same on every
run; an export replaced leaves exactly the new one; an output location that cannot be used (a file
where a folder is wanted, a read-only folder, a full disk) is one paragraph naming the path and the
fix, exit code 2, and nothing half-written; Ctrl-C during restore keeps the finished images."""

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image
from test_bad_input import assert_refused, run

from varestorer.cli import main

RED, BLUE, GREEN = (200, 10, 10), (10, 10, 200), (10, 200, 10)


def _image(path: Path, colour, size=(16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _colour(path: Path):
    with Image.open(path) as im:
        return im.convert("RGB").getpixel((5, 5))


def _close(a, b) -> bool:  # a JPEG input's colour moves a little
    return max(abs(x - y) for x, y in zip(a, b)) < 12


def _all_files(folder: Path) -> list[str]:
    """Every file under ``folder``, hidden ones (temporary files) included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _restore(capsys, *args) -> tuple[int, str, str]:
    code = main(["restore", *map(str, args), "--method", "bicubic"])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------------------------------- names
def test_an_input_added_beside_one_of_the_same_stem_is_restored_and_the_first_output_is_kept(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    _image(src / "photo.png", RED)
    assert _restore(capsys, src, "-o", out)[0] == 0
    first = (out / "photo.png").stat().st_mtime_ns
    _image(src / "photo.jpg", BLUE)
    code, printed, _ = _restore(capsys, src, "-o", out)
    assert code == 0
    assert "restored 1 image(s)" in printed and "kept 1 existing" in printed
    assert _all_files(out) == ["photo.jpg.png", "photo.png"]
    assert (out / "photo.png").stat().st_mtime_ns == first  # kept, not restored again
    assert _close(_colour(out / "photo.png"), RED) and _close(_colour(out / "photo.jpg.png"), BLUE)
    assert "kept 2 existing" in _restore(capsys, src, "-o", out)[1]  # the same names on every run


def test_outputs_follow_their_inputs_whatever_order_the_inputs_were_added_in(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    _image(src / "photo.jpg", BLUE)
    assert _restore(capsys, src, "-o", out)[0] == 0
    assert _all_files(out) == ["photo.png"]  # a stem of its own: the plain name
    _image(src / "photo.png", RED)
    code, printed, _ = _restore(capsys, src, "-o", out)
    assert code == 0
    assert "moved photo.png to photo.jpg.png" in printed and "kept 1 existing" in printed
    assert _close(_colour(out / "photo.jpg.png"), BLUE) and _close(_colour(out / "photo.png"), RED)


def test_an_existing_output_of_another_input_is_never_kept_for_this_one(tmp_path, capsys):
    out = tmp_path / "out"
    first = _image(tmp_path / "a" / "x.png", RED)
    second = _image(tmp_path / "b" / "x.png", BLUE, size=(20, 20))  # the same name, another image
    assert _restore(capsys, first, "-o", out)[0] == 0
    code, _, err = _restore(capsys, second, "-o", out)
    assert_refused(code, err, "restore", "restored from x.png", "--overwrite")
    assert _close(_colour(out / "x.png"), RED)
    assert _restore(capsys, second, "-o", out, "--overwrite")[0] == 0
    assert _close(_colour(out / "x.png"), BLUE)


def test_two_inputs_that_would_get_one_output_are_refused_naming_both(tmp_path, capsys):
    a, b = _image(tmp_path / "a" / "x.png", RED), _image(tmp_path / "b" / "x.png", BLUE)
    code, _, err = _restore(capsys, tmp_path / "a", tmp_path / "b", "-o", tmp_path / "out")
    assert_refused(code, err, "restore", f"{a} and {b} would both be written as", "its own output folder")
    assert not (tmp_path / "out").exists()
    # the same file given twice is one input
    code, printed, _ = _restore(capsys, a, tmp_path / "a", "-o", tmp_path / "out")
    assert code == 0 and "restored 1 image(s)" in printed
    assert b.is_file()


def test_degrade_writes_one_lq_and_one_hq_per_input_when_two_share_a_stem(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    _image(src / "a.png", RED, size=(64, 64))
    _image(src / "a.jpg", BLUE, size=(64, 64))
    _image(src / "b.png", GREEN, size=(64, 64))
    assert main(["degrade", str(src), str(out), "--size", "64", "--save-hq", "--no-sheet", "--device", "cpu"]) == 0
    assert "wrote 3 LQ images" in capsys.readouterr().out
    assert _all_files(out / "lq") == _all_files(out / "hq") == ["a.jpg.png", "a.png", "b.png"]
    rows = [json.loads(line) for line in (out / "params.jsonl").read_text().splitlines()]
    assert sorted((r["path"], r["lq"]) for r in rows) == [
        ("a.jpg", "lq/a.jpg.png"),
        ("a.png", "lq/a.png"),
        ("b.png", "lq/b.png"),
    ]
    assert _close(_colour(out / "hq" / "a.png"), RED) and _close(_colour(out / "hq" / "a.jpg.png"), BLUE)


# --------------------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    from conftest import exported_student

    return exported_student(tmp_path_factory.mktemp("student"))[1]


def test_an_export_overwritten_holds_exactly_the_new_export(export, tmp_path, capsys):
    target, final = tmp_path / "X", tmp_path / "final"
    shutil.copytree(export, final)
    assert main(["export", str(export), str(target), "--merge", "--samples", "0"]) == 0
    assert (target / "merged_transformer.safetensors").is_file()
    assert main(["export", str(final), str(target), "--overwrite", "--samples", "0"]) == 0
    assert _all_files(target) == sorted([*_all_files(final), "README.md"])  # no stale merged transformer
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_overwrite_replaces_an_export_only_never_another_folder(export, tmp_path, capsys):
    notes = tmp_path / "mine"
    _image(notes / "holiday.png", RED)
    code, err = run(capsys, "export", export, notes, "--overwrite", "--samples", "0")
    assert_refused(code, err, "export", "is not an export folder", "choose another folder")
    assert _all_files(notes) == ["holiday.png"]
    run_folder = tmp_path / "run"
    shutil.copytree(export, run_folder / "final")
    code, err = run(capsys, "export", run_folder / "final", run_folder, "--overwrite", "--samples", "0")
    assert_refused(code, err, "export", "holds the model being exported", "would delete that model")
    assert (run_folder / "final" / "varestorer_config.json").is_file()
    (tmp_path / "release.pth").write_bytes(b"x")  # import-release replaces an export only too
    code, err = run(capsys, "import-release", tmp_path / "release.pth", "-o", notes, "--overwrite")
    assert_refused(code, err, "import-release", "is not an export folder")
    assert _all_files(notes) == ["holiday.png"]


def test_an_export_overwritten_through_a_link_replaces_the_folder_it_points_to(export, tmp_path, capsys):
    real, link = tmp_path / "models" / "X", tmp_path / "X"
    assert main(["export", str(export), str(real), "--merge", "--samples", "0"]) == 0
    link.symlink_to(real)
    assert main(["export", str(export), str(link), "--overwrite", "--samples", "0"]) == 0
    assert link.is_symlink() and not (real / "merged_transformer.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["X"]


def _fill_the_disk_at(monkeypatch, name: str):
    """Writing a file called ``name`` (or a temporary file for it) writes half, then the disk is full."""
    import varestorer.outputs as outputs

    real = shutil.copy2

    def copy2(src, dst, **kw):
        if name in Path(dst).name:
            Path(dst).write_bytes(Path(src).read_bytes()[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst, **kw)

    monkeypatch.setattr(outputs.shutil, "copy2", copy2)


def test_a_full_disk_during_an_export_leaves_no_file_half_written_and_the_previous_export_as_it_was(
    export, tmp_path, capsys, monkeypatch
):
    target = tmp_path / "X"
    assert main(["export", str(export), str(target), "--samples", "0"]) == 0
    before = {f: (target / f).read_bytes() for f in _all_files(target)}
    capsys.readouterr()
    _fill_the_disk_at(monkeypatch, "base_transformer.safetensors")
    code, err = run(capsys, "export", export, target, "--overwrite", "--samples", "0")
    assert_refused(code, err, "export", "base_transformer.safetensors", "the disk is full", "free space")
    assert {f: (target / f).read_bytes() for f in _all_files(target)} == before
    code, err = run(capsys, "export", export, tmp_path / "Y", "--samples", "0")
    assert_refused(code, err, "export", "the disk is full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X"]  # no Y, no temporary folder


def test_weights_are_written_under_a_temporary_name_and_an_io_error_names_the_file(tmp_path, monkeypatch):
    import safetensors.torch
    import torch
    from safetensors import SafetensorError

    from varestorer.export import save_weights

    def full(state, path, metadata=None):
        Path(path).write_bytes(b"half")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError) as info:
        save_weights({"w": torch.zeros(3)}, tmp_path / "base_transformer.safetensors")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "base_transformer.safetensors")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------- output locations that fail
@pytest.fixture
def places(tmp_path) -> dict:
    """Inputs every writing command accepts, and an export."""
    src = tmp_path / "src"
    for i, colour in enumerate((RED, BLUE)):
        _image(src / f"{i}.png", colour, size=(64, 64))
    return {"src": src}


def _commands(places: dict, out: Path, export: Path) -> dict[str, list]:
    src = places["src"]
    return {
        "restore": ["restore", src, "-o", out, "--method", "bicubic"],
        "degrade": ["degrade", src, out, "--size", "64", "--no-sheet", "--device", "cpu"],
        "evaluate": ["evaluate", "--pred", src, "--gt", src, "--out", out, "--metrics", "psnr", "--device", "cpu"],
        "prepare": ["prepare", src, out, "--size", "16", "--caption", "none", "--workers", "0", "--no-progress"],
        "train": ["train", "--recipe", "tiny", f"train.output_dir={out}", "train.report_to=none"],
        "export": ["export", export, out, "--samples", "0"],
        "demo": ["demo", "--output-dir", out, "--steps", "1", "--images", "1"],
    }


COMMANDS = ("restore", "degrade", "evaluate", "prepare", "train", "export", "demo")


@pytest.mark.parametrize("command", COMMANDS)
def test_a_file_where_the_output_folder_should_be_is_refused_before_any_work(command, places, export, tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("a file the user keeps")
    for out, fragment in ((blocker, "is a file, not a folder"), (blocker / "sub", "taken is a file, not a folder")):
        code, err = run(capsys, *_commands(places, out, export)[command])
        assert_refused(code, err, command, str(blocker), fragment, "choose another folder")
    assert blocker.read_text() == "a file the user keeps"


@pytest.mark.parametrize("command", COMMANDS)
def test_a_read_only_output_folder_is_refused_before_any_work(command, places, export, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access

    def access(path, mode, **kw):  # root writes anywhere: say what a read-only folder says
        if mode & os.W_OK and Path(path) == locked:
            return False
        return real(path, mode, **kw)

    monkeypatch.setattr(os, "access", access)
    code, err = run(capsys, *_commands(places, locked / "out", export)[command])
    assert_refused(code, err, command, str(locked), "is not writable", "choose a folder you can write to")
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_a_full_disk_is_refused_before_any_work(command, places, export, tmp_path, capsys, monkeypatch):
    import varestorer.outputs as outputs

    real = shutil.disk_usage
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda p: real(p)._replace(free=4096))
    out = tmp_path / "out"
    code, err = run(capsys, *_commands(places, out, export)[command])
    assert_refused(code, err, command, "no space left", "4096 bytes free", "free space")
    assert not out.exists()


def _fail_image_writes(monkeypatch, after: int, exc: BaseException):
    """The ``after``-th image written from now on writes half of itself, then raises ``exc``."""
    real = Image.Image.save
    calls = []

    def save(self, fp, format=None, **params):
        calls.append(fp)
        if len(calls) == after:
            Path(fp).write_bytes(b"\x89PNG\r\n\x1a\nhalf")
            if isinstance(exc, OSError):
                raise type(exc)(exc.errno, exc.strerror, str(fp))
            raise exc
        return real(self, fp, format, **params)

    monkeypatch.setattr(Image.Image, "save", save)


@pytest.mark.parametrize("command", ["restore", "degrade", "evaluate"])
def test_a_disk_that_fills_up_midway_is_one_paragraph_and_leaves_nothing_half_written(
    command, places, export, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out"
    argv = _commands(places, out, export)[command]
    if command == "evaluate":
        argv += ["--lq", places["src"], "--method", "bicubic"]
        argv[argv.index("--pred") : argv.index("--pred") + 2] = []
    _fail_image_writes(monkeypatch, 2, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    code, err = run(capsys, *argv)
    assert_refused(code, err, command, str(out), "the disk is full", "free space", "run the same command again")
    written = _all_files(out)
    assert not [f for f in written if Path(f).name.startswith(".")], written  # no temporary file left
    for f in written:
        if f.endswith(".png"):
            Image.open(out / f).load()  # every image there is whole


def test_a_full_disk_in_prepare_is_one_paragraph(places, tmp_path, capsys, monkeypatch):
    import varestorer.data.prepare as prepare

    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(prepare, "write_text", full)
    code, err = run(capsys, *_commands(places, tmp_path / "ds", Path("unused"))["prepare"])
    assert_refused(code, err, "prepare", str(tmp_path / "ds"), "the disk is full", "run the same command again")


def test_debug_shows_the_traceback_of_a_write_that_failed(places, tmp_path, monkeypatch):
    _fail_image_writes(monkeypatch, 1, OSError(errno.EACCES, os.strerror(errno.EACCES)))
    with pytest.raises(OSError):
        main(["--debug", *map(str, _commands(places, tmp_path / "out", Path("unused"))["degrade"])])


def test_an_output_folder_inside_an_input_folder_is_refused_for_degrade_and_evaluate(places, tmp_path, capsys):
    src = places["src"]
    code, err = run(capsys, "degrade", src, src / "degraded", "--size", "64", "--no-sheet")
    assert_refused(code, err, "degrade", "is inside the source folder", "searched recursively")
    code, err = run(capsys, "evaluate", "--lq", src, "--gt", src, "--out", src, "--method", "bicubic")
    assert_refused(code, err, "evaluate", "--out", "is the --gt folder", "choose --out outside it")
    assert _all_files(src) == ["0.png", "1.png"]


def test_an_empty_output_name_is_refused_not_taken_for_the_current_folder(
    places, export, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path / "src")  # where "" would write
    for command in ("restore", "degrade", "export", "evaluate", "prepare"):
        code, err = run(capsys, *_commands(places, "", export)[command])
        assert_refused(code, err, command, "is empty (an unset variable?)")
    assert _all_files(tmp_path / "src") == ["0.png", "1.png"]


def test_a_folder_with_no_disk_behind_it_is_refused_naming_it(places, export, tmp_path, capsys, monkeypatch):
    import varestorer.outputs as outputs

    real = shutil.disk_usage
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda p: real(p)._replace(total=0, free=0))
    code, err = run(capsys, *_commands(places, tmp_path / "out", export)["restore"])
    assert_refused(code, err, "restore", "virtual file system", "choose a folder on a disk")


def test_a_file_where_a_subfolder_of_the_outputs_goes_is_named_as_such(tmp_path, capsys):
    _image(tmp_path / "in" / "sub" / "x.png", RED)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").write_text("mine")
    code, _, err = _restore(capsys, tmp_path / "in", "-o", tmp_path / "out")
    assert_refused(code, err, "restore", f"{tmp_path / 'out' / 'sub'}: a file is where a folder should be")
    assert (tmp_path / "out" / "sub").read_text() == "mine"


def test_restore_resumes_past_what_is_no_output_and_says_what_the_kept_ones_were_made_with(export, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    _image(src / "a.png", RED)
    _image(src / "b.png", BLUE)
    (src / "c.png").write_text("not an image")
    assert _restore(capsys, src, "-o", out)[0] == 0
    assert (out / "skipped.tsv").is_file()
    (src / "c.png").unlink()
    (out / "a.png").write_bytes((out / "a.png").read_bytes()[:40])  # cut short by another program
    code, printed, _ = _restore(capsys, src, "-o", out)
    assert code == 0 and "restored 1 image(s)" in printed and "kept 1 existing" in printed
    Image.open(out / "a.png").load()  # restored again, whole
    assert not (out / "skipped.tsv").exists()  # the earlier run's list of skipped files is gone with them
    code = main(["restore", str(src), "-o", str(out), "--model", str(export), "--caption", "none"])
    assert code == 0
    assert "2 of the kept outputs were made with another --method or --model" in capsys.readouterr().out


def test_an_input_with_a_name_near_the_file_systems_limit_is_restored(tmp_path, capsys):
    src = tmp_path / "in"
    _image(src / ("n" * 251 + ".png"), RED)  # 255 bytes: no room for a longer temporary name
    assert _restore(capsys, src, "-o", tmp_path / "out")[0] == 0
    assert _all_files(tmp_path / "out") == ["n" * 251 + ".png"]


# --------------------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_during_restore_keeps_the_finished_images_and_the_same_command_resumes(tmp_path, capsys, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    for name, colour in (("a.png", RED), ("b.png", BLUE), ("c.png", GREEN)):
        _image(src / name, colour)
    argv = ["restore", str(src), "-o", str(out), "--method", "bicubic", "--batch-size", "1"]
    with monkeypatch.context() as m:
        _fail_image_writes(m, 2, KeyboardInterrupt())
        try:
            code = main(argv)
        except KeyboardInterrupt:
            code = "a traceback"
    assert code == 130
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "interrupted" in printed[0] and "run the same command again" in printed[0]
    assert _all_files(out) == ["a.png"]  # the image in progress dropped, no partial file
    assert main(argv) == 0
    assert "restored 2 image(s)" in capsys.readouterr().out
    assert _all_files(out) == ["a.png", "b.png", "c.png"]
    assert _close(_colour(out / "c.png"), GREEN)
