"""The distillation step and trainer on the tiny preset (CPU)."""

import json
from pathlib import Path

import pytest
import torch
from conftest import spread_lora
from safetensors.torch import load_file

from varestorer.distill.checkpointing import TRAINABLE_FILE
from varestorer.distill.dataloader import collate
from varestorer.distill.model import VARestorerModel
from varestorer.distill.recipe import load_recipe
from varestorer.transformer.lora import adapters_disabled, is_adapted

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


def train_steps(model, batch, steps: int, lr: float, key: str = "loss") -> list[float]:
    """``steps`` AdamW steps on ``batch``; the ``key`` loss of each step."""
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        out = model(batch)
        out["loss"].backward()
        opt.step()
        opt.zero_grad()
        losses.append(out[key].item())
    return losses


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(model):
    # The tiny base is random, so most of the MSE is out of the student's reach (its decoder is
    # untrained): 12 steps take the loss down by about 9%. A wrong gradient (sign, detach,
    # straight-through) leaves it flat or makes it grow.
    losses = train_steps(model, fixed_batch(), steps=12, lr=2e-3)
    assert sum(losses[-3:]) / 3 < 0.95 * losses[0], losses


def test_every_buffer_is_a_constant_so_ddp_need_not_broadcast_them_each_step(model):
    # the trainer sets DDP's broadcast_buffers=False: right only while no buffer changes in training
    # (no BatchNorm running statistics, nothing updated in place)
    before = {n: b.clone() for n, b in model.named_buffers()}
    assert before and not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    train_steps(model.train(), fixed_batch(), steps=2, lr=1e-2)
    assert all(torch.equal(b, before[n]) for n, b in model.named_buffers())


def test_what_ddp_fsdp_and_deepspeed_wrap_is_only_the_transformer_and_the_encoder_copy(model):
    # the frozen VAE, T5 and LPIPS are held outside the module tree: not broadcast, sharded or checkpointed
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {"transformer", "lq_encoder"}
    assert {k.split(".")[0] for k in model.state_dict()} == {"transformer", "lq_encoder"}
    held = model.held_outside()
    assert {id(m) for m in held} == {id(model.vae), id(model.text_encoder), id(model.lpips)}
    model.to(torch.float64)  # but .to() and the other casts reach them
    assert all(p.dtype == torch.float64 for m in held for p in m.parameters())
    model.to(torch.float32)
    assert all(p.dtype == torch.float32 for m in held for p in m.parameters())


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
        lq_tokens = model.lq_tokens(x_lq)
        s_logits = model.student_logits(text, lq_tokens)
        from varestorer.distill.losses import bitwise_kl

        x_s = model.decode_student(s_logits, lq_tokens)
        value = {
            "kl": lambda: bitwise_kl(t_logits, s_logits, model.schedule),
            "lpips": lambda: model.lpips(x_s, x_hq).mean(),
            "mse": lambda: torch.nn.functional.mse_loss(x_s, x_hq),
        }[term]()
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
        base = model.transformer
        with adapters_disabled(model.transformer):
            reference = base(
                text, model.vae.tokenize(x_lq, model.schedule).pyramid_sequence(), model.schedule, attention="full"
            )
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


def _bernoulli_kl(p, q):
    return p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()


def _scale_weights_by_hand(schedule):
    """Infinity's reweight_loss_by_scale: a token of scale k weighs 1/side_k, all weights sum to 1."""
    w = torch.cat([torch.full((h * w_,), 1 / (h * w_) ** 0.5, dtype=torch.float64) for h, w_ in schedule])
    return w / w.sum()


class Calls:
    """Records every call of the base transformer: its inputs, mask mode and whether LoRA was on."""

    def __init__(self, model):
        self.calls, self.model = [], model
        from peft.tuners.lora import LoraLayer

        self.lora = [m for m in model.modules() if isinstance(m, LoraLayer)]
        targets = [model.transformer] + ([model.teacher] if model.teacher is not None else [])
        for t in targets:
            t.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        text, inputs, schedule = args[:3]
        self.calls.append(
            {
                "module": module,
                "inputs": inputs.detach().clone(),
                "attention": kwargs.get("attention"),
                "lora_on": any(not m.disable_adapters for m in self.lora) and module is not self.model.teacher,
                "captions": text,
            }
        )

    def of(self, role):
        """The one call of the teacher (LoRA off or the frozen copy) or of the student."""
        found = [
            c
            for c in self.calls
            if c["lora_on"] == (role == "student")
            and (role == "student" or c["module"] is not self.model.transformer or self.model.teacher is None)
        ]
        assert len(found) == 1, (role, len(found))
        return found[0]


def test_the_total_loss_is_0_1_kl_plus_0_25_lpips_plus_0_5_mse_computed_independently(model):
    spread_lora(model)  # a student far from the teacher: every term matters
    batch = fixed_batch()
    calls = Calls(model)
    with torch.no_grad():
        out = model(batch)
        x_hq, x_lq, _ = model.degrade(batch)
    teacher_call, student_call = calls.of("teacher"), calls.of("student")
    text = model._text(batch["caption"], model.degrade(batch)[2])
    with torch.no_grad():
        with adapters_disabled(model.transformer):
            t = model.transformer(text, teacher_call["inputs"], model.schedule, attention="causal")
        s = model.transformer(text, student_call["inputs"], model.schedule, attention="full")
    p_t, p_s = t.double().softmax(-1)[..., 1], s.double().softmax(-1)[..., 1]
    kl = (_bernoulli_kl(p_t, p_s).mean(-1) * _scale_weights_by_hand(model.schedule)).sum(-1).mean()
    bits = [b.float() for b in torch.split((p_s > 0.5).float(), [h * w for h, w in model.schedule], dim=1)]
    bits = [b.view(b.shape[0], h, w, -1) for b, (h, w) in zip(bits, model.schedule)]
    x_s = model.vae.decode_bits(bits)
    mse = ((x_s.double() - x_hq.double()) ** 2).mean()
    lp = model.lpips(x_s, x_hq).mean().double()
    assert kl > 1e-3 and lp > 1e-3 and mse > 1e-3
    torch.testing.assert_close(out["kl"].double(), kl, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(out["mse"].double(), mse, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(out["lpips"].double(), lp, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(out["loss"].double(), 0.1 * kl + 0.25 * lp + 0.5 * mse, rtol=1e-5, atol=1e-7)


def test_the_kl_is_forward_teacher_to_student_on_a_hand_made_pair():
    from varestorer.distill.losses import bitwise_kl

    # one token, one bit: teacher p(1) = 0.9, student p(1) = 0.5
    teacher = torch.tensor([0.1, 0.9]).log().view(1, 1, 1, 2)
    student = torch.zeros(1, 1, 1, 2, requires_grad=True)
    kl = bitwise_kl(teacher, student, [(1, 1)])
    forward = 0.9 * torch.tensor(0.9 / 0.5).log() + 0.1 * torch.tensor(0.1 / 0.5).log()  # KL(T||S) = 0.368
    reverse = 0.5 * torch.tensor(0.5 / 0.9).log() + 0.5 * torch.tensor(0.5 / 0.1).log()  # KL(S||T) = 0.511
    torch.testing.assert_close(kl, forward)
    assert abs(kl.item() - reverse.item()) > 0.1
    kl.backward()
    assert student.grad[0, 0, 0, 1] < 0  # the student's p(1) is pulled up towards the teacher's 0.9


def test_the_scale_weighting_is_infinitys_in_both_stages():
    from varestorer.distill.losses import bitwise_cross_entropy, bitwise_kl, token_weights

    sched = [(1, 1), (2, 2), (4, 4)]
    torch.testing.assert_close(token_weights(sched).double(), _scale_weights_by_hand(sched))
    # a wrong bit on the 1x1 scale costs 4x a wrong bit on the 4x4 scale, in the KL and the CE alike
    labels = torch.zeros(1, 21, 1, dtype=torch.long)
    sure = torch.tensor([5.0, -5.0]).expand(1, 21, 1, 2).clone()
    for stage in ("kl", "ce"):
        costs = []
        for pos in (0, 20):
            wrong = sure.clone()
            wrong[0, pos, 0] = torch.tensor([-5.0, 5.0])
            costs.append(
                bitwise_kl(sure, wrong, sched) if stage == "kl" else bitwise_cross_entropy(wrong, labels, sched)
            )
        assert abs(costs[0] / costs[1] - 4) < 1e-3, (stage, costs)


def test_the_teacher_runs_causal_on_hq_tokens_without_lora_and_the_student_full_on_the_lq_pyramid(model):
    batch = fixed_batch()
    calls = Calls(model)
    model(batch)
    x_hq, x_lq, _ = model.degrade(batch)
    assert len(calls.calls) == 2
    teacher, student = calls.of("teacher"), calls.of("student")
    assert (teacher["attention"], teacher["lora_on"]) == ("causal", False)
    assert (student["attention"], student["lora_on"]) == ("full", True)
    with torch.no_grad():
        hq = model.vae.tokenize(x_hq, model.schedule)
        lq = model.vae.quantizer(model.lq_encoder(x_lq), model.schedule)
    assert torch.equal(teacher["inputs"], hq.teacher_input_sequence())
    assert torch.equal(student["inputs"], lq.pyramid_sequence())
    assert not torch.equal(student["inputs"], lq.teacher_input_sequence())


def test_kv_cached_sampling_with_the_hq_bits_given_reproduces_the_teacher_forced_logits(model):
    """One next-scale input rule (trilinear) in the tokenizer's teacher forcing and in the sampler."""
    from varestorer.transformer.sampling import sample

    batch = fixed_batch()
    spread_lora(model)
    x_hq, _, seeds = model.degrade(batch)
    text = model._text(batch["caption"], seeds)
    tokens = model.vae.tokenize(x_hq, model.schedule)
    teacher = model.teacher_logits(text, tokens)
    with adapters_disabled(model.transformer):
        out = sample(
            model.transformer,
            text,
            model.schedule,
            cfg=1,
            tau=1,
            top_k=0,
            top_p=0,
            given_bits=tokens.bits,
            return_logits=True,
        )
    torch.testing.assert_close(torch.cat(out.logits, dim=1), teacher, rtol=1e-4, atol=1e-4)


def _ablation_overrides(name):
    """What a shipped ablation recipe changes relative to the paper's recipe, as tiny overrides."""
    import dataclasses

    def flat(d, prefix=""):
        return {
            k2: v2
            for k, v in d.items()
            for k2, v2 in (flat(v, f"{prefix}{k}.").items() if isinstance(v, dict) else [(f"{prefix}{k}", v)])
        }

    base, ablation = (flat(dataclasses.asdict(load_recipe(n))) for n in ("varestorer-2b-512", name))
    ignore = {"name", "train.output_dir", "model.resolution", "model.transformer", "data.dataset"}
    return [
        f"{k}={str(v).lower() if isinstance(v, bool) else v}"
        for k, v in ablation.items()
        if base[k] != v and k not in ignore
    ]


@pytest.mark.parametrize(
    "name",
    [
        "ablation-no-kl",
        "ablation-no-cross-attention",
        "ablation-full-finetune",
        "ablation-retrain-without-captions",
        "lq-input-shifted",
    ],
)
def test_each_ablation_changes_at_runtime_what_its_name_says(tmp_path, name):
    overrides = ["student.lq_input=shifted"] if name == "lq-input-shifted" else _ablation_overrides(name)
    assert overrides, f"{name} changes nothing"
    torch.manual_seed(0)
    m = VARestorerModel.from_recipe(tiny_recipe(tmp_path, *overrides))
    captions = []
    m.text_encoder.register_forward_pre_hook(lambda mod, args: captions.append(list(args[0])))
    calls = Calls(m)
    batch = fixed_batch()
    out = m(batch)
    x_hq, x_lq, _ = m.degrade(batch)
    student = calls.calls[0]  # the student runs first; the teacher only for the KL
    if name == "ablation-no-kl":
        assert len(calls.calls) == 1 and out["kl"].item() == 0  # the teacher does not even run
    else:
        assert len(calls.calls) == 2 and out["kl"].item() > 0
    if name == "ablation-no-cross-attention":
        assert student["attention"] == "causal"
    else:
        assert student["attention"] == "full"
    if name == "ablation-full-finetune":
        assert m.teacher is not None and calls.calls[1]["module"] is m.teacher
        assert all(p.requires_grad for p in m.transformer.parameters())
        assert not any(p.requires_grad for p in m.teacher.parameters())
    if name == "ablation-retrain-without-captions":
        assert captions == [["", ""]]
    else:
        assert captions == [list(batch["caption"])] and all(captions[0])
    lq = m.vae.quantizer(m.lq_encoder(x_lq), m.schedule)
    shifted = name in ("lq-input-shifted", "ablation-no-cross-attention")  # no cross: the shifted form (no extra block)
    expected = lq.teacher_input_sequence() if shifted else lq.pyramid_sequence()
    assert torch.equal(student["inputs"], expected)


def test_teacher_mode_builds_trains_and_applies_bitwise_self_correction(tmp_path):
    torch.manual_seed(0)
    recipe = tiny_recipe(
        tmp_path,
        "mode=teacher",
        "student.full_finetune=true",
        "student.train_encoder=false",
        "self_correction.layers=3",
        "self_correction.strength=0.3",
        "loss.text_dropout=0",
    )
    m = VARestorerModel.from_recipe(recipe)
    assert m.lq_encoder is None and m.lpips is None and m.teacher is None
    batch = fixed_batch()
    calls = Calls(m)
    m(batch)
    m(batch)
    x_hq, _, seeds = m.degrade(batch)
    clean = m.vae.tokenize(x_hq, m.schedule)
    first, second = calls.calls
    assert first["attention"] == "causal"
    assert torch.equal(first["inputs"], second["inputs"])  # the flips are a function of the sample
    assert not torch.equal(first["inputs"], clean.teacher_input_sequence())  # and there are some
    m.eval()
    m(batch)
    assert torch.equal(calls.calls[-1]["inputs"], clean.teacher_input_sequence())  # none outside training
    m.train()
    losses = train_steps(m, batch, steps=8, lr=3e-3, key="cross_entropy")
    assert losses[-1] < 0.97 * losses[0], losses


def test_varsr_mode_trains_next_scale_prediction_of_hq_tokens_with_the_lq_prefix(tmp_path):
    """The paper's "w/o distill" as VARSR: LoRA on, block-causal, HQ teacher-forcing inputs, the LQ
    image's quantized latent (trainable encoder) as prefix tokens; Infinity's cross-entropy."""
    from varestorer.distill.losses import bitwise_cross_entropy

    overrides = _ablation_overrides("ablation-no-distill")
    assert "mode=varsr" in overrides and "student.attention=causal" in overrides
    torch.manual_seed(0)
    m = VARestorerModel.from_recipe(tiny_recipe(tmp_path, *overrides, "loss.text_dropout=0"))
    assert m.lq_encoder is not None and m.lpips is None and is_adapted(m.transformer)
    prefixes = []
    m.transformer.register_forward_pre_hook(lambda mod, a, kw: prefixes.append(kw.get("prefix")), with_kwargs=True)
    calls = Calls(m)
    batch = fixed_batch()
    out = m(batch)
    x_hq, x_lq, seeds = m.degrade(batch)
    call = calls.of("student")
    assert len(calls.calls) == 1 and call["attention"] == "causal"
    hq = m.vae.tokenize(x_hq, m.schedule)
    with torch.no_grad():
        lq = m.vae.quantizer(m.lq_encoder(x_lq), m.schedule)
    assert torch.equal(call["inputs"], hq.teacher_input_sequence())
    assert torch.equal(prefixes[0], lq.prefix_sequence())
    with torch.no_grad():
        logits = m.transformer(
            m._text(batch["caption"], seeds),
            hq.teacher_input_sequence(),
            m.schedule,
            attention="causal",
            prefix=lq.prefix_sequence(),
        )
    torch.testing.assert_close(out["cross_entropy"], bitwise_cross_entropy(logits, hq.bit_labels(), m.schedule))
    grads = torch.autograd.grad(out["loss"], list(m.lq_encoder.parameters())[:1])
    assert grads[0].abs().sum() > 0  # the prefix trains the encoder
    losses = train_steps(m, batch, steps=10, lr=3e-2, key="cross_entropy")
    assert losses[-1] < losses[0] - 2e-3, losses  # LoRA from zero on a random base: a slow but steady fall
    images = m.validation_images(batch)  # scale by scale with the prefix
    assert images["student"].shape == (2, 3, 64, 64)
    with pytest.raises(Exception, match="student.attention=causal"):
        tiny_recipe(tmp_path, "mode=varsr", "student.attention=full")


def test_validation_leaves_frozen_parts_in_eval_mode_and_the_loss_unchanged(model):
    batch = fixed_batch()
    with torch.no_grad():
        before = model(batch)["loss"]
        model.validation_images(batch)
        after = model(batch)["loss"]
    assert not model.lpips.training and not model.vae.training and not model.text_encoder.training
    assert model.training and model.lq_encoder.training
    assert torch.equal(before, after)


def test_a_missing_teacher_checkpoint_says_how_to_make_it_or_use_the_public_one():
    from varestorer.errors import ConfigError

    with pytest.raises(ConfigError, match=r"(?s)teacher-512.yaml.*model.transformer=null"):
        VARestorerModel.from_recipe(load_recipe("varestorer-2b-512"))


def _trainable(path):
    return load_file(str(path / TRAINABLE_FILE))


def test_the_encoder_latent_loss_pulls_the_lq_latent_to_the_frozen_encoders_hq_latent(tmp_path):
    torch.manual_seed(0)
    model = VARestorerModel.from_recipe(tiny_recipe(tmp_path, "loss.encoder_latent=1.0"))
    batch = fixed_batch()
    x_hq = batch["pixel_values"] * 2 - 1
    model.degrade = lambda b: (x_hq, x_hq, [0, 1])  # an LQ that is the HQ: the untrained copy is exact
    assert model(batch)["encoder_latent"].item() == 0.0
    with torch.no_grad():
        next(model.lq_encoder.parameters()).add_(0.1)
    out = model(batch)
    assert out["encoder_latent"] > 0
    model.recipe.loss.encoder_latent = 0.0  # the same step without the term: the loss differs by it alone
    without = model(batch)
    assert "encoder_latent" not in without
    torch.testing.assert_close(out["loss"] - without["loss"], out["encoder_latent"])
    out["loss"].backward()
    assert next(model.lq_encoder.parameters()).grad.abs().sum() > 0
    assert "encoder_latent" not in VARestorerModel.from_recipe(tiny_recipe(tmp_path))(batch)  # off by default


def test_the_encoder_learns_at_its_own_rate_when_the_recipe_gives_one(model):
    one = model.param_groups(1e-3)
    assert len(one) == 1 and len(one[0]["params"]) == len(model.trainable_parameters())
    adapter, encoder = model.param_groups(1e-3, encoder_lr=1e-5)
    assert (adapter["lr"], encoder["lr"]) == (1e-3, 1e-5)
    assert {id(p) for p in encoder["params"]} == {id(p) for p in model.lq_encoder.parameters()}
    assert all("lora_" in n for n, p in model.named_parameters() if any(p is q for q in adapter["params"]))
    assert len(adapter["params"]) + len(encoder["params"]) == len(model.trainable_parameters())


def test_compiling_keeps_the_names_of_the_trainable_weights(model, tmp_path):
    """train.compile compiles in place: checkpoints and exports of a compiled run have the names of
    an eager one (torch.compile(module) would prefix them with _orig_mod.), so a run resumes and
    exports across the setting."""
    from varestorer.distill.tokenizer_module import TokenizerModel

    before = list(model.trainable_state_dict())
    model.compile_trained_network()
    assert list(model.trainable_state_dict()) == before and not any("_orig_mod" in k for k in before)
    model.save_export(tmp_path / "export")
    assert not any("_orig_mod" in k for k in load_file(str(tmp_path / "export" / "adapter_model.safetensors")))
    tok = TokenizerModel.from_recipe(load_recipe("tiny", ["mode=tokenizer", "train.report_to=none"]))
    names = list(tok.state_dict())
    tok.compile_trained_network()
    assert list(tok.state_dict()) == names


def test_resume_continues_the_exact_trajectory(tmp_path):
    from varestorer.distill.trainer import train

    # a validation after every step: it must not change the next step (frozen LPIPS keeps its dropout off)
    common = ["train.checkpointing_steps=2", "train.validation_steps=1", "train.checkpoints_total_limit=null"]
    _reset_accelerate()
    train(
        load_recipe(
            "tiny", [f"train.output_dir={tmp_path / 'a'}", "train.report_to=none", "train.max_steps=4", *common]
        )
    )
    _reset_accelerate()
    train(
        load_recipe(
            "tiny", [f"train.output_dir={tmp_path / 'b'}", "train.report_to=none", "train.max_steps=2", *common]
        )
    )
    _reset_accelerate()
    train(
        load_recipe(
            "tiny",
            [
                f"train.output_dir={tmp_path / 'b'}",
                "train.report_to=none",
                "train.max_steps=4",
                "train.resume_from_checkpoint=latest",
                *common,
            ],
        )
    )
    a, b = _trainable(tmp_path / "a" / "checkpoint-4"), _trainable(tmp_path / "b" / "checkpoint-4")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    # and the run moved: step-2 and step-4 weights differ
    two = _trainable(tmp_path / "a" / "checkpoint-2")
    assert any(not torch.equal(two[k], a[k]) for k in a)
    # a checkpoint carries the export form
    export = tmp_path / "a" / "checkpoint-4" / "export"
    assert {"adapter_model.safetensors", "adapter_config.json", "encoder.safetensors", "varestorer_config.json"} <= {
        p.name for p in export.iterdir()
    }
    assert (tmp_path / "a" / "validation" / "step-000004.png").is_file()
    assert (tmp_path / "a" / "losses.png").is_file()


def test_checkpoints_total_limit_prunes_old_checkpoints(tmp_path):
    from varestorer.checkpoints import list_checkpoints
    from varestorer.distill.trainer import train

    _reset_accelerate()
    train(
        load_recipe(
            "tiny",
            [
                f"train.output_dir={tmp_path}",
                "train.report_to=none",
                "train.max_steps=3",
                "train.checkpointing_steps=1",
                "train.checkpoints_total_limit=2",
                "train.validation_steps=100",
            ],
        )
    )
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]


@pytest.mark.slow
def test_a_student_sharded_with_fsdp2_exports_what_the_unsharded_one_does(tmp_path, cpu_processes):
    # accelerate runs FSDP only on GPUs (on a CPU it falls back to DDP); torch's fully_shard runs
    # over gloo, so the gathering the checkpoint hook and the final export do is tested directly
    from safetensors.torch import load_file

    cpu_processes(2, Path(__file__).parent / "sharded_probe.py", tmp_path)
    one, two = tmp_path / "unsharded", tmp_path / "sharded"
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir())
    assert {"adapter_model.safetensors", "encoder.safetensors", "base_transformer.safetensors"} <= set(names)
    for name in names:
        if name.endswith(".safetensors"):
            a, b = load_file(str(one / name)), load_file(str(two / name))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        else:
            assert (one / name).read_text() == (two / name).read_text(), name


@pytest.mark.slow
def test_two_processes_match_one_process_at_the_same_global_batch(tmp_path, cpu_processes):
    """DDP over gloo with 2 CPU processes x batch 2 == 1 process x batch 4: the same losses at every
    step (1e-5), the same weights (1e-4: the conv biases right before the tiny VAE's one-channel
    GroupNorms get no gradient but rounding noise, which Adam scales up to ~4e-5; a different batch
    moves every tensor by ~lr = 1e-3)."""
    args = [
        "--recipe",
        "tiny",
        "train.max_steps=2",
        "train.checkpointing_steps=2",
        "train.validation_steps=100",
        "train.report_to=none",
        "train.global_batch_size=4",
    ]
    for n, out in ((1, tmp_path / "one"), (2, tmp_path / "two")):
        res = cpu_processes(n, REPO / "distill.py", *args, f"train.output_dir={out}")
        assert f"{n} process{'es' if n > 1 else ''} (" in res.stdout  # really n processes, not n runs of one
    losses = [
        [json.loads(line) for line in (tmp_path / run / "losses.jsonl").read_text().splitlines()]
        for run in ("one", "two")
    ]
    for a, b in zip(*losses, strict=True):
        for k in ("loss", "mse", "lpips", "kl"):
            assert a[k] == pytest.approx(b[k], rel=1e-5), (a["step"], k)
    one, two = _trainable(tmp_path / "one" / "checkpoint-2"), _trainable(tmp_path / "two" / "checkpoint-2")
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=0, atol=1e-4, msg=k)


def test_processes_that_accelerate_did_not_join_are_refused(tmp_path, monkeypatch):
    from varestorer.distill.trainer import train
    from varestorer.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun without ACCELERATE_USE_CPU on a CPU machine
    _reset_accelerate()
    with pytest.raises(ConfigError, match="ACCELERATE_USE_CPU=true torchrun"):
        train(tiny_recipe(tmp_path))
    assert not (tmp_path / "run").exists()  # nothing written


def test_bench_train_prints_its_figures(capsys):
    import json

    from varestorer.cli import main

    assert main(["bench", "train", "--preset", "tiny", "--batch", "2", "--steps", "1", "--warmup", "0", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["trainable_params"] > 0 and r["sec_per_step"] > 0 and r["images_per_sec"] > 0
    assert r["flops_per_step"] > 0 and r["peak_rss_gib"] > 0


def test_bench_train_runs_the_step_under_bf16_autocast_on_a_cpu_when_asked(capsys, monkeypatch):
    """--mixed-precision bf16 on a CPU: the step runs under CPU bf16 autocast (float32 weights), as
    accelerate trains; --no-flop-count skips the extra counted step."""
    import json

    from varestorer.cli import main
    from varestorer.distill.model import DistillModel

    seen, forward = [], DistillModel.forward

    def spy(self, *a, **k):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return forward(self, *a, **k)

    monkeypatch.setattr(DistillModel, "forward", spy)
    args = ["bench", "train", "--preset", "tiny", "--batch", "1", "--steps", "1", "--warmup", "0", "--device", "cpu"]
    assert main(args + ["--mixed-precision", "bf16", "--no-flop-count", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["mixed_precision"] == "bf16" and r["flops_per_step"] is None
    assert seen == [(True, torch.bfloat16)]  # one step: no FLOP-counting step
    seen.clear()
    assert main(args + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mixed_precision"] == "no"
    assert [on for on, _ in seen] == [False, False]  # the timed step and the counted one


def test_the_memory_estimate_adds_up_weights_state_and_saved_activations(capsys):
    """bench train --device meta: the step on fake tensors under bf16 autocast; checkpointing the
    blocks lowers only the transformer's share; the figures are marked as estimated."""
    import json

    from varestorer.cli import main
    from varestorer.distill.memory import estimate_train_memory
    from varestorer.transformer.loading import build_transformer

    full = estimate_train_memory("tiny", 64, 2, gradient_checkpointing=False)
    ckpt = estimate_train_memory("tiny", 64, 2, gradient_checkpointing=True)
    assert full["trainable_params"] == ckpt["trainable_params"] > 0
    assert full["training_state_gib"] == 16 * full["trainable_params"] / 2**30
    f = full["frozen_params"]
    assert f["transformer"] == sum(p.numel() for p in build_transformer("tiny").parameters())  # LoRA apart
    assert full["weights_gib"] == (4 * (f["transformer"] + f["vae"] + f["lpips"]) + 2 * f["text_encoder"]) / 2**30
    a, b = full["activations_by_part_gib"], ckpt["activations_by_part_gib"]
    assert all(v > 0 for k, v in a.items() if k != "other")
    assert b["transformer"] < a["transformer"] and b["vae.decoder"] == a["vae.decoder"]
    assert ckpt["peak_memory_gib"] == pytest.approx(
        ckpt["weights_gib"] + ckpt["training_state_gib"] + ckpt["activations_gib"]
    )
    assert main(["bench", "train", "--preset", "tiny", "--batch", "2", "--device", "meta", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["estimated"] is True and r["activations_gib"] == pytest.approx(full["activations_gib"])


def test_push_to_hub_needs_a_repo_id(tmp_path):
    from varestorer.errors import ConfigError

    with pytest.raises(ConfigError, match="hub_model_id"):
        tiny_recipe(tmp_path, "train.push_to_hub=true")


def test_a_one_process_cpu_run_on_one_thread_is_told_how_to_use_every_core(monkeypatch, caplog):
    from types import SimpleNamespace

    from varestorer.distill import trainer

    cpu = SimpleNamespace(device=torch.device("cpu"), num_processes=1)
    monkeypatch.setattr(trainer.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    with caplog.at_level("WARNING", logger=trainer.__name__):
        trainer._warn_single_thread_cpu(cpu)
    assert "OMP_NUM_THREADS=2 accelerate launch" in caplog.text
    caplog.clear()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    trainer._warn_single_thread_cpu(cpu)
    trainer._warn_single_thread_cpu(SimpleNamespace(device=torch.device("cpu"), num_processes=2))
    assert not caplog.text


def test_the_loss_plot_draws_a_running_mean_over_the_noise_of_small_batches():
    from varestorer.distill.visualize import running_mean

    assert running_mean([1.0, 2.0, 3.0, 4.0, 10.0], 2) == [1.0, 1.5, 2.5, 3.5, 7.0]
    assert running_mean([4.0, 2.0], 5) == [4.0, 3.0]


def test_frozen_weights_held_in_bf16_train_the_same_step_with_half_their_memory(tmp_path):
    """train.frozen_dtype=bf16 (diffusers' weight_dtype): the blocks' frozen weights (not their
    LayerNorms) and T5 in bf16, every trained weight float32; under bf16 autocast the step's loss
    and gradients are those of float32-held weights, up to the rounding of the few frozen weights
    used outside a matmul."""
    batch = fixed_batch()
    runs = []
    for frozen in ("float32", "bf16"):
        torch.manual_seed(0)
        model = VARestorerModel.from_recipe(tiny_recipe(tmp_path, "train.mixed_precision=bf16")).train()
        spread_lora(model)

        def held(model=model):  # bytes of the blocks' frozen weights
            return sum(
                p.numel() * p.element_size()
                for b in model.transformer.blocks
                for p in b.parameters()
                if not p.requires_grad
            )

        before = held()
        if frozen == "bf16":
            model.hold_frozen_in(torch.bfloat16)
        after = held()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(batch)["loss"]
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.transformer.named_parameters() if p.requires_grad}
        runs.append((loss.detach(), grads, before, after, model))
    (l32, g32, _, _, _), (l16, g16, before, after, model) = runs
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
    frozen = [p for blk in model.transformer.blocks for p in blk.parameters() if not p.requires_grad]
    assert {p.dtype for p in frozen} == {torch.bfloat16, torch.float32}  # LayerNorms stay float32
    assert after < 0.52 * before
    assert {p.dtype for p in model.text_encoder.parameters()} == {torch.bfloat16}
    torch.testing.assert_close(l16, l32, rtol=2e-2, atol=0)
    cos = [torch.nn.functional.cosine_similarity(g16[n].flatten(), g32[n].flatten(), dim=0) for n in g32]
    assert min(cos) > 0.95  # bf16 rounding of the few frozen weights used outside a matmul, and of T5


def test_frozen_weights_in_bf16_without_bf16_mixed_precision_are_refused_before_anything_is_written(tmp_path):
    from varestorer.distill.trainer import train
    from varestorer.errors import ConfigError

    _reset_accelerate()
    recipe = tiny_recipe(tmp_path, "train.frozen_dtype=bf16", "train.mixed_precision='no'", "train.max_steps=1")
    with pytest.raises(ConfigError, match="frozen_dtype=bf16.*needs bf16 mixed precision.*ACCELERATE_MIXED_PRECISION"):
        train(recipe)
    assert not (tmp_path / "run").exists()


def test_a_run_with_frozen_weights_in_bf16_trains_validates_and_exports(tmp_path, monkeypatch, request):
    """The whole run under ACCELERATE_MIXED_PRECISION=bf16 (a CPU's bf16 autocast): the step, the
    validation grid and the held-out metrics (run under the same autocast) and the export."""
    from varestorer.distill.trainer import train

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    _reset_accelerate()
    request.addfinalizer(_reset_accelerate)  # the bf16 state must not outlive this test
    recipe = tiny_recipe(
        tmp_path,
        "train.frozen_dtype=bf16",
        "train.max_steps=1",
        "train.validation_steps=1",
        "train.global_batch_size=2",
    )
    train(recipe)
    assert (tmp_path / "run" / "validation" / "step-000001.png").is_file()
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").is_file()
    trained = load_file(str(tmp_path / "run" / "checkpoint-1" / TRAINABLE_FILE))
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in trained.values())


@pytest.mark.parametrize(
    "mode, name", [("distill", "DistillModel"), ("teacher", "TeacherModel"), ("varsr", "VARSRModel")]
)
def test_each_training_mode_is_a_class_of_its_own(mode, name):
    """The step, the validation student and the metrics are the mode's class's (MODE_CLASSES); the
    trainer builds it through VARestorerModel.from_recipe and calls only the TrainingModule interface."""
    from varestorer.distill.model import MODE_CLASSES, VARestorerModel
    from varestorer.distill.module import TrainingModule

    causal = ["student.attention=causal"] if mode == "varsr" else []  # it predicts scale by scale
    recipe = load_recipe("tiny", [f"mode={mode}", "train.report_to=none", *causal])
    built = VARestorerModel.from_recipe(recipe)
    assert type(built) is MODE_CLASSES[mode] and type(built).__name__ == name and isinstance(built, TrainingModule)
    assert built.uses_teacher == (mode == "distill")  # tiny's KL weight is > 0
    with pytest.raises(NotImplementedError, match="trains no mode"):
        VARestorerModel.forward(built, {})
