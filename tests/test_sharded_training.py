"""FSDP2 (``launch/fsdp.yaml``), DeepSpeed ZeRO-2 (``launch/deepspeed-zero2.yaml``) and ZeRO-3 through
accelerate's own FSDP and DeepSpeed paths, in 2 CPU processes over gloo (``tests/launch_probe.py``
says how): they train as DDP does (a NaN step skipped included; validation and the export with
sharded weights), DeepSpeed's checkpoints hold only what trains, a resumed run continues the same
trajectory, and a launch config the trainer cannot honour is refused."""

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
PROBE = TESTS / "launch_probe.py"
# 4 steps, the 3rd one's loss NaN (on every process), a checkpoint every step, a validation grid
# every 2, and gradients clipped hard (to 1e-3: every step is clipped)
CLIP = 1e-3
ARGS = [
    f"optim.max_grad_norm={CLIP}",
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
    config = {**config, "zero_stage": stage, "gradient_clipping": CLIP, **override}
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


def fsdp_env(config_file: str = "fsdp.yaml", **override) -> dict:
    """What ``accelerate launch --config_file launch/CONFIG_FILE`` puts in the environment."""
    config = yaml.safe_load((TESTS.parent / "launch" / config_file).read_text())["fsdp_config"]
    config = {**config, **override}
    names = {"fsdp_transformer_layer_cls_to_wrap": "FSDP_TRANSFORMER_CLS_TO_WRAP"}
    env = {names.get(k, k.upper()): str(v).lower() if isinstance(v, bool) else str(v) for k, v in config.items()}
    return {"ACCELERATE_USE_CPU": "false", "ACCELERATE_USE_FSDP": "true", **env}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """DDP, FSDP2, ZeRO-2 and ZeRO-3 runs of the same recipe; FSDP2 and ZeRO-2 resumed from their checkpoint-2."""
    root = tmp_path_factory.mktemp("deepspeed")

    def run(name: str, env: dict, *args: str) -> Path:
        res = launch_processes(2, PROBE, *ARGS, f"train.output_dir={root / name}", *args, cwd=root, env=env)
        kind = (
            "DEEPSPEED"
            if "ACCELERATE_USE_DEEPSPEED" in env
            else "FSDP"
            if "ACCELERATE_USE_FSDP" in env
            else "MULTI_CPU"
        )
        assert f"2 processes ({kind}, cpu)" in res.stdout  # really that backend, really 2 processes
        return root / name

    envs = {"ddp": {}, "fsdp": fsdp_env(), "zero2": deepspeed_env(2), "zero3": deepspeed_env(3)}
    out = {name: run(name, {**env, "PROBE_NAN_AT": "3"}) for name, env in envs.items()}
    for name in ("fsdp", "zero2"):
        resumed = root / f"{name}-resumed"
        resumed.mkdir()
        shutil.copytree(out[name] / "checkpoint-2", resumed / "checkpoint-2")
        # the resumed run's first forward pass is step 3's: its loss NaN as in the uninterrupted run
        out[resumed.name] = run(
            resumed.name, {**envs[name], "PROBE_NAN_AT": "1"}, "train.resume_from_checkpoint=latest"
        )
    return out


def _exports_equal(a: Path, b: Path, atol: float = 0.0) -> None:
    for f in sorted(a.glob("*.safetensors")):
        x, y = load_file(str(f)), load_file(str(b / f.name))
        assert x.keys() == y.keys(), f.name
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=0, atol=atol, msg=lambda m: f"{f.name}: {k}: {m}")


def _losses(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("backend", ["fsdp", "zero2", "zero3"])
def test_sharded_training_trains_as_ddp_does_a_nan_step_skipped_included(runs, backend):
    ddp, run = runs["ddp"], runs[backend]
    for a, b in zip(_losses(ddp), _losses(run), strict=True):
        for k in ("loss", "mse", "lpips", "kl"):
            assert b[k] == pytest.approx(a[k], rel=1e-5, nan_ok=True), (a["step"], k)
    assert _losses(run)[-1]["skipped_steps"] == 1
    two, three = (load_file(str(run / f"checkpoint-{s}" / TRAINABLE_FILE)) for s in (2, 3))
    assert all(torch.equal(two[k], three[k]) for k in two)  # the NaN step changed no weight
    # gathered: FSDP and ZeRO-3 shard the weights. Adam moves an element by about lr whatever its
    # gradient, so where a clipped gradient is near Adam's eps another reduction order moves it by a
    # slightly different share of lr: 1e-3 of the largest move (lr 1e-3 x 3 updates) is allowed
    # (observed: up to 1.5e-6 on the encoder's biases under ZeRO-2/3, 0 to 7e-9 elsewhere)
    _exports_equal(ddp / "final", run / "final", atol=3e-6)
    # FSDP, ZeRO-3: every process ran validation's forward passes, on gathered weights
    assert (run / "validation" / "step-000004.png").is_file()


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeeds_checkpoint_holds_the_trainable_weights_and_not_the_frozen_base(runs, stage):
    ckpt = runs[f"zero{stage}"] / "checkpoint-4"
    trainable = set(load_file(str(ckpt / TRAINABLE_FILE)))
    for f in sorted((ckpt / "pytorch_model").glob("*model_states.pt")):
        state = torch.load(f, map_location="cpu", weights_only=False)  # a file this test's run wrote
        assert set(state["module"]) - set(state["buffer_names"]) == trainable, f.name


@pytest.mark.parametrize("backend", ["fsdp", "zero2"])
def test_a_resumed_sharded_run_continues_the_same_trajectory(runs, backend):
    uninterrupted, resumed = runs[backend], runs[f"{backend}-resumed"]
    assert [r["step"] for r in _losses(resumed)] == [3, 4]
    assert _losses(resumed)[-1]["loss"] == _losses(uninterrupted)[-1]["loss"]
    _exports_equal(uninterrupted / "final", resumed / "final")


def test_the_teacher_fine_tuning_fsdp_is_for_trains_as_ddp_does(tmp_path):
    # launch/fsdp.yaml is the config for full fine-tuning: the whole transformer trains and is exported
    for name, env in {"ddp": {}, "fsdp": fsdp_env()}.items():
        args = [*ARGS, "train.max_steps=2", "mode=teacher", f"train.output_dir={tmp_path / name}"]
        launch_processes(2, PROBE, *args, cwd=tmp_path, env=env)
    assert (tmp_path / "fsdp" / "final" / "transformer.safetensors").is_file()
    _exports_equal(tmp_path / "ddp" / "final", tmp_path / "fsdp" / "final", atol=1e-6)
    ddp, fsdp = _losses(tmp_path / "ddp"), _losses(tmp_path / "fsdp")
    assert [r["loss"] for r in fsdp] == pytest.approx([r["loss"] for r in ddp], rel=1e-6)


def test_in_the_launch_configs_bf16_fsdp_and_zero2_train_as_ddp_does(tmp_path):
    """FSDP2's bf16 gathers bf16 weights and DeepSpeed's casts the whole module to bf16: both met
    the model's float32 parts and failed at the first step. The trainer keeps the weights float32
    and autocasts, as DDP does: FSDP2 then equals DDP; ZeRO-2 all-reduces the gradients of its
    linear and convolution weights in bf16, so only the first step's loss is equal."""
    bf16 = {"ACCELERATE_MIXED_PRECISION": "bf16"}
    envs = {"ddp": bf16, "fsdp": {**fsdp_env(), **bf16}, "zero2": {**deepspeed_env(2), **bf16}}
    losses = {}
    for name, env in envs.items():
        out = tmp_path / name
        launch_processes(2, PROBE, *ARGS, "train.max_steps=2", f"train.output_dir={out}", cwd=tmp_path, env=env)
        losses[name] = [r["loss"] for r in _losses(out)]
        assert (out / "validation" / "step-000002.png").is_file(), name
    assert losses["fsdp"] == pytest.approx(losses["ddp"], rel=1e-6)
    assert losses["zero2"][0] == pytest.approx(losses["ddp"][0], rel=1e-6)
    assert losses["zero2"][1] == pytest.approx(losses["ddp"][1], rel=2e-2)


def test_the_release_trainers_step_under_fsdp_shard_grad_op_is_ddps(tmp_path):
    """The released trainer runs FSDP SHARD_GRAD_OP (--zero=2): launch/fsdp-shard-grad-op.yaml (FSDP2,
    reshard_after_forward false) trains recipes/tiny-release-trainer.yaml as DDP does, 2 processes."""
    env = fsdp_env("fsdp-shard-grad-op.yaml")
    assert env["FSDP_RESHARD_AFTER_FORWARD"] == "false"
    args = [*ARGS, "train.max_steps=3", "optim.max_grad_norm=5.0", "train.validation_steps=3"]
    for name, e in {"ddp": {}, "fsdp": env}.items():
        out = tmp_path / name
        res = launch_processes(
            2, PROBE, *args, f"train.output_dir={out}", cwd=tmp_path, env={**e, "PROBE_RECIPE": "tiny-release-trainer"}
        )
        assert f"2 processes ({'FSDP' if e else 'MULTI_CPU'}, cpu)" in res.stdout
    ddp, fsdp = _losses(tmp_path / "ddp"), _losses(tmp_path / "fsdp")
    assert [r["step"] for r in fsdp] == [1, 2, 3]
    for a, b in zip(ddp, fsdp, strict=True):
        for k in ("loss", "mse", "lpips", "cross_entropy", "lr"):
            assert b[k] == pytest.approx(a[k], rel=1e-5), (a["step"], k)
    assert all(r["kl"] == 0 for r in fsdp)
    _exports_equal(tmp_path / "ddp" / "final", tmp_path / "fsdp" / "final", atol=3e-6)


@pytest.mark.parametrize(
    "env, says",
    [
        (
            deepspeed_env(2, gradient_clipping=0.5),
            "gradient_clipping=0.5 but the recipe's optim.max_grad_norm is 0.001",
        ),
        (fsdp_env(fsdp_cpu_ram_efficient_loading=True), "Set fsdp_cpu_ram_efficient_loading: false"),
    ],
    ids=["deepspeed-clipping", "fsdp-ram-efficient-loading"],
)
def test_a_launch_config_the_trainer_cannot_honour_is_refused(tmp_path, env, says):
    out = tmp_path / "run"
    res = launch_processes(2, PROBE, *ARGS, f"train.output_dir={out}", cwd=tmp_path, env=env, check=False)
    assert res.returncode != 0
    assert says in res.stderr
    assert "]: Traceback" not in res.stderr  # the processes' own error, not a traceback ([rankN]: ...)
    assert not out.exists()  # nothing written
