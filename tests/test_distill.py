"""The distillation step and trainer on the tiny preset (CPU)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from varestorer.distill.data import collate
from varestorer.distill.model import TRAINABLE_FILE, VARestorerModel
from varestorer.distill.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


def tiny_recipe(tmp_path, *overrides):
    return load_recipe("tiny", [f"train.output_dir={tmp_path / 'run'}", "train.report_to=none", *overrides])


def fixed_batch(n=2, size=64):
    from varestorer.data.samples import SampleImages

    data = SampleImages(size, random_crop=False)
    return collate([data[i] for i in range(n)])


@pytest.fixture
def model(tmp_path):
    torch.manual_seed(0)
    return VARestorerModel.from_recipe(tiny_recipe(tmp_path))


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(model):
    # The tiny base is random, so most of the MSE is out of the student's reach (its decoder is
    # untrained): 12 steps take the loss down by about 9%. A wrong gradient (sign, detach,
    # straight-through) leaves it flat or makes it grow.
    batch = fixed_batch()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        out = model(batch)
        out["loss"].backward()
        opt.step()
        opt.zero_grad()
        losses.append(out["loss"].item())
    assert sum(losses[-3:]) / 3 < 0.95 * losses[0], losses


def test_each_loss_term_is_nonzero_with_gradients_only_on_lora_and_encoder(model):
    batch = fixed_batch()
    lora = {n for n, p in model.named_parameters() if "lora_" in n}
    encoder = {f"lq_encoder.{n}" for n, _ in model.lq_encoder.named_parameters()}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == lora | encoder
    for term in ("kl", "lpips", "mse"):
        model.zero_grad(set_to_none=True)
        out = model(batch)
        assert out[term].item() > 0, term
        # the logged (detached) value equals the differentiable term recomputed here
        x_hq, x_lq, seeds = model.degrade(batch)
        text = model._text(batch["caption"], seeds)
        t_logits = model.teacher_logits(text, model.vae.tokenize(x_hq, model.schedule))
        s_logits = model.student_logits(text, model.lq_tokens(x_lq))
        from varestorer.distill.losses import bitwise_kl

        x_s = model.decode_student(s_logits)
        value = {"kl": lambda: bitwise_kl(t_logits, s_logits, model.schedule),
                 "lpips": lambda: model.lpips(x_s, x_hq).mean(),
                 "mse": lambda: torch.nn.functional.mse_loss(x_s, x_hq)}[term]()
        torch.testing.assert_close(value.detach(), out[term])
        value.backward()
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert with_grad <= lora | encoder, with_grad - (lora | encoder)
        assert with_grad & lora, term  # LoRA learns from every term
        assert with_grad & encoder, term  # and so does the encoder, through the straight-through estimator
    assert all(p.grad is None for p in model.vae.decoder.parameters())


def test_zero_lora_and_untouched_encoder_reproduce_the_base_full_attention_pass(model):
    batch = fixed_batch()
    with torch.no_grad():
        x_hq, x_lq, seeds = model.degrade(batch)
        text = model._text(batch["caption"], seeds)
        student = model.student_logits(text, model.lq_tokens(x_lq))
        base = model.base_transformer()
        with model.transformer.disable_adapter():
            reference = base(text, model.vae.tokenize(x_lq, model.schedule).teacher_input_sequence(),
                             model.schedule, attention="full")
    assert torch.equal(student, reference)


def test_teacher_is_the_student_without_adapters_one_copy_of_the_weights(model):
    batch = fixed_batch()
    x_hq, _, seeds = model.degrade(batch)
    text = model._text(batch["caption"], seeds)
    tokens = model.vae.tokenize(x_hq, model.schedule)
    before = model.teacher_logits(text, tokens)
    base_ptrs = {p.data_ptr() for n, p in model.named_parameters() if "lora_" not in n}
    assert model.teacher is None  # no second copy
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    for _ in range(2):
        model(batch)["loss"].backward()
        opt.step()
        opt.zero_grad()
    assert {p.data_ptr() for n, p in model.named_parameters() if "lora_" not in n} == base_ptrs
    assert torch.equal(model.teacher_logits(text, tokens), before)  # the teacher did not move
    with torch.no_grad():
        student = model.transformer(text, tokens.teacher_input_sequence(), model.schedule, attention="causal")
    assert not torch.equal(student, before)  # the student did


def _trainable(path):
    return load_file(str(path / TRAINABLE_FILE))


def test_resume_continues_the_exact_trajectory(tmp_path):
    from varestorer.distill.trainer import train

    common = ["train.checkpointing_steps=2", "train.validation_steps=100", "train.checkpoints_total_limit=null"]
    _reset_accelerate()
    train(load_recipe("tiny", [f"train.output_dir={tmp_path / 'a'}", "train.report_to=none", "train.max_steps=4", *common]))
    _reset_accelerate()
    train(load_recipe("tiny", [f"train.output_dir={tmp_path / 'b'}", "train.report_to=none", "train.max_steps=2", *common]))
    _reset_accelerate()
    train(load_recipe("tiny", [f"train.output_dir={tmp_path / 'b'}", "train.report_to=none", "train.max_steps=4",
                               "train.resume_from_checkpoint=latest", *common]))
    a, b = _trainable(tmp_path / "a" / "checkpoint-4"), _trainable(tmp_path / "b" / "checkpoint-4")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    # and the run moved: step-2 and step-4 weights differ
    two = _trainable(tmp_path / "a" / "checkpoint-2")
    assert any(not torch.equal(two[k], a[k]) for k in a)
    # a checkpoint carries the export form
    export = tmp_path / "a" / "checkpoint-4" / "export"
    assert {"adapter_model.safetensors", "adapter_config.json", "encoder.safetensors", "varestorer_config.json"} <= {
        p.name for p in export.iterdir()}
    assert (tmp_path / "a" / "validation" / "step-000004.png").is_file()
    assert (tmp_path / "a" / "losses.png").is_file()


def test_checkpoints_total_limit_prunes_old_checkpoints(tmp_path):
    from varestorer.distill.trainer import list_checkpoints, train

    _reset_accelerate()
    train(load_recipe("tiny", [f"train.output_dir={tmp_path}", "train.report_to=none", "train.max_steps=3",
                               "train.checkpointing_steps=1", "train.checkpoints_total_limit=2",
                               "train.validation_steps=100"]))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]


def test_two_processes_match_one_process_at_the_same_global_batch(tmp_path):
    """DDP over gloo with 2 CPU processes x batch 2 == 1 process x batch 4 (tolerance 1e-5)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--recipe", "tiny", "train.max_steps=2", "train.checkpointing_steps=2", "train.validation_steps=100",
            "train.report_to=none", "train.global_batch_size=4"]
    for n, out in ((1, tmp_path / "one"), (2, tmp_path / "two")):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", str(n),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(REPO / "distill.py"), *args, f"train.output_dir={out}"]
        res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    one, two = _trainable(tmp_path / "one" / "checkpoint-2"), _trainable(tmp_path / "two" / "checkpoint-2")
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=1e-4, atol=1e-5, msg=k)


def test_bench_train_prints_its_figures(capsys):
    import json

    from varestorer.cli import main

    assert main(["bench", "train", "--preset", "tiny", "--batch", "2", "--steps", "1", "--warmup", "0", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["trainable_params"] > 0 and r["sec_per_step"] > 0 and r["images_per_sec"] > 0
    assert r["flops_per_step"] > 0 and r["peak_rss_gib"] > 0


def test_push_to_hub_needs_a_repo_id(tmp_path):
    from varestorer.errors import ConfigError

    with pytest.raises(ConfigError, match="hub_model_id"):
        tiny_recipe(tmp_path, "train.push_to_hub=true")
