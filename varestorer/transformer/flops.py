"""Forward FLOPs of the one-step pass, the block-causal pass, KV-cached sampling and the VAE,
counted on the meta device (no weights, no memory): ``varestorer bench flops``.

What is counted. :class:`torch.utils.flop_counter.FlopCounterMode` counts 2 FLOPs per
multiply-add of the matrix products and convolutions (``mm``, ``addmm``, ``bmm``,
``convolution``); elementwise work (norms, RoPE, softmax, GELU, AdaLN modulation, the sampler,
upsampling) counts 0. FLOPs = 2 x MACs: tools that report "FLOPs" as multiply-adds (fvcore,
thop) give half of these figures.

How attention is counted. On the meta device ``F.scaled_dot_product_attention`` runs its
reference ("math") path, two ``bmm`` per call, QK^T and AV, which the counter sees; summed over
heads they are ``4 * width * queries * keys`` FLOPs. A boolean mask is applied to the dense score
matrix, so the counted block-causal pass costs as much as the full one: that is what SDPA computes
with a mask. The visible blocks alone (scale ``k``'s queries against the keys of scales ``0..k``,
what the KV-cached sampler and a block-sparse kernel compute) are counted analytically
(:func:`analytic_flops`). On a CPU tensor torch's counter sees SDPA's fused kernel as 0 FLOPs:
another reason to count on the meta device.

Categories of a pass (:func:`count_model`): ``self_attention`` (QK^T and AV of the blocks'
self-attention: the only part full and causal attention change), ``text_attention`` (QK^T and
AV to the T5 features: the blocks' cross-attention to the text and the text pooling; not the
paper's "cross-scale attention", which is the full self-attention), ``block_linears`` (every
``nn.Linear`` of the blocks) and ``rest`` (linears outside the blocks: text projection, word
embedding, AdaLN, head).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..errors import ConfigError
from ..presets import get_preset
from ..tokenizer.loading import build_vae
from ..tokenizer.schedules import Scale
from .infinity import CrossAttnBlock, InfinityTransformer, SelfAttention
from .loading import build_transformer
from .text import TextFeatures

#: T5 tokens of the prompt when none is given (a BLIP caption of a photo is 10-30 T5 tokens;
#: the paper averages its FLOPs over 10 random prompts, which it does not list).
DEFAULT_PROMPT_TOKENS = 30
#: The VARestorer paper's appendix: GFLOPs at 512 px with and without cross-scale attention.
PAPER_GFLOPS = {"full": 1536.0, "causal": 1200.0}
CATEGORIES = ("self_attention", "text_attention", "block_linears", "rest")
_LINEAR_OPS = {"mm", "addmm"}

# ---------------------------------------------------------------------------------- formulas


def linear_flops(in_features: int, out_features: int, tokens: int) -> int:
    """FLOPs of ``nn.Linear(in_features, out_features)`` on ``tokens`` rows (the bias is not counted)."""
    return 2 * in_features * out_features * tokens


def attention_matmul_flops(width: int, queries: int, keys: int) -> int:
    """FLOPs of QK^T and AV summed over heads (``heads * head_dim == width``), one batch row."""
    return 2 * 2 * width * queries * keys


def scale_sizes(schedule: Sequence[Scale]) -> list[int]:
    """Tokens of each scale."""
    return [h * w for h, w in schedule]


def visible_pairs(schedule: Sequence[Scale], attention: str) -> int:
    """(query, key) pairs a pass computes: ``L^2`` for ``"full"``; for ``"causal"`` only the visible
    blocks, ``sum_k n_k * (n_0 + ... + n_k)``."""
    sizes = scale_sizes(schedule)
    if attention == "full":
        return sum(sizes) ** 2
    if attention == "causal":
        return sum(n * sum(sizes[: k + 1]) for k, n in enumerate(sizes))
    raise ConfigError(f"attention must be 'full' or 'causal', got {attention!r}")


def one_pass_segments(schedule: Sequence[Scale], attention: str) -> list[tuple[int, int, int]]:
    """The forward pass as one segment ``(queries, attention pairs, word-embedded tokens)``: every
    token at once; the first scale's input is the start token, not embedded from bits."""
    L = sum(scale_sizes(schedule))
    return [(L, visible_pairs(schedule, attention), L - 1)]


def multistep_segments(schedule: Sequence[Scale]) -> list[tuple[int, int, int]]:
    """KV-cached decoding, one segment per scale: scale ``k``'s queries against the cached keys of
    scales ``0..k``."""
    sizes = scale_sizes(schedule)
    return [(n, n * sum(sizes[: k + 1]), n if k else 0) for k, n in enumerate(sizes)]


def analytic_flops(
    model: InfinityTransformer, segments: Sequence[tuple[int, int, int]], text_tokens: int, batch: int = 1
) -> dict[str, int]:
    """Closed-form FLOPs (torch's convention) of the model's code path, by category.

    The text context (pooling, projection, shared AdaLN) runs once; each segment (see
    :func:`one_pass_segments`, :func:`multistep_segments`) runs the word embedding, every block
    (self-attention over its pairs, cross-attention to ``text_tokens``, whose keys/values every
    block projects again at every call) and the head.
    """
    c = model.config
    C, Ct5, T, D, d = c.embed_dim, c.text_channels, text_tokens, c.depth, c.codebook_dim
    M = model.blocks[0].ffn.fc1.out_features
    out = dict.fromkeys(CATEGORIES, 0)
    out["rest"] += (
        linear_flops(Ct5, 2 * C, T)
        + linear_flops(C, C, 1)  # attentive pooling's kv, proj
        + linear_flops(Ct5, C, T)
        + linear_flops(C, C, T)  # text_proj_for_ca
        + linear_flops(C, 6 * C, 1)
    )  # shared_ada_lin
    out["text_attention"] += attention_matmul_flops(C, 1, T)  # the pooling query
    for q, pairs, embedded in segments:
        out["rest"] += linear_flops(d, C, embedded) + linear_flops(C, 2 * C, 1) + linear_flops(C, 2 * d, q)
        per_block = (
            linear_flops(C, 3 * C, q)
            + linear_flops(C, C, q)  # sa.mat_qkv, sa.proj
            + linear_flops(C, C, q)
            + linear_flops(C, 2 * C, T)
            + linear_flops(C, C, q)  # ca q, kv, proj
            + linear_flops(C, M, q)
            + linear_flops(M, C, q)
        )  # ffn
        out["block_linears"] += D * per_block
        out["self_attention"] += D * attention_matmul_flops(C, 1, pairs)
        out["text_attention"] += D * attention_matmul_flops(C, q, T)
    return {k: v * batch for k, v in out.items()}


def per_token_params(model: InfinityTransformer) -> int:
    """Weights applied to every image token: the blocks' linears except the cross-attention
    keys/values (those run on the text), the word embedding and the head."""
    names = ("sa.mat_qkv", "sa.proj", "ca.mat_q", "ca.proj", "ffn.fc1", "ffn.fc2")
    blocks = sum(blk.get_submodule(n).weight.numel() for blk in model.blocks for n in names)
    return blocks + model.word_embed.weight.numel() + model.head.weight.numel()


# ---------------------------------------------------------------------------------- counting


def _snapshot(counter: FlopCounterMode) -> Counter:
    """FLOPs counted so far, by op name (``"mm"``, ``"bmm"``, ...)."""
    return Counter({_op_name(op): v for op, v in counter.get_flop_counts().get("Global", {}).items()})


def _op_name(op) -> str:
    return str(op).split(".")[-1]


def count(fn: Callable, *args, within: Sequence[torch.nn.Module] = (), **kwargs) -> dict[str, Counter]:
    """Run ``fn(*args, **kwargs)`` under torch's FLOP counter: FLOPs by op name, ``"all"`` for the
    whole run and, per class of the modules in ``within``, what ran inside those modules (forward
    hooks: the module names torch's counter gives depend on which module is called first)."""
    out, starts, handles = {"all": Counter()}, {}, []

    def enter(module, _args):
        starts[module] = _snapshot(counter)

    def leave(module, _args, _output):
        out[type(module).__name__].update(_snapshot(counter) - starts.pop(module))

    with FlopCounterMode(display=False) as counter:
        for module in within:
            out.setdefault(type(module).__name__, Counter())
            handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
        try:
            fn(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        out["all"] = _snapshot(counter)
    return out


def _is_attention(op: str) -> bool:
    return op in ("bmm", "baddbmm") or "attention" in op


def count_model(model: InfinityTransformer, fn: Callable, *args, **kwargs) -> dict[str, int]:
    """Counted FLOPs of ``fn(*args, **kwargs)``, a run of ``model``, by category (see the module
    doc) and ``total``."""
    within = [m for m in model.modules() if isinstance(m, (SelfAttention, CrossAttnBlock))]
    counts = count(fn, *args, within=within, **kwargs)
    total = sum(counts["all"].values())
    attention = sum(v for op, v in counts["all"].items() if _is_attention(op))
    self_attention = sum(v for op, v in counts["SelfAttention"].items() if _is_attention(op))
    block_linears = sum(v for op, v in counts["CrossAttnBlock"].items() if op in _LINEAR_OPS)
    return {
        "total": total,
        "self_attention": self_attention,
        "text_attention": attention - self_attention,
        "block_linears": block_linears,
        "rest": total - attention - block_linears,
    }


def meta_text(model: InfinityTransformer, prompt_tokens: int, batch: int = 1) -> TextFeatures:
    """T5 features ``(batch, prompt_tokens, text_channels)`` on the meta device, every token valid."""
    limit = model.config.text_maxlen
    if not 1 <= prompt_tokens <= limit:
        raise ConfigError(
            f"--prompt-tokens must be between 1 and {limit} (this model's text_maxlen), got {prompt_tokens}"
        )
    feats = torch.empty(batch, prompt_tokens, model.config.text_channels, device="meta")
    return TextFeatures(feats, torch.ones(batch, prompt_tokens, dtype=torch.bool, device="meta"))


def count_pass(
    model: InfinityTransformer, schedule: Sequence[Scale], attention: str, prompt_tokens: int = DEFAULT_PROMPT_TOKENS
) -> dict[str, int]:
    """Counted FLOPs of one forward (``attention`` "full": the one-step student; "causal": the
    teacher-forcing pass) for one image: text, all ``L`` tokens, the head."""
    L = sum(scale_sizes(schedule))
    inputs = torch.empty(1, L - 1, model.config.codebook_dim, device="meta") if L > 1 else None
    return count_model(model, model, meta_text(model, prompt_tokens), inputs, list(schedule), attention=attention)


def count_multistep(
    model: InfinityTransformer, schedule: Sequence[Scale], prompt_tokens: int = DEFAULT_PROMPT_TOKENS, cfg: bool = True
) -> dict[str, int]:
    """Counted FLOPs of sampling one image scale by scale with the KV cache, as ``sample()`` runs
    it: text context once, then one ``decode_scale`` per scale; ``cfg`` doubles the batch (the
    unconditional branch). The sampler's draws and upsampling are elementwise (not counted)."""
    batch, d = 2 if cfg else 1, model.config.codebook_dim

    def run():
        state = model.start_decoding(meta_text(model, prompt_tokens, batch), list(schedule))
        for k, n in enumerate(scale_sizes(schedule)):
            model.decode_scale(state, torch.empty(batch, n, d, device="meta") if k else None)

    return count_model(model, run)


def count_vae(vae, resolution: int) -> dict[str, int]:
    """Counted FLOPs (convolutions) of the VAE encoder on one ``resolution`` image and of the
    decoder on its latent."""
    side = resolution // vae.downsample
    enc = count(vae.encoder, torch.empty(1, 3, resolution, resolution, device="meta"))["all"]
    dec = count(vae.decoder, torch.empty(1, vae.codebook_dim, side, side, device="meta"))["all"]
    return {"encoder": sum(enc.values()), "decoder": sum(dec.values())}


# ---------------------------------------------------------------------------------- the report


def _with_share(flops: dict[str, int]) -> dict:
    """A category dict plus ``total`` (if missing) and ``attention_share``: QK^T and AV matmuls
    (self and cross) over the total."""
    out = dict(flops)
    out.setdefault("total", sum(out[k] for k in CATEGORIES))
    out["attention_share"] = (out["self_attention"] + out["text_attention"]) / out["total"]
    return out


def paper_note(full: int, causal_visible: int, params: int, tokens: int, self_full: int) -> dict:
    """What the paper's 1536 vs ~1200 GFLOPs would imply next to our counts of the same pass."""
    pf, pc = PAPER_GFLOPS["full"] * 1e9, PAPER_GFLOPS["causal"] * 1e9
    ratio = pf / pc
    pairs_fraction = (self_full - (full - causal_visible)) / self_full  # visible share of the L^2 pairs
    # (linear + A) / (linear + f A) = ratio  ->  A / total_full needed
    a_over_rest = (ratio - 1) / (1 - ratio * pairs_fraction)
    return {
        "paper_full_gflops": PAPER_GFLOPS["full"],
        "paper_causal_gflops": PAPER_GFLOPS["causal"],
        "paper_ratio": ratio,
        "paper_difference_gflops": (pf - pc) / 1e9,
        "our_ratio": full / causal_visible,
        "our_difference_gflops": (full - causal_visible) / 1e9,
        "paper_full_over_ours": pf / full,
        "paper_causal_over_ours": pc / causal_visible,
        "tokens_implied_2NL": [pf / (2 * params), pc / (2 * params)],
        "tokens_implied_NL_macs": [pf / params, pc / params],
        "self_attention_share_needed": a_over_rest / (1 + a_over_rest) if a_over_rest > 0 else None,
        "self_attention_share_ours": self_full / full,
        "tokens": tokens,
    }


def flops_report(preset: str = "infinity-2b", resolution: int | None = None, prompt_tokens: int | None = None) -> dict:
    """Every figure of ``varestorer bench flops`` for one image of ``preset`` at ``resolution``
    (default: the preset's) with a prompt of ``prompt_tokens`` T5 tokens (default: 30)."""

    p = get_preset(preset)
    if not p.transformer:
        raise ConfigError(f"preset {p.name!r} has no transformer to count")
    resolution = resolution or p.resolution
    prompt_tokens = DEFAULT_PROMPT_TOKENS if prompt_tokens is None else prompt_tokens
    with torch.device("meta"):
        model, vae = build_transformer(p), build_vae(p)
    schedule = vae.schedule(resolution)
    L, params = sum(scale_sizes(schedule)), sum(t.numel() for t in model.parameters())

    full = count_pass(model, schedule, "full", prompt_tokens)
    causal_dense = count_pass(model, schedule, "causal", prompt_tokens)
    multistep = count_multistep(model, schedule, prompt_tokens, cfg=True)
    analytic = {
        "full": analytic_flops(model, one_pass_segments(schedule, "full"), prompt_tokens),
        "causal": analytic_flops(model, one_pass_segments(schedule, "causal"), prompt_tokens),
        "multistep": analytic_flops(model, multistep_segments(schedule), prompt_tokens, batch=2),
    }
    matches = all(full[k] == analytic["full"][k] for k in CATEGORIES) and all(
        multistep[k] == analytic["multistep"][k] for k in CATEGORIES
    )
    causal_visible = {**causal_dense, "self_attention": analytic["causal"]["self_attention"]}
    causal_visible["total"] = sum(causal_visible[k] for k in CATEGORIES)
    vae_flops = count_vae(vae, resolution)
    n_tok = per_token_params(model)
    onestep_pipeline = vae_flops["encoder"] + full["total"] + vae_flops["decoder"]
    multistep_pipeline = multistep["total"] + vae_flops["decoder"]
    report = {
        "preset": p.name,
        "resolution": resolution,
        "sides": [h for h, _ in schedule],
        "scales": len(schedule),
        "tokens": L,
        "prompt_tokens": prompt_tokens,
        "batch": 1,
        "convention": "FLOPs = 2 x multiply-adds of matmuls and convolutions (torch FlopCounterMode on the meta "
        "device); elementwise ops (norms, RoPE, softmax, GELU) count 0",
        "full": _with_share(full),
        "causal_dense": _with_share(causal_dense),
        "causal_visible": _with_share(causal_visible),
        "difference_counted": full["total"] - causal_dense["total"],
        "difference_visible": full["total"] - causal_visible["total"],
        "ratio_full_over_causal_visible": full["total"] / causal_visible["total"],
        "multistep_cfg": _with_share(multistep),
        "multistep_no_cfg": multistep["total"] // 2,
        "vae_encoder": vae_flops["encoder"],
        "vae_decoder": vae_flops["decoder"],
        "onestep_pipeline": onestep_pipeline,
        "multistep_pipeline": multistep_pipeline,
        "multistep_over_onestep": multistep_pipeline / onestep_pipeline,
        "params": params,
        "per_token_params": n_tok,
        "estimate_2NL": 2 * params * L,
        "estimate_2NtokL": 2 * n_tok * L,
        "analytic_matches_counter": matches,
    }
    if p.name == "infinity-2b" and resolution == 512:
        report["paper"] = paper_note(full["total"], causal_visible["total"], params, L, full["self_attention"])
    return report


def _row(label: str, r: dict, scale: float) -> str:
    cells = "".join(f"{r[k] / scale:>17,.2f}" for k in ("total", *CATEGORIES))
    return f"  {label:<40}{cells}{100 * r['attention_share']:>11.1f}%"


def format_report(r: dict) -> str:
    """The report as text for people (``--json`` gives the dict)."""
    scale, unit = (1e9, "GFLOPs") if r["full"]["total"] >= 1e9 else (1e6, "MFLOPs")

    def f(x: float) -> str:
        return f"{x / scale:,.2f} {unit}"

    header = ("total", "self-attn QK,AV", "text-attn QK,AV", "block linears", "rest")
    lines = [
        f"bench flops: {r['preset']} at {r['resolution']} px, one image: {r['scales']} scales {r['sides']} = "
        f"{r['tokens']:,} tokens, a prompt of {r['prompt_tokens']} T5 tokens",
        "  FLOPs = 2 x multiply-adds of matmuls and convolutions, torch's FlopCounterMode on the meta device;",
        "  elementwise ops (norms, RoPE, softmax, GELU) count 0",
        "",
        f"  {'transformer pass, ' + unit:<40}" + "".join(f"{h:>17}" for h in header) + f"{'attn share':>12}",
        _row("one-step, full attention [counted]", r["full"], scale),
        _row("block-causal, dense mask [counted]", r["causal_dense"], scale),
        _row("block-causal, visible blocks [analytic]", r["causal_visible"], scale),
        _row("multistep, KV cache, CFG x2 [counted]", r["multistep_cfg"], scale),
        "",
        f"  full - causal: {f(r['difference_counted'])} counted (SDPA applies the mask to dense scores: the masked",
        f"    pass computes every pair); {f(r['difference_visible'])} against the visible blocks only "
        f"(full / causal = {r['ratio_full_over_causal_visible']:.3f})",
        f"  multistep: each scale decoded with the KV cache (per branch the visible-block count; "
        f"{f(r['multistep_no_cfg'])} without CFG)",
        f"  VAE encoder (the LQ image, once per one-step restoration): {f(r['vae_encoder'])}",
        f"  VAE decoder (once per image, every method):               {f(r['vae_decoder'])}",
        f"  one-step pipeline (encoder + full pass + decoder):         {f(r['onestep_pipeline'])}",
        f"  multistep pipeline (sampling with CFG + decoder):          {f(r['multistep_pipeline'])} "
        f"= {r['multistep_over_onestep']:.2f}x one-step",
        f"  estimate 2 N L = 2 x {r['params']:,} x {r['tokens']:,} = {f(r['estimate_2NL'])} "
        f"(counted full pass / estimate = {r['full']['total'] / r['estimate_2NL']:.3f})",
        f"    the weights applied to every image token are N_tok = {r['per_token_params']:,}: 2 N_tok L = "
        f"{f(r['estimate_2NtokL'])}, the linears;",
        "    2 N L also counts the text-side weights (per-block text keys/values, T5 projection, cfg_uncond) per image",
        "    token, and no attention",
    ]
    if not r["analytic_matches_counter"]:
        lines.append(
            "  WARNING: the counter and the closed form disagree: the model's code changed; update "
            "varestorer/transformer/flops.py:analytic_flops"
        )
    if "paper" in r:
        lines += ["", *paper_lines(r["paper"])]
    return "\n".join(lines)


def paper_lines(n: dict) -> list[str]:
    """The note on the paper's figure, as text."""
    needed = n["self_attention_share_needed"]
    needed_text = (
        f"self-attention would have to be {100 * needed:.0f}% of the full pass (it is "
        f"{100 * n['self_attention_share_ours']:.0f}%)"
        if needed is not None
        else "no attention share would do"
    )
    return [
        f"  note: the paper reports {n['paper_full_gflops']:.0f} vs ~{n['paper_causal_gflops']:.0f} GFLOPs at 512 px "
        f"(ratio {n['paper_ratio']:.2f}, difference {n['paper_difference_gflops']:.0f}); here the ratio is "
        f"{n['our_ratio']:.3f},",
        f"    the difference {n['our_difference_gflops']:,.0f} GFLOPs ({n['our_difference_gflops'] / 2:,.0f} G "
        f"multiply-adds). Its figures are {100 * n['paper_full_over_ours']:.1f}% / "
        f"{100 * n['paper_causal_over_ours']:.1f}% of ours; as 2 N L they would mean",
        f"    {n['tokens_implied_2NL'][0]:,.0f} / {n['tokens_implied_2NL'][1]:,.0f} tokens, as N L multiply-adds "
        f"{n['tokens_implied_NL_macs'][0]:,.0f} / {n['tokens_implied_NL_macs'][1]:,.0f} "
        f"(512 px has {n['tokens']:,} tokens, 256 px 521); for their ratio",
        f"    with 512 px's visible blocks {needed_text}.",
        "    No one convention (FLOPs or multiply-adds, another token count, attention only) gives both figures",
        "    from the public architecture.",
    ]
