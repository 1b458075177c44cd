"""``varestorer restore`` in several processes (``accelerate launch -m varestorer restore``; here
``torchrun -m varestorer`` with 2 CPU processes over gloo): each image restored once, by whole
batches of the one-process run, byte-identical to it (also ``--decode gumbel``'s draws), one
merged ``skipped.tsv``, resumed by running it again."""

import shutil
from pathlib import Path

import pytest
import torch
from conftest import exported_student, launch_processes
from PIL import Image

from varestorer.cli import main
from varestorer.errors import ConfigError
from varestorer.inference.processes import ProcessGroup, whole_batches

#: Random draws and batches of two: a run that split batches or shared one generator differs.
ARGS = ("--caption", "none", "--decode", "gumbel", "--batch-size", "2")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A tiny student and 8 inputs: 7 images (one tiled) and a file that is not one, first in order."""
    root = tmp_path_factory.mktemp("processes")
    _, export = exported_student(root)
    folder = root / "in"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i, (h, w) in enumerate([(16, 16), (12, 20), (16, 16), (20, 10), (8, 8), (24, 16), (16, 12)]):
        Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).byte().numpy()).save(folder / f"im{i}.png")
    (folder / "broken.png").write_text("not an image")
    return export, folder


def restore_here(capsys, photos, out: Path) -> str:
    """One process, at the processes' one thread (a thread count changes float sums)."""
    export, folder = photos
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["restore", str(folder), "-o", str(out), "--model", str(export), *ARGS]) == 0
    finally:
        torch.set_num_threads(threads)
    return capsys.readouterr().out


def restore_in_processes(photos, out: Path, check: bool = True):
    export, folder = photos
    # torchrun's -m, as accelerate launch -m passes it on
    args = ("varestorer", "restore", folder, "-o", out, "--model", export, *ARGS)
    return launch_processes(2, "-m", *args, cwd=out.parent, check=check)


def assert_same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())  # nothing left over (no per-process files)
    assert [n for n in names if (a / n).read_bytes() != (b / n).read_bytes()] == []


@pytest.mark.slow
def test_two_processes_restore_each_image_once_byte_identical_to_one_process(tmp_path, capsys, photos):
    one, two = tmp_path / "one", tmp_path / "two"
    restore_here(capsys, photos, one)
    res = restore_in_processes(photos, two)
    # 4 batches of 2 (broken.png, im0 | im1, im2 | im3, im4 | im5, im6) dealt out whole: 1 + 2 | 2 + 2
    assert "restored 7 image(s) into" in res.stdout and "(2 processes: 3 + 4)" in res.stdout
    assert res.stdout.count("restored 7") == 1  # the summary of the main process only
    assert_same_files(one, two)
    assert (two / "skipped.tsv").read_text().startswith(f"{photos[1] / 'broken.png'}\tnot an image")


@pytest.mark.slow
def test_two_processes_resume_restoring_only_the_missing_outputs_as_one_process_does(tmp_path, capsys, photos):
    one, two = tmp_path / "one", tmp_path / "two"
    restore_here(capsys, photos, one)
    for name in ("im1.png", "im4.png", "im5.png"):  # an interrupted run's outputs
        (one / name).unlink()
    shutil.copytree(one, two)
    kept = {p.name: p.stat().st_mtime_ns for p in two.glob("im*.png")}
    assert "restored 3 image(s)" in restore_here(capsys, photos, one)
    res = restore_in_processes(photos, two)
    assert "restored 3 image(s) into" in res.stdout and "kept 4 existing" in res.stdout
    assert {name: (two / name).stat().st_mtime_ns for name in kept} == kept
    assert_same_files(one, two)


@pytest.mark.slow
def test_a_plan_refused_on_the_main_process_ends_every_process_with_one_message(tmp_path, photos):
    from varestorer.inference.files import save_restored as _save

    out = tmp_path / "out"
    out.mkdir()
    foreign = {"restored_from": "elsewhere.png", "bytes": 1, "method": "onestep", "model": None}
    _save(Image.new("RGB", (4, 4)), out / "im0.png", foreign)
    res = restore_in_processes(photos, out, check=False)
    assert res.returncode != 0  # the launch failed (the main process's exit code 2), nothing hangs
    assert res.stderr.count("were restored from other inputs") == 1, res.stderr[-2000:]  # said, once


def test_whole_batches_give_every_item_to_exactly_one_process():
    for n, size, world in ((7, 2, 2), (8, 3, 3), (1, 4, 2), (0, 2, 2)):
        parts = [whole_batches(n, size, rank, world) for rank in range(world)]
        items = sorted(i for part in parts for _, s in part for i in range(n)[s])
        assert items == list(range(n))
        assert sorted(k for part in parts for k, _ in part) == list(range(-(-n // size)))
        assert all(s.start % size == 0 for part in parts for _, s in part)


def test_a_process_restores_on_its_own_device_unless_told_cpu():
    group = ProcessGroup.__new__(ProcessGroup)  # the device choice alone, without a process group
    group.world, group.state = 2, type("State", (), {"device": torch.device("cuda", 1)})()
    assert group.device(None) == group.device("cuda") == "cuda:1"
    assert group.device("cpu") == "cpu"
    with pytest.raises(ConfigError, match=r"--device cuda:0 with 2 processes: each process restores on its own"):
        group.device("cuda:0")


def test_python_users_restore_a_folder_with_resume_and_provenance_as_the_command_does(tmp_path, capsys, photos):
    """inference.files: plan_files + restore_files give the command's outputs byte for byte, the
    skip list, and resume (a second plan keeps everything)."""
    from varestorer.inference import VARestorerPipeline
    from varestorer.inference.files import SKIPPED_FILE, plan_files, recorded_provenance, restore_files

    export, folder = photos
    restore_here(capsys, photos, tmp_path / "cli")
    plan = plan_files([folder], tmp_path / "py", model=str(export))
    assert len(plan.todo) == 8 and plan.kept == 0
    pipe = VARestorerPipeline.from_pretrained(export)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as restore_here
    try:
        report = restore_files(pipe, plan, model=str(export), prompts="", batch_size=2, decode="gumbel", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert report.restored == [7] and [p.name for p, _ in report.skipped] == ["broken.png"]
    assert (tmp_path / "py" / SKIPPED_FILE).read_text().startswith(str(folder / "broken.png"))
    assert_same_files(tmp_path / "cli", tmp_path / "py")
    assert recorded_provenance(tmp_path / "py" / "im0.png")["restored_from"] == "im0.png"
    again = plan_files([folder], tmp_path / "py", model=str(export))
    assert (again.kept, [src.name for src, _, _ in again.todo]) == (7, ["broken.png"])
    with pytest.raises(ConfigError, match="draws each batch from seed="):
        restore_files(pipe, again, seed=1, generator=torch.Generator())
