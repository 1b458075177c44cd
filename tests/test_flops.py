"""``varestorer bench flops``: torch's FLOP counter on the meta device against counts made by hand."""

import json
import time

import pytest
import torch
from torch import nn

from varestorer.cli import main
from varestorer.tokenizer.schedules import scale_schedule
from varestorer.transformer.flops import (
    CATEGORIES,
    analytic_flops,
    count,
    count_multistep,
    count_pass,
    flops_report,
    linear_flops,
    meta_text,
    multistep_segments,
    one_pass_segments,
)
from varestorer.transformer.loading import build_transformer

SCHEDULE = [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8)]  # the tiny preset at 64 px
SIZES = [h * w for h, w in SCHEDULE]
L = sum(SIZES)  # 121
VISIBLE = sum(n * sum(SIZES[: k + 1]) for k, n in enumerate(SIZES))  # causal (query, key) pairs: 1+20+336+2052+7744


@pytest.fixture(scope="module")
def tiny():
    with torch.device("meta"):
        return build_transformer("tiny")


def test_the_counter_gives_2_in_out_tokens_for_one_linear_layer():
    with torch.device("meta"):
        layer = nn.Linear(48, 80)
    flops = sum(count(layer, torch.empty(1, 37, 48, device="meta"))["all"].values())
    assert flops == 2 * 48 * 80 * 37 == linear_flops(48, 80, 37)


def test_the_counter_gives_the_hand_count_for_one_attention_block(tiny):
    c, T = tiny.config, 7
    C, H, hd, M = c.embed_dim, c.num_heads, c.embed_dim // c.num_heads, tiny.blocks[0].ffn.fc1.out_features
    context = tiny.text_context(meta_text(tiny, T))
    rope = tiny.rope(SCHEDULE, torch.device("meta"))
    x = torch.empty(1, L, C, device="meta")
    block = tiny.blocks[0]

    self_attention = count(block.sa, x, rope, None, None)["all"]
    by_hand = 2 * L * C * 3 * C + 2 * L * C * C + 2 * 2 * H * L * L * hd  # mat_qkv, proj, QK^T and AV
    assert sum(self_attention.values()) == by_hand
    assert self_attention["bmm"] == 2 * 2 * H * L * L * hd  # SDPA on meta: two bmm, counted

    whole = count(block, x, context.gss, context.kv, context.kv_mask, rope, None)["all"]
    cross = 2 * L * C * C + 2 * T * C * 2 * C + 2 * L * C * C + 2 * 2 * H * L * T * hd  # q, kv, proj, QK^T and AV
    ffn = 2 * L * C * M * 2
    assert sum(whole.values()) == by_hand + cross + ffn


def test_the_counter_matches_the_closed_form_of_the_whole_model(tiny):
    for resolution, T in ((64, 30), (32, 5)):
        schedule = scale_schedule(resolution, 8)  # the tiny VAE downsamples 8x
        for attention in ("full", "causal"):
            counted = count_pass(tiny, schedule, attention, T)
            expected = analytic_flops(tiny, one_pass_segments(schedule, "full"), T)  # dense either way
            assert all(counted[k] == expected[k] for k in CATEGORIES), attention
        for cfg in (False, True):
            counted = count_multistep(tiny, schedule, T, cfg=cfg)
            expected = analytic_flops(tiny, multistep_segments(schedule), T, batch=2 if cfg else 1)
            assert all(counted[k] == expected[k] for k in CATEGORIES)


def test_full_and_causal_differ_by_the_hidden_blocks_of_self_attention(tiny):
    C, D = tiny.config.embed_dim, tiny.config.depth
    full, causal = count_pass(tiny, SCHEDULE, "full"), count_pass(tiny, SCHEDULE, "causal")
    # SDPA applies the block-causal mask to dense scores: the counted passes cost the same
    assert full == causal
    assert full["self_attention"] == D * 4 * C * L * L
    # the visible blocks alone, as the KV-cached decoding computes them (counted there)
    assert count_multistep(tiny, SCHEDULE, cfg=False)["self_attention"] == D * 4 * C * VISIBLE
    r = flops_report("tiny", 64)
    assert r["difference_counted"] == 0
    assert r["difference_visible"] == D * 4 * C * (L * L - VISIBLE) == 2 * 4 * 64 * (121 * 121 - 10153)
    assert r["causal_visible"]["self_attention"] == D * 4 * C * VISIBLE
    assert r["multistep_no_cfg"] == count_multistep(tiny, SCHEDULE, cfg=False)["total"]


def test_bench_flops_prints_and_jsons_its_figures_on_the_tiny_preset(capsys):
    assert main(["bench", "flops", "--preset", "tiny", "--resolution", "64"]) == 0
    out = capsys.readouterr().out
    for text in (
        "one-step, full attention [counted]",
        "block-causal, dense mask [counted]",
        "block-causal, visible blocks [analytic]",
        "multistep, KV cache, CFG x2 [counted]",
        "VAE decoder",
        "VAE encoder",
        "estimate 2 N L",
        "attn share",
        "MFLOPs",
    ):
        assert text in out
    assert main(["bench", "flops", "--preset", "tiny", "--resolution", "64", "--prompt-tokens", "12", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["tokens"], r["scales"], r["prompt_tokens"]) == (121, 5, 12)
    for key in ("full", "causal_dense", "causal_visible", "multistep_cfg"):
        assert set(r[key]) == {"total", *CATEGORIES, "attention_share"}
        assert r[key]["total"] == sum(r[key][k] for k in CATEGORIES)
    assert r["vae_decoder"] > 0 and r["vae_encoder"] > 0
    assert r["onestep_pipeline"] == r["vae_encoder"] + r["full"]["total"] + r["vae_decoder"]
    assert r["multistep_pipeline"] == r["multistep_cfg"]["total"] + r["vae_decoder"]
    assert r["analytic_matches_counter"] and "paper" not in r
    assert main(["bench", "flops", "--preset", "tiny", "--resolution", "60"]) == 2
    assert "valid resolutions" in capsys.readouterr().err
    assert main(["bench", "flops", "--preset", "tiny", "--prompt-tokens", "0"]) == 2
    assert "--prompt-tokens must be between 1 and 128" in capsys.readouterr().err


def test_infinity_2b_counts_on_meta_in_seconds_with_its_known_parameter_count():
    start = time.perf_counter()
    r = flops_report("infinity-2b", 512)
    assert time.perf_counter() - start < 90
    assert r["params"] == 2_204_564_032 and r["tokens"] == 2521
    assert r["estimate_2NL"] == 2 * 2_204_564_032 * 2521
    assert r["full"]["self_attention"] == 32 * 4 * 2048 * 2521**2
    assert r["analytic_matches_counter"]
    assert r["difference_visible"] > 0 == r["difference_counted"]
    assert r["paper"]["paper_ratio"] == pytest.approx(1.28)
    assert r["multistep_cfg"]["total"] > r["full"]["total"]
