"""Damaged model files and run folders, through the real CLI: each is refused with one paragraph
naming the file and the fix (exit code 2, no traceback), never restored into a silent wrong result,
and a run folder holding another run is never written over unless asked."""

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from conftest import exported_student
from PIL import Image
from safetensors.torch import load_file, save_file

from varestorer.checkpoints import list_checkpoints
from varestorer.cli import main

try:
    from test_bad_input import assert_refused, run
except ImportError:  # moved to conftest
    from conftest import assert_refused, run

ADAPTER = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
CONFIG = "varestorer_config.json"


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A tiny export (its LoRA moved away from zero) with a tiny stage-1 restorer added, to damage."""
    from varestorer.restorer import save_restorer
    from varestorer.restorer.swinir import TINY_CONFIG, SwinIR

    folder = exported_student(tmp_path_factory.mktemp("bad-models"))[1]
    torch.manual_seed(0)
    save_restorer(SwinIR(**TINY_CONFIG), folder / "restorer.safetensors")
    config = json.loads((folder / CONFIG).read_text())
    (folder / CONFIG).write_text(json.dumps({**config, "restorer": "restorer.safetensors"}))
    return folder


def damaged(export: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(export, copy)
    return copy


def restore(capsys, model, tmp_path: Path) -> tuple[int, str]:
    image = tmp_path / "lq.png"
    Image.new("RGB", (16, 16), (90, 120, 60)).save(image)
    return run(capsys, "restore", image, "-o", tmp_path / "restored", "--model", model, "--caption", "none")


def assert_restore_refused(capsys, model, tmp_path, *fragments):
    assert_refused(*restore(capsys, model, tmp_path), "restore", *fragments)
    assert not (tmp_path / "restored").exists() or not list((tmp_path / "restored").iterdir())


def test_the_undamaged_export_restores(export, tmp_path, capsys):
    code, err = restore(capsys, export, tmp_path)
    assert code == 0, err
    assert (tmp_path / "restored" / "lq.png").is_file()


@pytest.mark.parametrize(
    "name, value",
    [
        (ADAPTER, float("nan")),
        (ADAPTER, float("inf")),
        ("encoder.safetensors", float("nan")),
        ("base_transformer.safetensors", float("nan")),
        ("base_vae.safetensors", float("-inf")),
        ("merged_transformer.safetensors", float("nan")),
        ("restorer.safetensors", float("nan")),
    ],
)
def test_weights_that_are_not_finite_are_refused_naming_the_file_and_the_tensor(export, tmp_path, capsys, name, value):
    """An all-NaN adapter (a diverged run's) used to restore every image to the same one, exit code 0."""
    from safetensors import safe_open

    model = damaged(export, tmp_path)
    source = model / ("base_transformer.safetensors" if name == "merged_transformer.safetensors" else name)
    with safe_open(source, "pt") as f:  # the restorer's file carries its config here
        metadata = f.metadata()
    state = load_file(str(source))
    key = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    for k in state if name == ADAPTER else [key]:
        state[k] = torch.full_like(state[k], value)
    save_file(state, str(model / name), metadata=metadata)
    named = "lora_" if name == ADAPTER else f"{key} has {state[key].numel()} NaN or infinite values"
    assert_restore_refused(capsys, model, tmp_path, f"{model / name} holds weights that are not finite", named)


def test_weights_that_are_not_finite_are_neither_exported_nor_published(export, tmp_path, capsys):
    model = damaged(export, tmp_path)
    state = load_file(str(model / ADAPTER))
    save_file({k: torch.full_like(v, float("nan")) for k, v in state.items()}, str(model / ADAPTER))
    said = f"{model / ADAPTER} holds weights that are not finite"
    assert_refused(*run(capsys, "export", model, tmp_path / "out", "--samples", "0"), "export", said)
    assert not (tmp_path / "out").exists()
    assert_refused(*run(capsys, "publish", model, "--repo-id", "me/model", "--dry-run"), "publish", said)


@pytest.mark.parametrize("part", ["lora_up.weight", "ffn.fc1.weight"])
def test_a_release_whose_lora_or_base_is_not_finite_is_not_imported(export, tmp_path, capsys, part):
    """The base is checked tensor by tensor as it is written (never read whole): its NaN too is
    refused, and the half-written folder is gone."""
    from test_release import RANK, _release_state

    state = _release_state()
    key = next(k for k in state if k.endswith(part))
    state[key] = torch.full_like(state[key], float("nan"))
    torch.save(state, tmp_path / "varestorer.pth")
    argv = ["import-release", tmp_path / "varestorer.pth", "-o", tmp_path / "out", "--preset", "tiny"]
    code, err = run(capsys, *argv, "--rank", RANK, "--vae", export / "base_vae.safetensors")
    assert_refused(code, err, "import-release", f"{tmp_path / 'varestorer.pth'} holds weights that are not finite")
    assert not (tmp_path / "out").exists()


def test_publish_refuses_a_config_whose_recipe_lacks_what_the_card_states(export, tmp_path, capsys):
    model = damaged(export, tmp_path)
    config = json.loads((model / CONFIG).read_text())
    del config["recipe"]["data"]
    (model / CONFIG).write_text(json.dumps(config))
    code, err = run(capsys, "publish", model, "--repo-id", "me/model", "--dry-run")
    assert_refused(code, err, "publish", f"{model / CONFIG}: its recipe lacks data.dataset", "re-export")


def test_a_restorer_whose_config_metadata_is_not_json_is_refused_naming_it(export, tmp_path, capsys):
    model = damaged(export, tmp_path)
    path = model / "restorer.safetensors"
    save_file(load_file(str(path)), str(path), metadata={"swinir_config": "{not json"})
    assert_restore_refused(capsys, model, tmp_path, f"{path}: its swinir_config metadata is not valid JSON")


def _header(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _with_header(path: Path, header: bytes, length: int | None = None) -> None:
    body = _header(path)[1]
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + body)


def _offsets_past_the_end(path: Path) -> None:
    header, _ = _header(path)
    key = next(k for k in header if k != "__metadata__")
    header[key]["data_offsets"] = [0, 10**9]
    _with_header(path, json.dumps(header).encode())


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[:1000]), id="truncated"),
        pytest.param(lambda p: p.write_bytes(b""), id="empty"),
        pytest.param(lambda p: p.write_bytes(struct.pack("<Q", 2**60) + p.read_bytes()[8:]), id="huge-header"),
        pytest.param(lambda p: _with_header(p, b"this is not json, not at all"), id="header-not-json"),
        pytest.param(_offsets_past_the_end, id="offsets-past-the-end"),
    ],
)
@pytest.mark.parametrize("name", [ADAPTER, "encoder.safetensors"])
def test_a_damaged_weights_file_is_refused_naming_it_and_the_fix(export, tmp_path, capsys, damage, name):
    model = damaged(export, tmp_path)
    damage(model / name)
    assert_restore_refused(capsys, model, tmp_path, f"cannot read checkpoint {model / name}", "get or copy it again")


@pytest.mark.parametrize(
    "change, fragments",
    [
        (lambda c: [c], ["holds a list, not an object"]),
        (lambda c: {k: v for k, v in c.items() if k != "resolution"}, ["lacks resolution"]),
        (lambda c: {**c, "attention": "sparse"}, ["attention='sparse' is not one of full, causal"]),
        (lambda c: {**c, "lq_input": "bogus"}, ["lq_input='bogus' is not one of"]),
        (lambda c: {**c, "resolution": 0}, ["resolution=0 is not a side in pixels"]),
        (lambda c: {**c, "resolution": 65}, ["resolution=65 does not fit its scale schedule", "8x8 tokens"]),
        (lambda c: {**c, "resolution": 10**6}, ["resolution=1000000 does not fit its scale schedule"]),
        (lambda c: {**c, "upscale": "x4"}, ["upscale='x4' must be a positive number"]),
        (lambda c: {**c, "upscale": -2}, ["upscale=-2 must be a positive number"]),
        (lambda c: {**c, "use_captions": "no"}, ["use_captions='no' must be true or false"]),
        (lambda c: {**c, "transformer_config": [1]}, ["transformer_config must be a JSON object"]),
        (lambda c: {**c, "transformer_config": {"depth": "x"}}, ["transformer_config describes no transformer"]),
        (lambda c: {**c, "has_adapter": False}, ["says has_adapter: false"]),
    ],
)
def test_a_damaged_export_config_is_refused_naming_the_field(export, tmp_path, capsys, change, fragments):
    model = damaged(export, tmp_path)
    (model / CONFIG).write_text(json.dumps(change(json.loads((model / CONFIG).read_text()))))
    assert_restore_refused(capsys, model, tmp_path, CONFIG, "re-export", *fragments)


def _adapter_config(change):
    def write(path: Path) -> None:
        path.write_text(json.dumps(change(json.loads(path.read_text()))))

    return write


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda p: p.write_text(""), "is not valid JSON"),
        (lambda p: p.write_text("{'r': 4,"), "is not valid JSON"),
        (lambda p: p.write_text("[]"), "holds a JSON list"),
        (_adapter_config(lambda c: {**c, "peft_type": "IA3"}), "describes an adapter of type 'IA3', not a LoRA"),
        (_adapter_config(lambda c: {**c, "r": 0}), "gives the rank r=0"),
        (lambda p: p.unlink(), "does not exist"),
    ],
)
def test_a_broken_adapter_config_is_named_not_blamed_on_another_base(export, tmp_path, capsys, damage, problem):
    model = damaged(export, tmp_path)
    damage(model / ADAPTER_CONFIG)
    code, err = restore(capsys, model, tmp_path)
    assert_refused(code, err, "restore", f"{model / ADAPTER_CONFIG} {problem}", "re-export the model")
    assert "--base" not in err and "another base" not in err


def test_a_mistyped_local_path_is_not_reported_as_a_network_failure(export, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    shutil.copytree(export, tmp_path / "runs" / "tiny")
    code, err = restore(capsys, "runs/tinyy", tmp_path)  # one slash: it looks like a Hub repo id
    assert_refused(code, err, "restore", "no such folder runs/tinyy", "and no Hub repo runs/tinyy", "Check the path")
    code, err = restore(capsys, "runs/tinyy/final", tmp_path)
    assert_refused(code, err, "restore", "no such folder runs/tinyy/final")
    assert restore(capsys, "runs/tiny", tmp_path)[0] == 0


@pytest.mark.parametrize(
    "text", ["{not json", "", "[1, 2]", '{"div2k": {"psnr": "high"}}'], ids=["not-json", "empty", "list", "strings"]
)
def test_a_damaged_evaluation_file_is_refused_by_publish_and_before_evaluate_records(export, tmp_path, capsys, text):
    model = damaged(export, tmp_path)
    (model / "evaluation.json").write_text(text)
    code, err = run(capsys, "publish", model, "--repo-id", "me/model", "--dry-run")
    assert_refused(code, err, "publish", f"{model / 'evaluation.json'} is not", "fix it or delete it")
    (tmp_path / "lq").mkdir()
    Image.new("RGB", (16, 16), (90, 120, 60)).save(tmp_path / "lq" / "a.png")
    argv = ["evaluate", "--model", model, "--lq", tmp_path / "lq", "--gt", tmp_path / "lq", "--out", tmp_path / "ev"]
    code, err = run(capsys, *argv, "--record", "set", "--caption", "none", "--metrics", "psnr", "--device", "cpu")
    assert_refused(code, err, "evaluate", f"{model / 'evaluation.json'} is not", "fix it or delete it")
    assert not (tmp_path / "ev").exists()  # said before the work
    assert (model / "evaluation.json").read_text() == text


# ---------------------------------------------------------------------- run folders
def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def train(capsys, out: Path, *args: str) -> tuple[int, str]:
    _reset_accelerate()
    common = ["train.report_to=none", "train.validation_steps=100", "train.checkpointing_steps=2"]
    return run(capsys, "train", "--recipe", "tiny", f"train.output_dir={out}", *common, *args)


def _snapshot(out: Path) -> dict:
    """Every file of a run folder but the lock (a refused run takes it too, and writes its pid)."""
    files = [p for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".varestorer-train.lock"]
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    """A finished 4-step tiny run: checkpoint-2, checkpoint-4, final/, losses.jsonl."""
    import io
    from contextlib import redirect_stderr

    out = tmp_path_factory.mktemp("first") / "run"
    _reset_accelerate()
    with redirect_stderr(io.StringIO()):
        argv = ["train", "--recipe", "tiny", f"train.output_dir={out}", "train.report_to=none", "train.max_steps=4"]
        assert main([*argv, "train.validation_steps=100", "train.checkpointing_steps=2"]) == 0
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    return out


def test_a_second_training_into_a_finished_run_is_refused_and_overwrite_moves_the_old_run_aside(
    first_run, tmp_path, capsys
):
    out = tmp_path / "run"
    shutil.copytree(first_run, out)
    before = _snapshot(out)
    other = ["optim.lr=2e-4", "train.max_steps=2", "train.checkpoints_total_limit=1"]
    code, err = train(capsys, out, *other)
    assert_refused(
        code, err, "train", "holds another run", "checkpoint-2/, checkpoint-4/, final/, losses.jsonl",
        "train.resume_from_checkpoint=latest", "--overwrite",
    )  # fmt: skip
    assert _snapshot(out) == before  # nothing written, nothing replaced
    bare = tmp_path / "bare"  # resume=latest with no checkpoint left to take is a new run there
    shutil.copytree(out, bare, ignore=shutil.ignore_patterns("checkpoint-*"))
    code, err = train(capsys, bare, *other, "train.resume_from_checkpoint=latest")
    assert_refused(code, err, "train", "holds another run (final/, losses.jsonl", "--overwrite")
    assert "resume_from_checkpoint=latest" not in err
    code, err = train(capsys, out, *other, "--overwrite")
    assert code == 0, err
    # the new run alone: its checkpoint kept (the old run's higher steps no longer prune it), its losses
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    assert [json.loads(line)["step"] for line in (out / "losses.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((out / "recipe.json").read_text())["optim"]["lr"] == 2e-4
    (aside,) = out.glob("replaced-*")  # the old run, moved whole, not deleted
    assert _snapshot(aside) == before


def test_a_run_folder_given_as_a_model_names_its_export(first_run, tmp_path, capsys):
    said = "is a training run or checkpoint, not an export: pass its export"
    assert_restore_refused(capsys, first_run, tmp_path, said, str(first_run / "final"))
    checkpoint = first_run / "checkpoint-2"
    assert_restore_refused(capsys, checkpoint, tmp_path, said, str(checkpoint / "export"))


def test_resuming_an_earlier_checkpoint_is_refused_while_the_later_ones_are_there(first_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(first_run, out)
    before = _snapshot(out)
    resume = ["train.max_steps=3", "train.checkpointing_steps=1", "train.resume_from_checkpoint=checkpoint-2"]
    code, err = train(capsys, out, *resume)
    assert_refused(code, err, "train", "what the run did after checkpoint-2 (checkpoint-4, final)", "--overwrite")
    assert _snapshot(out) == before
    code, err = train(capsys, out, *resume, "--overwrite")
    assert code == 0, err
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-3"]
    (aside,) = out.glob("replaced-*")
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint-4", "final"]
    code, err = train(capsys, out, "train.max_steps=6", "train.resume_from_checkpoint=final")
    assert_refused(code, err, "train", "is an exported model, not a checkpoint", "model.init_from=")


def test_an_export_missing_its_travelling_base_names_the_missing_file_not_another_base(export, tmp_path, capsys):
    model = damaged(export, tmp_path)
    (model / "base_transformer.safetensors").unlink()  # a random-init base: it travels with the export
    assert_restore_refused(capsys, model, tmp_path, "lacks base_transformer.safetensors", "copy the folder again")


def test_an_adapter_config_naming_layers_the_base_lacks_names_that_file(export, tmp_path, capsys):
    model = damaged(export, tmp_path)
    config = json.loads((model / "adapter_config.json").read_text())
    (model / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["no_such_layer"]}))
    assert_restore_refused(
        capsys, model, tmp_path, f"{model / 'adapter_config.json'} names layers", "damaged or belongs to another model"
    )
