"""DeepSpeed ZeRO-2 (``launch/deepspeed-zero2.yaml``) and ZeRO-3 through accelerate's own DeepSpeed
path, in 2 CPU processes over gloo (``tests/deepspeed_probe.py`` says how): they train as DDP does
(a NaN step skipped included), their checkpoints hold only what trains, a resumed run continues the
same trajectory, and a launch config that disagrees with the recipe is refused."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import launch_processes
from safetensors.torch import load_file

from varestorer.distill.checkpointing import TRAINABLE_FILE

pytestmark = pytest.mark.slow

TESTS = Path(__file__).parent
PROBE = TESTS / "deepspeed_probe.py"
# 4 steps, the 3rd one's loss NaN (on every process), a checkpoint and a validation grid every step
ARGS = [
    "train.max_steps=4",
    "train.checkpointing_steps=1",
    "train.checkpoints_total_limit=10",
    "train.validation_steps=2",
    "train.report_to=none",
    "train.global_batch_size=4",
]


def deepspeed_env(stage: int, **override) -> dict:
    """What ``accelerate launch --config_file launch/deepspeed-zero2.yaml`` puts in the environment,
    at ZeRO ``stage``."""
    config = yaml.safe_load((TESTS.parent / "launch" / "deepspeed-zero2.yaml").read_text())["deepspeed_config"]
    config = {**config, "zero_stage": stage, **override}
    return {
        "ACCELERATE_USE_CPU": "false",
        "ACCELERATE_USE_DEEPSPEED": "true",
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": str(config["zero_stage"]),
        "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": str(config["gradient_accumulation_steps"]),
        "ACCELERATE_GRADIENT_CLIPPING": str(config["gradient_clipping"]),
        "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": config["offload_optimizer_device"],
        "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": config["offload_param_device"],
        "ACCELERATE_DEEPSPEED_ZERO3_INIT": str(config["zero3_init_flag"]).lower(),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """DDP, ZeRO-2 and ZeRO-3 runs of the same recipe, and ZeRO-2 resumed from its checkpoint-2."""
    root = tmp_path_factory.mktemp("deepspeed")

    def run(name: str, env: dict, *args: str) -> Path:
        res = launch_processes(2, PROBE, *ARGS, f"train.output_dir={root / name}", *args, cwd=root, env=env)
        kind = "DEEPSPEED" if env.get("ACCELERATE_USE_DEEPSPEED") else "MULTI_CPU"
        assert f"2 processes ({kind}, cpu)" in res.stdout  # really that backend, really 2 processes
        return root / name

    out = {"ddp": run("ddp", {"PROBE_NAN_AT": "3"})}
    for stage in (2, 3):
        out[f"zero{stage}"] = run(f"zero{stage}", {**deepspeed_env(stage), "PROBE_NAN_AT": "3"})
    resumed = root / "zero2-resumed"
    resumed.mkdir()
    shutil.copytree(out["zero2"] / "checkpoint-2", resumed / "checkpoint-2")
    # the resumed run's first forward pass is step 3's: its loss NaN as in the uninterrupted run
    out["zero2-resumed"] = run(
        "zero2-resumed", {**deepspeed_env(2), "PROBE_NAN_AT": "1"}, "train.resume_from_checkpoint=latest"
    )
    return out


def _exports_equal(a: Path, b: Path, atol: float = 0.0) -> None:
    for f in sorted(a.glob("*.safetensors")):
        x, y = load_file(str(f)), load_file(str(b / f.name))
        assert x.keys() == y.keys(), f.name
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=0, atol=atol, msg=f"{f.name}: {k}")


def _losses(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_trains_as_ddp_does_a_nan_step_skipped_included(runs, stage):
    ddp, zero = runs["ddp"], runs[f"zero{stage}"]
    for a, b in zip(_losses(ddp), _losses(zero), strict=True):
        for k in ("loss", "mse", "lpips", "kl"):
            assert b[k] == pytest.approx(a[k], rel=1e-5, nan_ok=True), (a["step"], k)
    assert _losses(zero)[-1]["skipped_steps"] == 1
    two, three = (load_file(str(zero / f"checkpoint-{s}" / TRAINABLE_FILE)) for s in (2, 3))
    assert all(torch.equal(two[k], three[k]) for k in two)  # the NaN step changed no weight
    _exports_equal(ddp / "final", zero / "final", atol=1e-6)  # the export gathered (ZeRO-3 partitions it)
    assert (zero / "validation" / "step-000004.png").is_file()  # ZeRO-3: every process ran the forward passes


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeeds_checkpoint_holds_the_trainable_weights_and_not_the_frozen_base(runs, stage):
    ckpt = runs[f"zero{stage}"] / "checkpoint-4"
    trainable = set(load_file(str(ckpt / TRAINABLE_FILE)))
    for f in sorted((ckpt / "pytorch_model").glob("*model_states.pt")):
        state = torch.load(f, map_location="cpu", weights_only=False)  # a file this test's run wrote
        frozen = set(state["module"]) - trainable - set(state["buffer_names"])
        # left: the second names of weights PyTorch registers twice (T5's tied embedding, LPIPS' lins)
        assert frozen <= {"text_encoder.encoder.encoder.embed_tokens.weight"} | {
            f"lpips.lins.{i}.model.1.weight" for i in range(5)
        }, f.name
        assert trainable <= set(state["module"]), f.name


def test_a_resumed_zero2_run_continues_the_same_trajectory(runs):
    uninterrupted, resumed = runs["zero2"], runs["zero2-resumed"]
    assert [r["step"] for r in _losses(resumed)] == [3, 4]
    assert _losses(resumed)[-1]["loss"] == _losses(uninterrupted)[-1]["loss"]
    _exports_equal(uninterrupted / "final", resumed / "final")


def test_a_deepspeed_config_that_clips_otherwise_than_the_recipe_is_refused(tmp_path):
    out = tmp_path / "run"
    env = deepspeed_env(2, gradient_clipping=0.5)
    res = launch_processes(2, PROBE, *ARGS, f"train.output_dir={out}", cwd=tmp_path, env=env, check=False)
    assert res.returncode != 0
    assert "gradient_clipping=0.5 but the recipe's optim.max_grad_norm is 1" in res.stderr
    assert "optim.max_grad_norm=0.5" in res.stderr
    assert "]: Traceback" not in res.stderr  # the processes' own error, not a traceback ([rankN]: ...)
    assert not out.exists()  # nothing written
