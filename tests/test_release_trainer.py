"""The released VARestorer trainer as a recipe (recipes/varestorer-2b-512-release-trainer.yaml), pinned on
the tiny preset (recipes/tiny-release-trainer.yaml): its objective computed independently, where its
gradients go, its schedule, its LPIPS as pyiqa computes it, and the recipe's rows."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import spread_lora

from varestorer.distill import model as model_module
from varestorer.distill.dataloader import RandomHFlip, collate
from varestorer.distill.losses import gumbel_straight_through_bits, token_weights
from varestorer.distill.model import VARestorerModel
from varestorer.distill.recipe import load_recipe
from varestorer.distill.schedules import build_scheduler, lin0
from varestorer.restorer.loading import save_restorer
from varestorer.restorer.swinir import TINY_CONFIG, SwinIR


def release_recipe(tmp_path, *overrides):
    return load_recipe(
        "tiny-release-trainer", [f"train.output_dir={tmp_path / 'run'}", "train.report_to=none", *overrides]
    )


def batch(n=2, size=64):
    from varestorer.data.samples import SampleImages

    data = SampleImages(size, random_crop=False)
    return collate([data[i] for i in range(n)])


def with_restorer(tmp_path, *overrides):
    """The tiny release-trainer student with a random tiny SwinIR in front (clamped, as the release)."""
    torch.manual_seed(1)
    path = tmp_path / "restorer.safetensors"
    save_restorer(SwinIR(**TINY_CONFIG), path)
    torch.manual_seed(0)
    return VARestorerModel.from_recipe(release_recipe(tmp_path, f"model.restorer={path}", *overrides))


def student_inputs(model, b):
    """The one transformer call of a step: its inputs (the student's, LoRA on)."""
    seen = []
    hook = model.transformer.register_forward_pre_hook(lambda m, a, k: seen.append((a, k)), with_kwargs=True)
    try:
        out = model(b)
    finally:
        hook.remove()
    return out, seen


def test_the_release_objective_is_lpips_plus_mse_of_the_gumbel_straight_through_image_computed_independently(
    tmp_path,
):
    model = spread_lora(with_restorer(tmp_path)).eval()  # eval: no caption dropout, the same text twice
    b = batch()
    with torch.no_grad():
        out, calls = student_inputs(model, b)
    assert len(calls) == 1  # no teacher: the student's pass is the step's only transformer call
    (text, seq, schedule), kwargs = calls[0][0][:3], calls[0][1]
    assert kwargs["attention"] == "full"
    with torch.no_grad():
        logits = model.transformer(text, seq, schedule, attention="full").double()
        x_hq, _, seeds = model.degrade(b)
        # the release's GumbelArgmax(logits, 0.5): noise U from each sample's seed (+2), hard one-hot forward
        u = torch.stack([torch.rand(logits.shape[1:], generator=torch.Generator().manual_seed(s + 2)) for s in seeds])
        g = -torch.log(-torch.log(u.double() + 1e-20) + 1e-20)
        y = ((logits + g) / 0.5).softmax(-1)
        bits = (y[..., 1] > y[..., 0]).float()
        sizes = [h * w for h, w in model.schedule]
        per_scale = [c.reshape(c.shape[0], h, w, -1) for c, (h, w) in zip(bits.split(sizes, 1), model.schedule)]
        x_s = model.vae.decode_bits(per_scale)
        mse = F.mse_loss(x_s.double(), x_hq.double())
        # pyiqa's lpips as the trainer calls it: [-1, 1] images rescaled by 2x - 1 once more
        lp = model.lpips(2 * x_s - 1, 2 * x_hq - 1).mean().double()
        plain = model.lpips(x_s, x_hq).mean().double()
        labels = model.vae.tokenize(x_hq, model.schedule).bit_labels()
        ce = F.cross_entropy(logits.flatten(0, -2), labels.flatten().long(), reduction="none").view(labels.shape)
        ce = (ce.mean(-1) * token_weights(model.schedule).double()).sum(-1).mean()
    assert mse > 1e-3 and lp > 1e-3 and abs(lp - plain) > 1e-4  # the rescaling changes the value
    torch.testing.assert_close(out["mse"].double(), mse, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["lpips"].double(), lp, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(out["loss"].double(), lp + mse, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["cross_entropy"].double(), ce, rtol=1e-5, atol=1e-7)
    assert out["kl"] == 0


def test_gradients_reach_every_lora_weight_through_the_gumbel_straight_through_and_nothing_frozen(tmp_path):
    model = spread_lora(with_restorer(tmp_path)).train()
    frozen = {
        "vae": model.vae,
        "restorer": model.stage1,
        "lpips": model.lpips,
        "text encoder": model.text_encoder,
    }
    assert model.teacher is None
    for name, part in frozen.items():
        assert not any(p.requires_grad for p in part.parameters()), name
    seen = []
    real_ce = model_module.bitwise_cross_entropy

    def recording(*a, **k):
        seen.append(real_ce(*a, **k))
        return seen[-1]

    model_module.bitwise_cross_entropy = recording
    try:
        out = model(batch())
    finally:
        model_module.bitwise_cross_entropy = real_ce
    assert len(seen) == 1 and not seen[0].requires_grad  # logged only: computed without a graph
    out["loss"].backward()
    lora = {n: p for n, p in model.transformer.named_parameters() if "lora_" in n}
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.values()), [
        n for n, p in lora.items() if p.grad is None or p.grad.abs().sum() == 0
    ]
    base = [n for n, p in model.transformer.named_parameters() if "lora_" not in n and p.grad is not None]
    assert base == []
    assert not any(p.requires_grad for p in model.lq_encoder.parameters())  # the release encodes with the VAE's
    for name, part in frozen.items():
        assert all(p.grad is None for p in part.parameters()), name


def test_the_gumbel_straight_through_draws_bernoulli_bits_forward_and_the_soft_probability_backward():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 2).requires_grad_(True)
    bits = gumbel_straight_through_bits(logits, 0.5, [7, 8])
    assert torch.equal(bits, gumbel_straight_through_bits(logits, 0.5, [7, 8]))  # a function of the seeds
    assert not torch.equal(bits, gumbel_straight_through_bits(logits, 0.5, [9, 10]))
    torch.testing.assert_close(bits, bits.round(), rtol=0, atol=1e-6)  # hard forward
    bits.sum().backward()
    u = torch.stack([torch.rand(3, 4, 2, generator=torch.Generator().manual_seed(s + 2)) for s in (7, 8)])
    g = -torch.log(-torch.log(u + 1e-20) + 1e-20)
    soft = ((logits.detach() + g) / 0.5).softmax(-1)
    expected = torch.tensor([-1.0, 1.0]) * (soft[..., 0] * soft[..., 1] / 0.5)[..., None]  # d soft_1 / d logits
    torch.testing.assert_close(logits.grad, expected)
    # Gumbel-max: the hard bit is 1 with the bit's own probability, whatever tau
    p = torch.tensor([0.1, 0.5, 0.8])
    many = torch.stack([p.log(), (1 - p).log()], -1).flip(-1).expand(4000, 3, 2).reshape(1, 4000 * 3, 1, 2)
    drawn = gumbel_straight_through_bits(many.contiguous(), 0.5, [0]).view(4000, 3).mean(0)
    torch.testing.assert_close(drawn, p, rtol=0, atol=0.03)


def test_the_restorer_is_clamped_in_and_out_as_the_release_trains_it(tmp_path):
    model = with_restorer(tmp_path)
    seen = []
    model.stage1.register_forward_hook(lambda m, a, o: seen.append((a[0].clone(), o.clone())))
    x = torch.linspace(-1.5, 1.5, 3 * 64 * 64).view(1, 3, 64, 64)  # outside [-1, 1] at both ends
    with torch.no_grad():
        model.lq_latent(x)
        inp, out = seen[0]
        assert inp.min() == 0 and inp.max() == 1
        expected = model.lq_encoder(out.clamp(0, 1) * 2 - 1)
        torch.testing.assert_close(model.lq_latent(x), expected.float())
        unclamped = with_restorer(tmp_path, "model.restorer_clamp=false")
        assert not torch.allclose(unclamped.lq_latent(x), model.lq_latent(x))


def test_lin0_is_infinitys_schedule_and_the_trainer_steps_it_once_a_step_on_any_number_of_processes(tmp_path):
    def infinity(cur_it, wp_it, max_it, wp0, wpe):  # lr_wd_annealing('lin0', ...), transcribed
        if cur_it < wp_it:
            return wp0 + (1 - wp0) * cur_it / wp_it
        pasd = (cur_it - wp_it) / (max_it - 1 - wp_it)
        return 1 if pasd < 0.05 else wpe + (1 - wpe) * (1 - pasd) / 0.95

    for k in range(100):
        assert lin0(k, 10, 100, 0.005, 0.3) == pytest.approx(infinity(k, 10, 100, 0.005, 0.3))
    recipe = release_recipe(
        tmp_path, "optim.lr=1e-3", "optim.lr_warmup_steps=10", "optim.lr_end=0.3", "train.max_steps=100"
    )
    for processes in (1, 2):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        sched = build_scheduler(recipe, opt, processes)
        seen = []
        for _ in range(100):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            for _ in range(processes):  # accelerate steps a prepared scheduler once per process
                sched.step()
        assert seen == pytest.approx([1e-3 * infinity(k, 10, 100, 0.005, 0.3) for k in range(100)])
    assert seen[0] == pytest.approx(5e-6) and seen[10] == pytest.approx(1e-3) and seen[-1] == pytest.approx(3e-4)


def test_the_release_recipe_holds_every_row_of_the_authors_trainer():
    r = load_recipe("varestorer-2b-512-release-trainer")
    assert (r.mode, r.model.preset, r.model.resolution, r.model.transformer) == ("distill", "infinity-2b", 512, None)
    assert r.model.restorer.endswith("general_swinir_v1.ckpt") and r.model.restorer_clamp
    assert (r.loss.kl, r.loss.lpips, r.loss.mse, r.loss.student_cross_entropy) == (0, 1, 1, 0)
    assert (r.loss.lpips_net, r.loss.lpips_rescale, r.loss.scale_weighting) == ("alex", True, "infinity")
    assert (r.student.decode, r.student.gumbel_tau, r.student.text_dropout) == ("gumbel", 0.5, 0.1)
    assert (r.student.lora_rank, r.student.lora_alpha, r.student.lora_dropout, r.student.train_encoder) == (
        32,
        32,
        0,
        False,
    )
    assert r.student.lora_targets == ["sa.mat_qkv", "sa.proj", "ca.mat_q", "ca.mat_kv", "ca.proj"]
    assert (r.student.attention, r.student.lq_input) == ("full", "shifted_latent")
    assert (r.degradation.preset, r.data.hflip, r.data.random_crop) == ("diffbir", True, False)
    o, t = r.optim, r.train
    assert o.lr == pytest.approx(1e-4 * 64 / 256) and t.global_batch_size == 64
    assert (o.betas, o.weight_decay, o.max_grad_norm, o.lr_scheduler) == ([0.9, 0.97], 0.005, 5.0, "lin0")
    assert (o.lr_warmup_steps, o.lr_end) == (round(1e-8 * 1328), 1.0)  # --wp 1e-8 epochs, --wpe 1: constant
    assert t.max_steps == 2 * math.ceil(84991 / 64) and t.mixed_precision == "bf16" and t.gradient_checkpointing
    assert all(lin0(k, o.lr_warmup_steps, t.max_steps, o.lr_warmup_start, o.lr_end) == 1 for k in range(t.max_steps))
    assert (r.inference.decode, r.inference.resize, r.inference.tile_weights) == ("gumbel", "lanczos", "gaussian")
    paper = load_recipe("varestorer-2b-512")
    assert (paper.loss.kl, paper.loss.lpips, paper.loss.mse) == (0.1, 0.25, 0.5)  # the paper's stays the paper's


def test_hflip_flips_about_half_the_images_each_by_its_own_seed():
    from varestorer.data.samples import SampleImages

    data = SampleImages(32, repeats=50, random_crop=False)
    flipped = RandomHFlip(data)
    same = [torch.equal(flipped[i]["pixel_values"], data[i]["pixel_values"]) for i in range(len(data))]
    mirrored = [torch.equal(flipped[i]["pixel_values"], data[i]["pixel_values"].flip(-1)) for i in range(len(data))]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 0.3 < sum(mirrored) / len(data) < 0.7
    assert [torch.equal(flipped[i]["pixel_values"], flipped[i]["pixel_values"]) for i in range(5)] == [True] * 5
    assert [flipped[(1, i)]["seed"] for i in range(3)] != [flipped[(0, i)]["seed"] for i in range(3)]


def test_the_lpips_the_release_optimises_is_pyiqas_lpips_on_its_inputs(monkeypatch):
    """pyiqa (PolyForm Noncommercial: never a dependency; the optional ``metrics`` extra) computes
    the same value as the lpips package's AlexNet v0.1 with ``normalize``, on the same weights."""
    pyiqa = pytest.importorskip("pyiqa")
    import lpips
    import torchvision

    from varestorer.evaluation.metrics import build_lpips

    alexnet = torchvision.models.alexnet
    monkeypatch.setattr(torchvision.models, "alexnet", lambda *a, **k: alexnet(weights=None))  # offline
    metric = pyiqa.create_metric("lpips", as_loss=True, device="cpu", pretrained=False)
    monkeypatch.setattr(torchvision.models, "alexnet", alexnet)
    ours = build_lpips("alex", pretrained=False)
    assert isinstance(ours, lpips.LPIPS)
    metric.net.load_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(0)
    x, y = (torch.rand(3, 3, 64, 64, generator=g) * 2 - 1 for _ in range(2))  # [-1, 1], as the trainer passes
    theirs = metric(x, y)
    torch.testing.assert_close(theirs, ours(x, y, normalize=True).mean(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("recipe", ["varestorer-2b-512-release-trainer", "varestorer-2b-512"])
def test_bench_train_times_a_shipped_recipes_step_at_a_small_size_with_nothing_from_the_network(capsys, recipe):
    import json

    from varestorer.cli import main

    code = main(
        ["bench", "train", "--preset", "tiny", "--recipe", recipe, "--batch", "1", "--steps", "1"]
        + ["--warmup", "0", "--device", "cpu", "--json"]
    )
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["recipe"] == recipe and r["resolution"] == 64 and r["sec_per_step"] > 0
    assert r["trainable_params"] == 53_248  # LoRA r32 on the tiny blocks; the release's form trains no encoder


def test_no_teacher_is_built_when_no_loss_needs_one_even_for_full_fine_tuning(tmp_path):
    torch.manual_seed(0)
    without = VARestorerModel.from_recipe(release_recipe(tmp_path, "student.full_finetune=true"))
    assert without.teacher is None and not without.uses_teacher
    with_kl = VARestorerModel.from_recipe(release_recipe(tmp_path, "student.full_finetune=true", "loss.kl=0.1"))
    assert with_kl.teacher is not None and with_kl.uses_teacher  # the frozen copy the KL reads
