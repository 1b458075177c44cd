"""A run survives what a cluster does to it: SIGKILL mid-write, pre-emption signals, a full
disk, a loss that turns non-finite (the tiny recipe on the CPU)."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from varestorer.checkpoints import list_checkpoints
from varestorer.distill.checkpointing import TRAINABLE_FILE, check_checkpoint
from varestorer.distill.recipe import load_recipe
from varestorer.errors import CheckpointError, ConfigError, TrainingStopped

REPO = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("train_probe.py")
COMMON = [
    "train.report_to=none",
    "train.checkpointing_steps=2",
    "train.validation_steps=100",
    "train.checkpoints_total_limit=null",
]


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def train_here(out: Path, *overrides: str):
    from varestorer.distill.trainer import train

    _reset_accelerate()
    return train(load_recipe("tiny", [f"train.output_dir={out}", *COMMON, *overrides]))


def final_weights(out: Path) -> dict:
    final = out / "final"
    return {**load_file(str(final / "adapter_model.safetensors")), **load_file(str(final / "encoder.safetensors"))}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]


def start_probe(out: Path, *overrides: str, slow_at: int = 0) -> subprocess.Popen:
    # the threads of this process: a different count changes float sums, and the weights with them
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
        "PROBE_SLOW_CHECKPOINT_AT": str(slow_at),
    }
    return subprocess.Popen(
        [sys.executable, str(PROBE), f"train.output_dir={out}", *COMMON, *overrides],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen, text: str) -> None:
    for line in proc.stdout:
        if text in line:
            return
    raise AssertionError(f"the run ended without printing {text!r}: {proc.stderr.read()[-2000:]}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """An uninterrupted 6-step run's final adapter and encoder."""
    out = tmp_path_factory.mktemp("reference")
    train_here(out, "train.max_steps=6")
    return final_weights(out)


@pytest.mark.slow
def test_a_run_killed_during_and_between_checkpoint_writes_resumes_to_the_same_weights(tmp_path, reference):
    out = tmp_path / "run"
    # 1. SIGKILL while checkpoint-4 is being written: only its .partial folder exists
    proc = start_probe(out, "train.max_steps=6", slow_at=4)
    wait_for_line(proc, "WRITING 4")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    assert (out / ".checkpoint-4.partial").is_dir()
    # 2. resume, and SIGKILL again just after checkpoint-4 is complete (mid-step 5)
    proc = start_probe(out, "train.max_steps=6", "train.resume_from_checkpoint=latest", slow_at=4)
    wait_for_line(proc, "WRITING 4")
    while not (out / "checkpoint-4").is_dir():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (out / ".checkpoint-4.partial").exists()
    # 3. resume to the end
    train_here(out, "train.max_steps=6", "train.resume_from_checkpoint=latest")
    assert_same_weights(final_weights(out), reference)
    for ckpt in list_checkpoints(out):  # everything left on disk is complete and loads
        assert check_checkpoint(ckpt) is None, ckpt
        load_file(str(ckpt / TRAINABLE_FILE))
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]


REPLACE_AND_DIE = """
import os, shutil, sys
from pathlib import Path
from varestorer import outputs
from varestorer.distill import checkpointing as c

out, die_at, what = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ops = 0

def counted(fn):
    def op(*args, **kwargs):
        global ops
        ops += 1
        if ops == die_at:
            os._exit(137)  # killed here, nothing cleaned up
        return fn(*args, **kwargs)
    return op

class Patched:  # the module with its renames and deletions counted
    def __init__(self, real, **fns):
        self.real, self.fns = real, fns
    def __getattr__(self, name):
        return self.fns.get(name) or getattr(self.real, name)

for m in (c, outputs):
    m.os = Patched(os, replace=counted(os.replace))
    m.shutil = Patched(shutil, rmtree=counted(shutil.rmtree))
writing = c.atomic_folder(out / "checkpoint-5") if what == "checkpoint" else outputs.replacing_folder(out / "export")
with writing as tmp:  # written again over the complete one
    (tmp / "weights").write_text("new")
print(ops)
"""


@pytest.mark.parametrize("what, name", [("checkpoint", "checkpoint-5"), ("export", "export")])
def test_a_folder_written_again_is_complete_under_its_name_whenever_the_process_is_killed(tmp_path, what, name):
    """A checkpoint (rotation) or an export (--overwrite) is written beside its place, the old one
    renamed aside, the new one renamed in, the old one deleted: killed after any of these steps,
    the next start finds a complete folder under the name (the old or the new), never none, and
    nothing left beside it (deleting the old folder first lost it for good; an export's aside copy
    and partial were left under random names that nothing removed)."""
    from varestorer.distill.checkpointing import remove_partials
    from varestorer.outputs import recover_folder

    def attempt(die_at: int, tag: str = "") -> tuple[int, str, str]:
        out = tmp_path / f"{die_at}{tag}"
        (out / name).mkdir(parents=True)
        (out / name / "weights").write_text("old")
        r = subprocess.run(
            [sys.executable, "-c", REPLACE_AND_DIE, str(out), str(die_at), what], capture_output=True, text=True
        )
        remove_partials(out) if what == "checkpoint" else recover_folder(out / name)  # what the next run does
        assert sorted(p.name for p in out.iterdir()) == [name], (die_at, r.stderr, list(out.iterdir()))
        return r.returncode, (out / name / "weights").read_text(), r.stdout

    code, content, steps = attempt(10**6)  # not killed: the steps counted
    assert code == 0 and content == "new" and int(steps) >= 2
    for die_at in range(1, int(steps) + 1):
        code, content, _ = attempt(die_at)
        assert code == 137 and content in ("old", "new"), (die_at, code, content)
    # killed once the new folder is in place, the next start keeps the new one
    assert attempt(int(steps), "again")[1] == "new"


def test_resume_latest_skips_a_damaged_checkpoint_with_a_warning_and_takes_the_one_before(tmp_path, reference, caplog):
    out = tmp_path / "run"
    train_here(out, "train.max_steps=4")
    damaged = out / "checkpoint-4" / TRAINABLE_FILE
    damaged.write_bytes(damaged.read_bytes()[:-100])  # truncated
    assert "bytes" in check_checkpoint(out / "checkpoint-4")
    train_here(out, "train.max_steps=6", "train.resume_from_checkpoint=latest")
    assert "skipping" in caplog.text and "checkpoint-4" in caplog.text
    assert_same_weights(final_weights(out), reference)


def test_resuming_from_a_named_damaged_checkpoint_says_what_is_wrong(tmp_path):
    out = tmp_path / "run"
    train_here(out, "train.max_steps=2")
    (out / "checkpoint-2" / "scheduler.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="scheduler.bin has 0 bytes"):
        train_here(out, "train.max_steps=4", "train.resume_from_checkpoint=checkpoint-2")


@pytest.mark.slow
def test_sigterm_finishes_the_step_writes_a_checkpoint_and_exits_with_how_to_resume(tmp_path, reference):
    out = tmp_path / "run"
    proc = start_probe(out, "train.max_steps=6", slow_at=2)
    wait_for_line(proc, "WRITING 2")
    proc.send_signal(signal.SIGTERM)  # arrives while checkpoint-2 is written: step 3 still runs
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "SIGTERM received: stopped after step 3 of 6" in err and "resume_from_checkpoint=latest" in err
    assert "Traceback" not in err
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-3"]
    assert check_checkpoint(out / "checkpoint-3") is None
    train_here(out, "train.max_steps=6", "train.resume_from_checkpoint=latest")
    assert_same_weights(final_weights(out), reference)


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one_and_says_so(tmp_path, monkeypatch):
    import varestorer.distill.checkpointing as checkpointing

    write = checkpointing.write_manifest

    def full_at_4(folder, step, digest):
        if step == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(folder, step, digest)

    monkeypatch.setattr(checkpointing, "write_manifest", full_at_4)
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match="the disk is full.*checkpoint-2 is intact"):
        train_here(out, "train.max_steps=6", "train.checkpoints_total_limit=1")
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    assert check_checkpoint(out / "checkpoint-2") is None
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]


def test_a_full_disk_during_the_final_export_leaves_no_half_written_folder(tmp_path, monkeypatch):
    import varestorer.distill.trainer

    def full(folder, repo_id):  # the model card is the export's last file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(varestorer.distill.trainer, "render_card", full)
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match="writing final .* the disk is full"):
        train_here(out, "train.max_steps=2")
    assert not (out / "final").exists() and not (out / ".final.partial").exists()
    assert check_checkpoint(out / "checkpoint-2") is None


def test_a_non_finite_step_is_skipped_without_touching_the_weights_and_counted(tmp_path, monkeypatch):
    from varestorer.distill.model import DistillModel

    forward, calls = DistillModel.forward, []

    def nan_on_third(self, batch):
        out = forward(self, batch)
        calls.append(1)
        if len(calls) == 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(DistillModel, "forward", nan_on_third)
    out = tmp_path / "run"
    logs = train_here(out, "train.max_steps=4", "train.checkpointing_steps=1")
    assert logs["skipped_steps"] == 1
    two, three = (
        load_file(str(out / "checkpoint-2" / TRAINABLE_FILE)),
        load_file(str(out / "checkpoint-3" / TRAINABLE_FILE)),
    )
    assert all(torch.equal(two[k], three[k]) for k in two)  # step 3 changed nothing
    four = load_file(str(out / "checkpoint-4" / TRAINABLE_FILE))
    assert any(not torch.equal(three[k], four[k]) for k in three)  # step 4 trained again
    assert (out / "final").is_dir()


def test_a_diverged_run_stops_naming_the_last_good_checkpoint_and_never_writes_nan_weights(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped, match=r"not finite for 3 steps in a row.*lower|not finite \(") as err:
        train_here(
            out, "optim.lr=1e6", "train.max_steps=40", "train.max_nonfinite_steps=3", "train.checkpointing_steps=1"
        )
    assert "optim.lr" in str(err.value)
    assert not (out / "final").exists()
    for ckpt in list_checkpoints(out):
        state = load_file(str(ckpt / TRAINABLE_FILE))
        assert all(torch.isfinite(v).all() for v in state.values()), ckpt
        export = load_file(str(ckpt / "export" / "adapter_model.safetensors"))
        assert all(torch.isfinite(v).all() for v in export.values()), ckpt


def test_a_second_training_into_the_same_output_dir_is_refused_while_the_first_runs(tmp_path):
    from varestorer.distill.checkpointing import run_lock

    out = tmp_path / "run"
    with run_lock(out):  # the first run
        with pytest.raises(ConfigError, match="another training is writing to .* another train.output_dir"):
            train_here(out, "train.max_steps=1")
    train_here(out, "train.max_steps=1")  # released however the first ended: no stale lock


def test_errors_print_one_paragraph_and_exit_2_and_debug_shows_the_traceback(tmp_path, capsys):
    from varestorer.cli import main

    bad = ["train", "--recipe", "tiny", "optim.lr=-1", f"train.output_dir={tmp_path}"]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("varestorer train: error: optim.lr must be > 0") and "Traceback" not in err
    with pytest.raises(ConfigError):
        main(["--debug", *bad])


@pytest.mark.slow
def test_sigterm_to_a_two_process_run_stops_every_process_at_the_same_step(tmp_path):
    """torchrun forwards SIGTERM to its workers; they agree (all-reduce) to stop after the same
    step and write one complete checkpoint with both processes' random states."""
    out = tmp_path / "run"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "true",
        "PROBE_SLOW_CHECKPOINT_AT": "2",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(PROBE),
            f"train.output_dir={out}",
            *COMMON,
            "train.max_steps=6",
            "train.global_batch_size=4",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_line(proc, "WRITING 2")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert err.count("SIGTERM received: stopped after step 3 of 6") == 2, err[-3000:]
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-3"]
    assert check_checkpoint(out / "checkpoint-3") is None
    assert {p.name for p in (out / "checkpoint-3").glob("random_states_*.pkl")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }
