"""Infinity's transformer on the tiny preset (CPU): the three forward modes, loading, sampling, LoRA."""

import json
import logging
import re

import pytest
import torch
import torch.nn.functional as F

from varestorer.cli import main
from varestorer.errors import CheckpointError
from varestorer.tokenizer import MultiScaleBSQ
from varestorer.transformer import InfinityTransformer, TextEncoder, TextFeatures
from varestorer.transformer.loading import build_transformer, load_transformer
from varestorer.transformer.lora import adapters_disabled, apply_lora
from varestorer.transformer.sampling import filter_logits, sample

SCHEDULE = [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8)]  # the tiny preset at 64 px
L = sum(h * w for h, w in SCHEDULE)  # 121
STARTS = [sum(h * w for h, w in SCHEDULE[:k]) for k in range(len(SCHEDULE) + 1)]
# float32 on CPU: the cached and the one-pass computations differ only in summation order
ATOL = 1e-5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_transformer("tiny").eval()


@pytest.fixture(scope="module")
def text():
    return TextEncoder.from_preset("tiny")(["a red car parked on a street", "two dogs in the snow"])


def tokens(batch=2, seed=0):
    """Multi-scale tokens of a structured latent, as the tokenizer gives them."""
    g = torch.Generator().manual_seed(seed)
    lat = sum(
        F.interpolate(torch.randn(batch, 16, s, s, generator=g), size=(8, 8), mode="bilinear") for s in (1, 2, 4, 8)
    )
    return MultiScaleBSQ(16)(lat, SCHEDULE)


def per_scale(x):
    return [x[:, a:b] for a, b in zip(STARTS, STARTS[1:])]


# ---------------------------------------------------------------------- forward modes
def test_teacher_forcing_equals_kv_cached_decoding_scale_by_scale(model, text):
    toks = tokens()
    inputs = toks.teacher_input_sequence()
    assert inputs.shape == (2, L - 1, 16)
    with torch.no_grad():
        logits = model(text, inputs, SCHEDULE, attention="causal")
        assert logits.shape == (2, L, 16, 2)
        state = model.start_decoding(text, SCHEDULE)
        for k, expected in enumerate(per_scale(logits)):
            x = None if k == 0 else inputs[:, STARTS[k] - 1 : STARTS[k + 1] - 1]
            step = model.decode_scale(state, x)
            torch.testing.assert_close(step, expected, atol=ATOL, rtol=0)
        with pytest.raises(ValueError, match="all 5 scales are decoded"):
            model.decode_scale(state, x)


def test_prefix_tokens_teacher_forced_equal_kv_cached_decoding_and_condition_every_scale(model, text):
    """VARSR's prefix: the image's quantized latent before the start token, seen by every scale."""
    toks, lq = tokens(), tokens(seed=11)
    inputs, prefix = toks.teacher_input_sequence(), lq.prefix_sequence()
    assert prefix.shape == (2, 64, 16) and torch.equal(prefix, lq.pyramid_sequence()[:, -64:])
    with torch.no_grad():
        logits = model(text, inputs, SCHEDULE, attention="causal", prefix=prefix)
        plain = model(text, inputs, SCHEDULE, attention="causal")
        state = model.start_decoding(text, SCHEDULE, prefix=prefix)
        for k, expected in enumerate(per_scale(logits)):
            x = None if k == 0 else inputs[:, STARTS[k] - 1 : STARTS[k + 1] - 1]
            torch.testing.assert_close(model.decode_scale(state, x), expected, atol=ATOL, rtol=0)
            assert not torch.allclose(per_scale(plain)[k], expected, atol=1e-4)  # every scale sees it
        # the prefix sees only itself: the scales' tokens cannot change what it contributes
        mask = model.prefix_mask(SCHEDULE, 64, "causal")
        assert mask[:64, :64].all() and not mask[:64, 64:].any() and mask[64:, :64].all()
        assert torch.equal(mask[64:, 64:], model.block_causal_mask(SCHEDULE))
    with pytest.raises(ValueError, match="prefix tokens must be"):
        model(text, inputs, SCHEDULE, prefix=prefix[:, :10])


def test_full_attention_differs_from_causal_only_through_the_mask(model, text):
    inputs = tokens().teacher_input_sequence()
    changed = inputs.clone()
    changed[:, STARTS[3] - 1 : STARTS[4] - 1] += 0.5  # the input of scale 3
    with torch.no_grad():
        causal, causal2 = model(text, inputs, SCHEDULE, "causal"), model(text, changed, SCHEDULE, "causal")
        full, full2 = model(text, inputs, SCHEDULE, "full"), model(text, changed, SCHEDULE, "full")
        one = [(1, 1)]  # a single scale: both masks see the same keys
        assert torch.equal(model(text, None, one, "causal"), model(text, None, one, "full"))
    for k, (a, b) in enumerate(zip(per_scale(causal), per_scale(causal2))):
        assert torch.equal(a, b) == (k < 3), k  # causal: earlier scales cannot see scale 3
    for k, (a, b) in enumerate(zip(per_scale(full), per_scale(full2))):
        assert not torch.allclose(a, b, atol=1e-6), k  # full: every scale sees scale 3
    assert not torch.allclose(causal, full, atol=1e-6)


def test_bad_inputs_are_refused(model, text):
    inputs = tokens().teacher_input_sequence()
    with pytest.raises(ValueError, match="attention must be one of"):
        model(text, inputs, SCHEDULE, attention="bidirectional")
    with pytest.raises(ValueError, match="32 bits per token; this model takes 16"):
        model(text, torch.zeros(2, L - 1, 32), SCHEDULE)
    with pytest.raises(ValueError, match="do not fit"):
        model(text, inputs[:, :-1], SCHEDULE)
    long = TextFeatures(torch.zeros(1, 200, 64), torch.ones(1, 200, dtype=torch.bool))
    with pytest.raises(ValueError, match="at most 128"):
        model(long, inputs[:1], SCHEDULE)


def test_the_tokens_form_gives_every_scale_its_own_negated_codes_the_first_with_the_start_token(model, text):
    t = tokens()
    seq = t.lq_input_sequence("tokens")
    assert seq.shape[1] == L and torch.equal(seq, -t.code_sequence())
    n0 = SCHEDULE[0][0] * SCHEDULE[0][1]
    with torch.no_grad():
        context = model.text_context(text)
        got = model.embed(context, seq, SCHEDULE)
        rest = model.embed(context, seq[:, n0:], SCHEDULE)  # the other scales as usual
    torch.testing.assert_close(got[:, n0:], rest[:, n0:], atol=0, rtol=0)
    torch.testing.assert_close(got[:, :n0], rest[:, :n0] + model.word_embed(seq[:, :n0]), atol=1e-6, rtol=0)


def test_text_dropout_replaces_captions_by_cfg_uncond(model, text):
    inputs = tokens().teacher_input_sequence()
    dropped = text.with_drop([True, False])
    manual = text.features.clone()
    n = int(text.lens[0])
    manual[0, :n] = model.cfg_uncond[:n].detach()
    with torch.no_grad():
        out = model(dropped, inputs, SCHEDULE)
        ref = model(TextFeatures(manual, text.mask), inputs, SCHEDULE)
        plain = model(text, inputs, SCHEDULE)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    assert torch.equal(out[1], plain[1]) and not torch.allclose(out[0], plain[0])
    model.zero_grad()
    model(dropped, inputs, SCHEDULE).sum().backward()
    assert model.cfg_uncond.grad[:n].abs().sum() > 0 and model.cfg_uncond.grad[n:].abs().sum() == 0
    model.zero_grad(set_to_none=True)


def test_gradient_checkpointing_per_block_gives_the_same_gradients(text):
    torch.manual_seed(1)
    m = build_transformer("tiny")
    inputs = tokens().teacher_input_sequence()

    def grads():
        m.zero_grad(set_to_none=True)
        out = m(text, inputs, SCHEDULE, "full")
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    out, g = grads()
    m.set_gradient_checkpointing(True, blocks=[1])
    assert [b.gradient_checkpointing for b in m.blocks] == [False, True]
    out2, g2 = grads()
    torch.testing.assert_close(out2, out, atol=0, rtol=0)
    assert g.keys() == g2.keys()
    for n in g:
        torch.testing.assert_close(g2[n], g[n], atol=1e-6, rtol=1e-5)
    # diffusers' ModelMixin interface: every block, with the checkpoint function it is given
    calls = []

    def counting(block, *args):
        calls.append(block)
        return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)

    m.enable_gradient_checkpointing(gradient_checkpointing_func=counting)
    assert [b.gradient_checkpointing for b in m.blocks] == [True, True]
    out3, g3 = grads()
    assert calls == list(m.blocks)
    torch.testing.assert_close(out3, out, atol=0, rtol=0)
    for n in g:
        torch.testing.assert_close(g3[n], g[n], atol=1e-6, rtol=1e-5)
    m.disable_gradient_checkpointing()
    assert not any(b.gradient_checkpointing for b in m.blocks)
    m.disable_gradient_checkpointing()
    assert not any(b.gradient_checkpointing for b in m.blocks)


def test_bfloat16_autocast_keeps_float32_logits_close(model, text):
    inputs = tokens().teacher_input_sequence()
    with torch.no_grad():
        ref = model(text, inputs, SCHEDULE)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(text, inputs, SCHEDULE)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_the_matmul_attention_kernel_equals_sdpa_in_any_number_of_head_chunks(monkeypatch):
    from varestorer.transformer import infinity

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 37, 16, generator=g) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v, scale=1.0)
    assert torch.allclose(infinity.matmul_attention(q, k, v), ref, atol=1e-6)
    monkeypatch.setattr(infinity, "_SCORES_BUDGET", 2 * 37 * 37 * 4 * 3)  # 3 heads' scores: chunks of 3 and 1
    assert torch.allclose(infinity.matmul_attention(q, k, v), ref, atol=1e-6)


def test_the_matmul_kernel_changes_the_full_pass_by_rounding_only_and_masked_attention_not_at_all(text):
    torch.manual_seed(0)
    model = build_transformer("tiny").eval()
    inputs = tokens().teacher_input_sequence()
    with torch.no_grad():
        full, causal = model(text, inputs, SCHEDULE, "full"), model(text, inputs, SCHEDULE, "causal")
        model.set_attention_kernel("matmul")
        assert all(b.sa.kernel == "matmul" for b in model.blocks)
        assert torch.allclose(model(text, inputs, SCHEDULE, "full"), full, atol=ATOL)
        assert torch.equal(model(text, inputs, SCHEDULE, "causal"), causal)  # a mask: always sdpa
    with pytest.raises(ValueError, match="not one of sdpa, matmul"):
        model.set_attention_kernel("flash")


# ---------------------------------------------------------------------- LoRA
def test_zero_lora_gives_identical_logits_and_disabling_adapters_gives_the_base(text):
    torch.manual_seed(2)
    base = build_transformer("tiny").eval()
    inputs = tokens().teacher_input_sequence()
    with torch.no_grad():
        ref = base(text, inputs, SCHEDULE, attention="full")
    peft = apply_lora(base, rank=4)
    assert peft is base  # the adapters are inside the model (PeftAdapterMixin), not a wrapper around it
    trainable = {n for n, p in peft.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("text_proj_for_sos" in n for n in trainable)  # its ca.* is not a block's
    assert len(trainable) == 2 * 5 * 2  # lora_A, lora_B x 5 targets x 2 blocks
    with torch.no_grad():
        assert torch.equal(peft(text, inputs, SCHEDULE, attention="full"), ref)
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_()
        moved = peft(text, inputs, SCHEDULE, attention="full")
        with adapters_disabled(peft):
            assert torch.equal(peft(text, inputs, SCHEDULE, attention="full"), ref)
        assert torch.equal(peft(text, inputs, SCHEDULE, attention="full"), moved)  # on again after the block
    assert not torch.allclose(moved, ref, atol=1e-4)


def test_infinity_2b_on_meta_has_the_exact_counts(capsys):
    from varestorer.transformer.lora import lora_trainable_params

    with torch.device("meta"):
        model = build_transformer("infinity-2b")
    assert sum(p.numel() for p in model.parameters()) == 2_204_564_032
    assert lora_trainable_params(model) == 27_262_976
    assert main(["info", "--preset", "infinity-2b", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["transformer_params"] == 2_204_564_032
    assert info["lora_trainable_params"] == 27_262_976


def test_infinity_2b_key_layout_is_the_official_one():
    with torch.device("meta"):
        sd = build_transformer("infinity-2b").state_dict()
    top = {k for k in sd if not k.startswith("block_chunks.")}
    assert top == {
        "cfg_uncond",
        "pos_start",
        "text_norm.weight",
        "lvl_embed.weight",
        "word_embed.weight",
        "word_embed.bias",
        "text_proj_for_sos.ca.mat_q",
        "text_proj_for_sos.ca.v_bias",
        "text_proj_for_sos.ca.zero_k_bias",
        "text_proj_for_sos.ca.mat_kv.weight",
        "text_proj_for_sos.ca.proj.weight",
        "text_proj_for_sos.ca.proj.bias",
        "text_proj_for_ca.0.weight",
        "text_proj_for_ca.0.bias",
        "text_proj_for_ca.2.weight",
        "text_proj_for_ca.2.bias",
        "shared_ada_lin.1.weight",
        "shared_ada_lin.1.bias",
        "head_nm.ada_lin.1.weight",
        "head_nm.ada_lin.1.bias",
        "head.weight",
        "head.bias",
    }
    blocks = {re.sub(r"^block_chunks\.\d+\.module\.\d+\.", "", k) for k in sd if k.startswith("block_chunks.")}
    assert blocks == {
        "ada_gss",
        "sa.mat_qkv.weight",
        "sa.q_bias",
        "sa.v_bias",
        "sa.zero_k_bias",
        "sa.scale_mul_1H11",
        "sa.proj.weight",
        "sa.proj.bias",
        "ca.mat_q.weight",
        "ca.mat_q.bias",
        "ca.mat_kv.weight",
        "ca.v_bias",
        "ca.zero_k_bias",
        "ca.proj.weight",
        "ca.proj.bias",
        "ca_norm.weight",
        "ca_norm.bias",
        "ffn.fc1.weight",
        "ffn.fc1.bias",
        "ffn.fc2.weight",
        "ffn.fc2.bias",
    }
    chunks = {tuple(map(int, re.findall(r"\d+", k)[:2])) for k in sd if k.startswith("block_chunks.")}
    assert chunks == {(c, i) for c in range(8) for i in range(4)}
    assert sd["cfg_uncond"].shape == (512, 2048) and sd["head.weight"].shape == (64, 2048)
    assert sd["block_chunks.7.module.3.sa.scale_mul_1H11"].shape == (1, 16, 1, 1)
    assert sd["text_proj_for_sos.ca.mat_q"].shape == (1, 16, 128)
    assert sd["lvl_embed.weight"].shape == (15, 2048)


# ---------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("outer", ["flat", "trainer"])
def test_official_layout_checkpoint_loads_with_nothing_missing(model, text, tmp_path, caplog, outer):
    caplog.set_level(logging.INFO, logger="varestorer")
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    if outer == "flat":  # infinity_2b_reg.pth: the state dict itself
        obj = {**sd, "attn_bias_for_masking": torch.zeros(1, 1, 4, 4)}
    else:  # a training checkpoint: ["trainer"]["gpt_fsdp"], DDP prefixes
        obj = {"trainer": {"gpt_fsdp": {f"module.{k}": v for k, v in sd.items()}}, "epoch": torch.tensor(3)}
    path = tmp_path / "infinity_tiny.pth"
    torch.save(obj, path)
    loaded = load_transformer("tiny", path)
    assert loaded.state_dict().keys() == sd.keys()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k]), k
    inputs = tokens().teacher_input_sequence()
    with torch.no_grad():
        assert torch.equal(loaded(text, inputs, SCHEDULE), model(text, inputs, SCHEDULE))
    if outer == "flat":  # named with its reason in one note, not dropped silently
        notes = [r for r in caplog.records if "attn_bias_for_masking" in r.getMessage()]
        assert len(notes) == 1 and "block-causal attention mask" in notes[0].getMessage()


def test_only_the_known_harmless_extras_are_ignored(model, tmp_path):
    sd = dict(model.state_dict())
    torch.save({**sd, "lvl_1L": torch.zeros(1, 4), "Infinity_visible_kvlen": torch.zeros(3)}, tmp_path / "old.pth")
    load_transformer("tiny", tmp_path / "old.pth")  # buffers of older versions: fine
    torch.save({**sd, "lvl_1L": torch.zeros(1, 4), "ema_head.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError) as err:  # anything else may be a weight we would silently lose
        load_transformer("tiny", tmp_path / "other.pth")
    msg = str(err.value)
    assert "unexpected (1): ema_head.weight" in msg and "known harmless extras, ignored: lvl_1L" in msg


def test_cfg_uncond_of_another_text_length_is_fitted_as_infinity_does(model, tmp_path):
    sd = dict(model.state_dict())
    sd["cfg_uncond"] = model.cfg_uncond.detach()[:100].clone()
    torch.save(sd, tmp_path / "short.pth")
    loaded = load_transformer("tiny", tmp_path / "short.pth")
    assert torch.equal(loaded.cfg_uncond[:100], sd["cfg_uncond"])
    assert torch.equal(loaded.cfg_uncond[100:], InfinityTransformer.default_cfg_uncond(128, 64)[100:])


def test_wrong_checkpoints_give_clear_errors(model, tmp_path):
    sd = dict(model.state_dict())
    bad = {k: v for k, v in sd.items() if k != "head.bias"}
    bad["extra.weight"] = torch.zeros(3)
    bad["word_embed.weight"] = torch.zeros(64, 32)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        load_transformer("tiny", tmp_path / "bad.pth")
    msg = str(err.value)
    assert "missing (1): head.bias" in msg
    assert "unexpected (1): extra.weight" in msg
    assert "word_embed.weight (64, 32) vs model (64, 16)" in msg
    assert "most like the 'tiny' preset" in msg
    # the tiny checkpoint given for the 2B preset (built on the meta device: no allocation)
    torch.save(sd, tmp_path / "tiny.pth")
    with pytest.raises(CheckpointError, match=r"(?s)mis-shaped.*most like the 'tiny' preset"):
        load_transformer("infinity-2b", tmp_path / "tiny.pth")
    # a checkpoint of one of Infinity's layer configurations is recognised (meta tensors: no data)
    with torch.device("meta"):
        layer12 = InfinityTransformer(depth=12, embed_dim=768, num_heads=8, num_block_chunks=4).state_dict()
    torch.save(layer12, tmp_path / "layer12.pth")
    with pytest.raises(CheckpointError, match="most like the 'infinity-layer12' preset"):
        load_transformer("tiny", tmp_path / "layer12.pth")
    # pickled code is refused (weights_only=True)
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_transformer("tiny", tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_transformer("tiny", tmp_path / "nowhere.pth")


# ---------------------------------------------------------------------- sampling
def test_sampling_is_deterministic_for_a_seed(model, text):
    a = sample(model, text, SCHEDULE, cfg=3.0, tau=0.5, top_k=2, top_p=0.97, seed=0)
    b = sample(model, text, SCHEDULE, cfg=3.0, tau=0.5, top_k=2, top_p=0.97, seed=0)
    c = sample(model, text, SCHEDULE, cfg=3.0, tau=0.5, top_k=2, top_p=0.97, seed=1)
    assert [x.shape for x in a.bits] == [(2, h, w, 16) for h, w in SCHEDULE]
    assert a.latent.shape == (2, 16, 8, 8)
    assert all(torch.equal(x, y) for x, y in zip(a.bits, b.bits))
    assert torch.equal(a.latent, b.latent)
    assert not all(torch.equal(x, y) for x, y in zip(a.bits, c.bits))
    # the latent is the sum of the sampled codes (what the VAE decodes)
    torch.testing.assert_close(a.latent, MultiScaleBSQ(16).bits_to_latent(a.bits))


#: the plain conditional distribution (sample()'s defaults are Infinity's cfg 4, tau 0.5, top_p 0.97)
PLAIN = dict(cfg=1.0, tau=1.0, top_k=0, top_p=0.0)


def test_sampling_defaults_are_infinitys_released_settings(model, text):
    from varestorer.presets import OFFICIAL_SAMPLER, PRESETS

    assert (OFFICIAL_SAMPLER.cfg, OFFICIAL_SAMPLER.tau, OFFICIAL_SAMPLER.top_k, OFFICIAL_SAMPLER.top_p) == (
        4.0,
        0.5,
        900,
        0.97,
    )  # scripts/infer.sh and gen_one_img of FoundationVision/Infinity
    assert all(p.sampler == OFFICIAL_SAMPLER for p in PRESETS.values())
    default = sample(model, text, SCHEDULE, seed=2, return_logits=True)
    official = sample(model, text, SCHEDULE, seed=2, return_logits=True, cfg=4.0, tau=0.5, top_k=900, top_p=0.97)
    plain = sample(model, text, SCHEDULE, seed=2, return_logits=True, **PLAIN)
    assert all(torch.equal(a, b) for a, b in zip(default.logits, official.logits))
    assert all(torch.equal(a, b) for a, b in zip(default.bits, official.bits))
    assert not torch.allclose(default.logits[0], plain.logits[0])


def test_sampled_bits_feed_back_as_the_causal_forward_inputs(model, text):
    out = sample(model, text, SCHEDULE, seed=3, return_logits=True, **PLAIN)
    summed, inputs = 0, []
    q = MultiScaleBSQ(16)
    for k, bits in enumerate(out.bits[:-1]):
        summed = summed + q.bits_to_latent([bits], size=(8, 8))
        nxt = F.interpolate(summed, size=SCHEDULE[k + 1], mode="bilinear", align_corners=False)
        inputs.append(nxt.flatten(2).transpose(1, 2))
    with torch.no_grad():
        logits = model(text, torch.cat(inputs, 1), SCHEDULE)
    torch.testing.assert_close(torch.cat(out.logits, 1), logits, atol=ATOL, rtol=0)


def test_cfg_one_equals_the_unguided_path(model, text):
    plain = sample(model, text, SCHEDULE, seed=5, return_logits=True, **PLAIN)
    # guidance only at the last scale: the doubled (cond + uncond) batch runs at every scale,
    # and the scales with cfg 1 still give exactly the unguided logits and bits
    late = sample(model, text, SCHEDULE, seed=5, return_logits=True, **{**PLAIN, "cfg": [1, 1, 1, 1, 4.0]})
    for k in range(4):
        torch.testing.assert_close(late.logits[k], plain.logits[k], atol=ATOL, rtol=0)
        assert torch.equal(late.bits[k], plain.bits[k])
    assert not torch.allclose(late.logits[4], plain.logits[4], atol=1e-4)


def test_given_bits_are_injected_for_the_first_scales(model, text):
    given = tokens(seed=7).bits
    out = sample(model, text, SCHEDULE, seed=0, given_bits=given, num_given=3)
    assert all(torch.equal(out.bits[k], given[k]) for k in range(3))
    assert not torch.equal(out.bits[4], given[4])
    with pytest.raises(ValueError, match="expected"):
        sample(model, text, SCHEDULE, given_bits=[g[:1] for g in given], num_given=1)


def test_top_k_top_p_filtering():
    logits = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    assert torch.equal(filter_logits(logits, top_k=1)[0], torch.tensor([-torch.inf, 2.0]))
    assert torch.equal(filter_logits(logits, top_k=2), logits)  # k >= 2 values: nothing removed
    # p(0) = 0.119: removed by top-p 0.85, kept by top-p 0.9
    assert torch.isinf(filter_logits(logits, top_p=0.85)[0, 0])
    assert not torch.isinf(filter_logits(logits, top_p=0.9)).any()
