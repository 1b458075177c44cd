"""Infinity's text-to-image next-scale transformer, with the bitwise head.

Same architecture and state-dict layout as the public ``infinity_2b_reg.pth``
(``infinity/models/infinity.py`` and ``basic.py`` of FoundationVision/Infinity, in the
configuration the release is built with: shared AdaLN, cosine self-attention, 2D RoPE in
every self-attention with Infinity's "star" position scaling, level embedding added once
before the first block, bit labels, no spatial patchify):

    cfg_uncond (text_maxlen, Ct5)       the learned "empty caption" for classifier-free guidance
    text_norm                           RMSNorm over the T5 features
    text_proj_for_sos.ca.*              attentive pooling of the text -> start token and AdaLN condition
    text_proj_for_ca.{0,2}              MLP of the T5 features -> cross-attention keys/values
    pos_start, lvl_embed, word_embed    start position, scale ("level") embedding, bits -> width
    shared_ada_lin.1                    condition -> 6 AdaLN vectors shared by all blocks
    block_chunks.{c}.module.{i}.        ada_gss, sa.{mat_qkv,q_bias,v_bias,zero_k_bias,scale_mul_1H11,proj},
                                        ca.{mat_q,mat_kv,v_bias,zero_k_bias,proj}, ca_norm, ffn.{fc1,fc2}
    head_nm.ada_lin.1, head             AdaLN before the head; 2 logits per bit

Text comes as :class:`~varestorer.transformer.text.TextFeatures` (padded T5 features and a
mask); the model applies ``cfg_uncond`` to the captions marked in ``text.drop``. The
teacher-forcing input is ``MultiScaleTokens.teacher_input_sequence()`` ``(B, L - 1, d)``;
the first scale's input is the start token made from the text. The output is bit logits
``(B, L, d, 2)``.

One code path serves three uses: teacher forcing with the block-wise causal mask
(``attention="causal"``), one pass with the full mask (``attention="full"``, the student)
and KV-cached scale-by-scale decoding (:meth:`InfinityTransformer.decode_scale`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from ..tokenizer.schedules import SQUARE_SIDES, Scale
from .text import TextFeatures

ATTENTION_MODES = ("causal", "full")
HEAD_INIT_SCALE = 0.02  # Infinity's ``hd0``: the head starts near zero (bit probabilities near 1/2)

#: Last scale of Infinity's 1M schedule per aspect-ratio template (h / w); the 2D RoPE of
#: every scale is laid out on this grid (``rope2d_normalized_by_hw=2``).
_ROPE_ANCHORS = {
    1.0: (64, 64),
    1.25: (70, 56),
    1.333: (72, 54),
    1.5: (78, 52),
    1.75: (84, 48),
    2.0: (90, 45),
    2.5: (100, 40),
    3.0: (111, 37),
}
_ROPE_ANCHORS.update({int(1 / r * 1000) / 1000: (w, h) for r, (h, w) in list(_ROPE_ANCHORS.items()) if r != 1.0})


def rope_anchor(schedule: list[Scale]) -> tuple[int, int]:
    """The grid Infinity lays a schedule's RoPE positions on: the nearest ratio's 1M last scale."""
    h, w = schedule[-1]
    ratio = min(_ROPE_ANCHORS, key=lambda r: abs(h / w - r))
    return _ROPE_ANCHORS[ratio]


def _autocast_off(x: Tensor):
    return torch.autocast(
        device_type=x.device.type if x.device.type in ("cuda", "cpu", "xpu") else "cpu", enabled=False
    )


def _layer_norm(x: Tensor, eps: float) -> Tensor:
    return F.layer_norm(x.float(), x.shape[-1:], eps=eps)


def _apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent channel pairs ``(2p, 2p + 1)`` of ``(B, H, L, c)`` by the angles of ``(L, c / 2)``."""
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((cos * x0 - sin * x1, sin * x0 + cos * x1), dim=-1).flatten(-2)


#: How self-attention's ``softmax(q k^T) v`` is computed: ``sdpa``, torch's
#: ``scaled_dot_product_attention`` (its kernel of choice; the default, and always with a mask);
#: ``matmul``, two matrix products and a softmax (:func:`matmul_attention`), faster than torch's
#: CPU flash kernel in bfloat16 on the 2-core AVX512-BF16 CPU of docs/real-size.md.
ATTENTION_KERNELS = ("sdpa", "matmul")
_SCORES_BUDGET = 256 * 2**20  # bytes of attention scores held at once by matmul_attention


def matmul_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``softmax(q k^T) v`` (scale 1, no mask) as ``matmul, softmax, matmul`` in the inputs'
    dtype, a few heads at a time so that the scores held never pass 256 MB (at 1024 px one
    head's are 221 MB in bfloat16). The softmax accumulates in float32 and writes the inputs'
    dtype."""
    B, H, L, _ = q.shape
    per_head = B * L * k.shape[-2] * q.element_size()
    step = max(1, min(H, _SCORES_BUDGET // max(per_head, 1)))
    outs = [
        torch.matmul(
            torch.softmax(torch.matmul(q[:, i : i + step], k[:, i : i + step].transpose(-1, -2)), -1),
            v[:, i : i + step],
        )
        for i in range(0, H, step)
    ]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).to(x.dtype)


class SelfAttention(nn.Module):
    """Cosine attention (L2-normalised q, k; learned per-head scale, at most 100) with 2D RoPE."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.mat_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
        self.max_scale_mul = math.log(100.0)
        self.proj = nn.Linear(dim, dim)
        self.kernel = "sdpa"  # one of ATTENTION_KERNELS (InfinityTransformer.set_attention_kernel)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None, cache: dict | None) -> Tensor:
        B, L, C = x.shape
        # the module is called (not its weight) so that LoRA adapters on mat_qkv take part
        qkv = self.mat_qkv(x)
        qkv = qkv + torch.cat((self.q_bias, self.zero_k_bias, self.v_bias)).to(qkv.dtype)
        q, k, v = qkv.view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        with _autocast_off(x):
            scale = self.scale_mul_1H11.float().clamp_max(self.max_scale_mul).exp()
            q = _apply_rope(F.normalize(q.float(), dim=-1) * scale, *rope)
            k = _apply_rope(F.normalize(k.float(), dim=-1), *rope)
        if cache is not None:  # KV cache of the scales decoded so far
            if "k" in cache:
                k, v = torch.cat((cache["k"], k), dim=2), torch.cat((cache["v"], v), dim=2)
            cache["k"], cache["v"] = k, v
        q, k = q.to(v.dtype), k.to(v.dtype)
        if self.kernel == "matmul" and mask is None:
            out = matmul_attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class CrossAttention(nn.Module):
    """Attention from queries to the (padded, masked) projected T5 features.

    ``pool=True`` is Infinity's attentive pooling: one learned query per head (``mat_q`` is
    then a parameter ``(1, H, c)``), output ``(B, 1, C)``.
    """

    def __init__(self, dim: int, kv_dim: int, num_heads: int, pool: bool = False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        if pool:
            self.mat_q = nn.Parameter(torch.empty(1, num_heads, self.head_dim))
        else:
            self.mat_q = nn.Linear(dim, dim)
        self.mat_kv = nn.Linear(kv_dim, 2 * dim, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor | None, kv: Tensor, kv_mask: Tensor) -> Tensor:
        B, T, _ = kv.shape
        kv = self.mat_kv(kv)
        kv = kv + torch.cat((self.zero_k_bias, self.v_bias)).to(kv.dtype)
        k, v = kv.view(B, T, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if isinstance(self.mat_q, nn.Parameter):
            q = self.mat_q.to(k.dtype).expand(B, -1, -1).unsqueeze(2)  # (B, H, 1, c)
        else:
            q = self.mat_q(x).view(B, x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)
        q = q.to(v.dtype)
        out = F.scaled_dot_product_attention(q, k.to(v.dtype), v, attn_mask=kv_mask[:, None, None, :])
        return self.proj(out.transpose(1, 2).flatten(2))


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class CrossAttnBlock(nn.Module):
    """Shared-AdaLN block: self-attention, cross-attention to the text, FFN (pre-norm)."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, norm_eps: float):
        super().__init__()
        self.eps = norm_eps
        self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, dim) / dim**0.5)
        self.sa = SelfAttention(dim, num_heads)
        self.ca = CrossAttention(dim, dim, num_heads)
        self.ca_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.ffn = FFN(dim, mlp_hidden)
        self.gradient_checkpointing = False

    def forward(self, x: Tensor, gss: Tensor, kv: Tensor, kv_mask: Tensor, rope, mask, cache=None) -> Tensor:
        with _autocast_off(x):
            gamma1, gamma2, scale1, scale2, shift1, shift2 = (self.ada_gss + gss).unbind(2)  # each (B, 1, C)
        h = _layer_norm(x, self.eps) * (scale1 + 1) + shift1
        x = x + self.sa(h, rope, mask, cache).float() * gamma1
        x = x + self.ca(self.ca_norm(x), kv, kv_mask).float()
        h = _layer_norm(x, self.eps) * (scale2 + 1) + shift2
        return x + self.ffn(h).float() * gamma2


class BlockChunk(nn.Module):
    """Infinity's ``MultipleLayers``: blocks under ``.module`` (the checkpoint's key layout)."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.module = nn.ModuleList(blocks)


@dataclass
class TextContext:
    """What the text gives every scale: AdaLN condition, start token, cross-attention K/V source."""

    cond: Tensor  # (B, D) float32: pooled text (the AdaLN condition and the start token)
    gss: Tensor  # (B, 1, 6, C) float32: shared AdaLN vectors
    kv: Tensor  # (B, T, C): projected text for cross-attention
    kv_mask: Tensor  # (B, T) bool


@dataclass
class DecodeState:
    """KV cache of a scale-by-scale decoding: text context, schedule, per-block keys/values."""

    context: TextContext
    schedule: list[Scale]
    caches: list[dict] = field(default_factory=list)
    next_scale: int = 0


class InfinityTransformer(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """Infinity's next-scale bitwise transformer (see the module doc for the key layout).

    Args:
        depth, embed_dim, num_heads, mlp_ratio: the backbone (2B: 32, 2048, 16, 4).
        text_channels: T5 feature width (2048 for flan-t5-xl).
        text_maxlen: rows of ``cfg_uncond``; T5 features are truncated to this length.
        codebook_dim: bits per token ``d``; the head gives ``2 d`` logits.
        num_block_chunks: blocks are stored as ``block_chunks.{c}.module.{i}`` in this many
            chunks (Infinity's ``block_chunks``; 8 for the 2B release).
        norm_eps: epsilon of every norm.
        num_levels: rows of the level (scale index) embedding.
        rope_theta: RoPE base.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        depth: int = 32,
        embed_dim: int = 2048,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        text_channels: int = 2048,
        text_maxlen: int = 512,
        codebook_dim: int = 32,
        num_block_chunks: int = 8,
        norm_eps: float = 1e-6,
        num_levels: int = 15,
        rope_theta: float = 10000.0,
    ):
        super().__init__()
        C, Ct5 = embed_dim, text_channels
        if C % num_heads or (C // num_heads) % 4:
            raise ValueError(f"embed_dim {C} must split into {num_heads} heads of a multiple of 4 channels (2D RoPE)")
        if depth % num_block_chunks:
            raise ValueError(f"depth {depth} is not a multiple of num_block_chunks {num_block_chunks}")
        mlp_hidden = round(C * mlp_ratio / 256) * 256
        if mlp_hidden == 0:
            raise ValueError(
                f"embed_dim * mlp_ratio = {C * mlp_ratio} rounds to an empty FFN "
                f"(Infinity rounds its width to a multiple of 256)"
            )
        self.cfg_uncond = nn.Parameter(torch.empty(text_maxlen, Ct5))
        self.text_norm = RMSNorm(Ct5, eps=norm_eps)
        pool_heads = max(1, Ct5 // (64 if C > 4096 else 128))
        self.text_proj_for_sos = nn.Module()
        self.text_proj_for_sos.ca = CrossAttention(C, Ct5, pool_heads, pool=True)
        self.text_proj_for_ca = nn.Sequential(nn.Linear(Ct5, C), nn.GELU(approximate="tanh"), nn.Linear(C, C))
        self.pos_start = nn.Parameter(torch.empty(1, 1, C))
        self.lvl_embed = nn.Embedding(num_levels, C)
        self.word_embed = nn.Linear(codebook_dim, C)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        per_chunk = depth // num_block_chunks
        blocks = [CrossAttnBlock(C, num_heads, mlp_hidden, norm_eps) for _ in range(depth)]
        self.block_chunks = nn.ModuleList(BlockChunk(blocks[i : i + per_chunk]) for i in range(0, depth, per_chunk))
        self.head_nm = nn.Module()
        self.head_nm.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))
        self.head = nn.Linear(C, 2 * codebook_dim)
        self._rope_cache: dict = {}
        self.reset_parameters()

    # ------------------------------------------------------------------ construction
    @staticmethod
    def default_cfg_uncond(text_maxlen: int, text_channels: int) -> Tensor:
        """Infinity's deterministic initial ``cfg_uncond`` (seed 0, std 1.2, / sqrt(Ct5))."""
        t = torch.empty(text_maxlen, text_channels, device="cpu")
        nn.init.trunc_normal_(t, std=1.2, generator=torch.Generator().manual_seed(0))
        return t / text_channels**0.5

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """A random initialisation in the spirit of Infinity's (no-op on the meta device)."""
        if self.pos_start.is_meta:
            return
        C = self.config.embed_dim
        std = math.sqrt(1 / C / 3)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    m.bias.zero_()
        for m in (self.pos_start, self.lvl_embed.weight, self.text_proj_for_sos.ca.mat_q):
            nn.init.trunc_normal_(m, std=std)
        self.cfg_uncond.copy_(self.default_cfg_uncond(*self.cfg_uncond.shape))
        for blk in self.blocks:  # Infinity's scaling of the residual projections
            for lin in (blk.sa.proj, blk.ca.proj, blk.ffn.fc2):
                lin.weight.mul_(1 / math.sqrt(2 * self.config.depth))
        self.head.weight.mul_(HEAD_INIT_SCALE)

    @property
    def blocks(self) -> list[CrossAttnBlock]:
        """All blocks in order (a plain list: the registered modules are ``block_chunks``)."""
        return [b for chunk in self.block_chunks for b in chunk.module]

    def cast_blocks(self, dtype: torch.dtype) -> InfinityTransformer:
        """Hold the blocks' weights (nearly all of them) in ``dtype``, as Infinity's ``bf16`` option
        does (``block.bfloat16()`` for each block), but their LayerNorms (which CPU autocast does not
        cast) and the embeddings, text projections and head stay float32. Run it under autocast in
        ``dtype``."""
        for blk in self.blocks:
            blk.to(dtype=dtype)
            for m in blk.modules():
                if isinstance(m, nn.LayerNorm):
                    m.float()
        return self

    def set_attention_kernel(self, kernel: str) -> InfinityTransformer:
        """How every block's self-attention is computed without a mask (:data:`ATTENTION_KERNELS`):
        ``matmul`` for CPU inference in bfloat16 (faster there; its scores held a few heads at a
        time), ``sdpa`` (torch's kernels) otherwise. Masked attention always runs on ``sdpa``."""
        if kernel not in ATTENTION_KERNELS:
            raise ConfigError(f"attention kernel {kernel!r} is not one of {', '.join(ATTENTION_KERNELS)}")
        for blk in self.blocks:
            blk.sa.kernel = kernel
        return self

    @property
    def codebook_dim(self) -> int:
        return self.config.codebook_dim

    def set_gradient_checkpointing(self, enable: bool = True, blocks: Iterable[int] | None = None) -> None:
        """Recompute the activations of the given blocks (all by default) in the backward pass.
        ``enable_gradient_checkpointing(gradient_checkpointing_func=None)`` and
        ``disable_gradient_checkpointing()`` are diffusers' ``ModelMixin``'s (every block)."""
        chosen = set(range(self.config.depth)) if blocks is None else set(blocks)
        for i, blk in enumerate(self.blocks):
            if i in chosen:
                blk.gradient_checkpointing = enable

    # ------------------------------------------------------------------ pieces
    def rope(self, schedule: list[Scale], device: torch.device) -> tuple[Tensor, Tensor]:
        """``(cos, sin)`` of shape ``(L, head_dim / 2)`` for every token of ``schedule``.

        Infinity's 2D RoPE: the first half of the rotated pairs turns with the row, the second
        with the column; scale ``(h, w)`` takes rows ``round(i * H / h)`` and columns
        ``round(j * W / w)`` of the anchor grid ``(H, W)`` (64x64 for square images).
        """
        key = (tuple(map(tuple, schedule)), str(device))
        if key not in self._rope_cache:
            half = self.config.embed_dim // self.config.num_heads // 2
            inv_freq = 1.0 / (self.config.rope_theta ** (torch.arange(0, half, 2, dtype=torch.int64).float() / half))
            H, W = rope_anchor(schedule)
            angles = []
            for h, w in schedule:
                rows = (torch.arange(h) * (H / h)).round()
                cols = (torch.arange(w) * (W / w)).round()
                a_h = torch.outer(rows, inv_freq)[:, None, :].expand(h, w, -1)
                a_w = torch.outer(cols, inv_freq)[None, :, :].expand(h, w, -1)
                angles.append(torch.cat((a_h, a_w), dim=-1).reshape(h * w, half))
            a = torch.cat(angles)
            self._rope_cache[key] = (a.cos().to(device), a.sin().to(device))
        return self._rope_cache[key]

    def rope_continued(self, schedule: list[Scale], length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The first ``length`` RoPE positions of Infinity's 1M-pixel schedule (all square sides):
        the released VARestorer builds that one table for every resolution and slices it to the
        sequence, so tokens past ``schedule``'s take the next scales' positions (at 512 px the extra
        block of 1,024 tokens takes the first 1,024 of the 40x40 scale, not the 32x32 scale's)."""
        if list(map(tuple, schedule)) != [(s, s) for s in SQUARE_SIDES[: len(schedule)]]:
            raise ValueError(f"the continued RoPE table is Infinity's square one; got the schedule {schedule}")
        cos, sin = self.rope([(s, s) for s in SQUARE_SIDES], device)
        if length > cos.shape[0]:
            raise ValueError(f"{length} tokens run past Infinity's 1M RoPE table ({cos.shape[0]} positions)")
        return cos[:length], sin[:length]

    @staticmethod
    def block_causal_mask(schedule: list[Scale], device=None) -> Tensor:
        """``(L, L)`` bool, True where query ``i`` may attend to key ``j``: scale(j) <= scale(i)."""
        level = torch.cat([torch.full((h * w,), k, device=device) for k, (h, w) in enumerate(schedule)])
        return level[:, None] >= level[None, :]

    def text_context(self, text: TextFeatures) -> TextContext:
        """T5 features -> pooled condition, AdaLN vectors and cross-attention keys/values.

        Captions marked in ``text.drop`` become ``cfg_uncond[:len]`` first, as Infinity
        trains and samples its unconditional branch.
        """
        feats, mask = text.features, text.mask.bool()
        T, maxlen = feats.shape[1], self.config.text_maxlen
        if T > maxlen:
            raise ValueError(f"text features have {T} tokens; this model takes at most {maxlen} (text_maxlen)")
        with _autocast_off(feats):
            feats = feats.float()
            if text.drop is not None:
                drop = (text.drop.to(mask.device).bool()[:, None] & mask)[..., None]
                feats = torch.where(drop, self.cfg_uncond[:T].float()[None], feats)
            feats = self.text_norm(feats)
            cond = self.text_proj_for_sos.ca(None, feats, mask).squeeze(1).float()
            kv = self.text_proj_for_ca(feats)
            gss = self.shared_ada_lin(cond).view(-1, 1, 6, self.config.embed_dim)
        return TextContext(cond, gss, kv, mask)

    def embed(self, context: TextContext, inputs: Tensor | None, schedule: list[Scale], first: int = 0) -> Tensor:
        """Token embeddings of scales ``first, first + 1, ...`` with their level embedding.

        ``inputs`` holds the teacher-forcing codes of those scales (``(B, n, d)``), without the
        first scale's, whose input is the start token made from the text.
        """
        with _autocast_off(context.cond):
            parts = []
            sizes = [h * w for h, w in schedule]
            extra = 0
            if first == 0:
                start = context.cond[:, None] + self.pos_start.float()
                n0, L = sizes[0], sum(sizes)
                if inputs is not None and inputs.shape[1] == L:
                    # all L tokens (the student's ``tokens`` form): the first scale's join the
                    # start token at its position
                    start = start + self.word_embed(inputs[:, :n0].float())
                    inputs = inputs[:, n0:]
                elif inputs is not None and inputs.shape[1] == L - n0 + sizes[-1]:
                    extra = sizes[-1]  # the release's form: one block more, after the scales
                parts.append(start)
            if inputs is not None and inputs.shape[1]:
                parts.append(self.word_embed(inputs.float()))
            x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
            counts = sizes[first:] + ([extra] if extra else [])  # the extra block: level K, one past the last
            level = torch.cat([torch.full((n,), first + k, dtype=torch.long) for k, n in enumerate(counts)])
            if level.numel() != x.shape[1]:
                raise ValueError(
                    f"{x.shape[1]} input tokens do not fit scales {first}.. of the schedule ({level.numel()} tokens)"
                )
            return x + self.lvl_embed(level.to(x.device))[None]

    def run_blocks(self, x: Tensor, context: TextContext, rope, mask: Tensor | None, caches=None) -> Tensor:
        for i, blk in enumerate(self.blocks):
            cache = caches[i] if caches is not None else None
            if blk.gradient_checkpointing and torch.is_grad_enabled() and cache is None:
                # diffusers' enable_gradient_checkpointing sets the function; torch's by default
                fn = getattr(blk, "_gradient_checkpointing_func", None) or partial(checkpoint, use_reentrant=False)
                x = fn(blk, x, context.gss, context.kv, context.kv_mask, rope, mask)
            else:
                x = blk(x, context.gss, context.kv, context.kv_mask, rope, mask, cache)
        return x

    def logits(self, x: Tensor, cond: Tensor) -> Tensor:
        """Hidden states ``(B, n, C)`` -> bit logits ``(B, n, d, 2)`` (float32, as Infinity's head)."""
        with _autocast_off(x):
            scale, shift = self.head_nm.ada_lin(cond.float()).view(-1, 1, 2, self.config.embed_dim).unbind(2)
            h = _layer_norm(x, self.config.norm_eps) * (scale + 1) + shift
            return self.head(h).unflatten(-1, (self.config.codebook_dim, 2))

    def embed_prefix(self, prefix: Tensor, schedule: list[Scale]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """VARSR's prefix tokens ``(B, h_K * w_K, d)`` (an image's quantized latent at the last
        scale's size) -> embeddings and RoPE. They are what the last scale's input would be one
        scale later (codes accumulated at full size), so they take its level embedding and its
        RoPE positions: VARSR's scale-aligned positions."""
        h, w = schedule[-1]
        if prefix.ndim != 3 or prefix.shape[1] != h * w or prefix.shape[2] != self.config.codebook_dim:
            raise ValueError(
                f"prefix tokens must be (B, {h * w}, {self.config.codebook_dim}) for a last scale of "
                f"{h}x{w}; got {tuple(prefix.shape)}"
            )
        with _autocast_off(prefix):
            level = torch.full((h * w,), len(schedule) - 1, dtype=torch.long, device=prefix.device)
            x = self.word_embed(prefix.float()) + self.lvl_embed(level)[None]
        cos, sin = self.rope(schedule, prefix.device)
        return x, (cos[-h * w :], sin[-h * w :])

    @classmethod
    def prefix_mask(cls, schedule: list[Scale], num_prefix: int, attention: str, device=None) -> Tensor:
        """``(P + L, P + L)`` bool: the prefix sees itself, every token sees the prefix, and the
        scales see each other as ``attention`` says."""
        L = sum(h * w for h, w in schedule)
        mask = torch.ones(num_prefix + L, num_prefix + L, dtype=torch.bool, device=device)
        mask[:num_prefix, num_prefix:] = False
        if attention == "causal":
            mask[num_prefix:, num_prefix:] = cls.block_causal_mask(schedule, device)
        return mask

    # ------------------------------------------------------------------ the uses
    def forward(
        self,
        text: TextFeatures,
        inputs: Tensor | None,
        schedule: list[Scale],
        attention: str = "causal",
        prefix: Tensor | None = None,
    ) -> Tensor:
        """Bit logits ``(B, L, d, 2)`` of every scale in one pass.

        Args:
            text: T5 features (see :class:`TextFeatures`); ``text.drop`` marks captions to
                replace with ``cfg_uncond``.
            inputs: ``(B, L - first_scale_tokens, d)``: the teacher-forcing input sequence of
                scales ``1..K-1`` (``MultiScaleTokens.teacher_input_sequence()``); ``None`` for a
                one-scale schedule. ``(B, L, d)`` (an input for every scale, the student's
                ``tokens`` form): the first scale's are added to the start token.
                ``(B, L - first_scale_tokens + h_K * w_K, d)`` (the released VARestorer's
                ``shifted_latent`` form): the teacher-forcing inputs, then one extra block at the
                last scale's size; it takes level embedding ``K`` (one past the last scale) and the
                next positions of Infinity's 1M RoPE table (:meth:`rope_continued`), needs
                ``attention="full"`` (no mask: every token sees every token, as the release runs
                it), and only the ``L`` scales' logits are returned.
            schedule: the ``(h, w)`` of every scale; ``L = sum(h * w)``.
            attention: ``"causal"``: block-wise causal mask (a scale sees itself and the scales
                before it: Infinity's training, the teacher); ``"full"``: every token sees every
                token (the student's one-step pass over the whole pyramid).
            prefix: VARSR's prefix tokens (:meth:`embed_prefix`), placed before the start token and
                visible to every scale; only the scales' logits are returned.
        """
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        if inputs is not None and inputs.shape[-1] != self.config.codebook_dim:
            raise ValueError(
                f"inputs have {inputs.shape[-1]} bits per token; this model takes {self.config.codebook_dim}"
            )
        context = self.text_context(text)
        x = self.embed(context, inputs, schedule)
        L = sum(h * w for h, w in schedule)
        if x.shape[1] > L:  # the extra finest-scale block (the release's ``shifted_latent`` input)
            if attention != "full" or prefix is not None:
                raise ValueError("the extra finest-scale block is read with attention='full' and no prefix")
            rope = self.rope_continued(schedule, x.shape[1], x.device)
            return self.logits(self.run_blocks(x, context, rope, None)[:, :L], context.cond)
        rope = self.rope(schedule, x.device)
        mask = self.block_causal_mask(schedule, x.device) if attention == "causal" else None
        if prefix is None:
            return self.logits(self.run_blocks(x, context, rope, mask), context.cond)
        p, p_rope = self.embed_prefix(prefix, schedule)
        x = torch.cat((p, x), dim=1)
        rope = tuple(torch.cat((a, b)) for a, b in zip(p_rope, rope))
        mask = self.prefix_mask(schedule, p.shape[1], attention, x.device)
        return self.logits(self.run_blocks(x, context, rope, mask)[:, p.shape[1] :], context.cond)

    def start_decoding(self, text: TextFeatures, schedule: list[Scale], prefix: Tensor | None = None) -> DecodeState:
        """A fresh KV cache for decoding ``schedule`` scale by scale (with ``prefix`` tokens
        already in it: every scale then attends to them)."""
        state = DecodeState(self.text_context(text), list(schedule), [{} for _ in range(self.config.depth)])
        if prefix is not None:
            p, p_rope = self.embed_prefix(prefix, state.schedule)
            self.run_blocks(p, state.context, p_rope, None, state.caches)
        return state

    def decode_scale(self, state: DecodeState, inputs: Tensor | None = None) -> Tensor:
        """Bit logits ``(B, h*w, d, 2)`` of the next scale, attending to the scales before it.

        ``inputs`` ``(B, h*w, d)`` is that scale's input (``None`` for the first scale, whose
        input is the start token). With the same inputs this equals the causal :meth:`forward`.
        """
        k, schedule = state.next_scale, state.schedule
        if k >= len(schedule):
            raise ValueError(f"all {len(schedule)} scales are decoded")
        if (k == 0) != (inputs is None):
            raise ValueError("the first scale takes no input (its input is the start token); later scales need one")
        x = self.embed(state.context, inputs, schedule[: k + 1], first=k)
        start = sum(h * w for h, w in schedule[:k])
        cos, sin = self.rope(schedule, x.device)
        rope = (cos[start : start + x.shape[1]], sin[start : start + x.shape[1]])
        state.next_scale += 1
        return self.logits(self.run_blocks(x, state.context, rope, None, state.caches), state.context.cond)
