"""DiffBIR's SwinIR: the coarse stage-1 restorer VARestorer's release runs on a degraded image
before its VAE encodes it.

Same architecture and state-dict layout as DiffBIR's ``general_swinir_v1.ckpt``
(``infinity/models/swinir.py`` of EternalEvan/VARestorer, taken from DiffBIR/DifFace, after
Liang et al.'s SwinIR), in the one configuration that file is built with
(``tools/run_varestorer.py``'s ``load_swinir_model``): pixel-unshuffle in, Swin body at 1/s of
the image, ``'nearest+conv'`` upsampling back, ``'1conv'`` residual convs, patch size 1, no
absolute position embedding, LayerNorm after the patch embedding:

    conv_first.1                        PixelUnshuffle(s) (no weights, ``.0``), then 3x3 conv 3 s^2 -> C
    patch_embed.norm                    LayerNorm on the tokens
    layers.{i}.residual_group.blocks.{j}.
                                        norm1, attn.{relative_position_bias_table,
                                        relative_position_index, qkv, proj}, norm2, mlp.{fc1,fc2},
                                        and for odd j (shifted windows) the buffer attn_mask
    layers.{i}.conv                     3x3 conv closing each residual Swin group (RSTB)
    norm, conv_after_body               LayerNorm after the body; 3x3 conv, residual around the body
    conv_before_upsample.0              3x3 conv C -> 64 (LeakyReLU 0.01)
    conv_up{1..log2 sf}, conv_hr        nearest 2x then 3x3 conv (LeakyReLU 0.2); 3x3 conv
    conv_last                           3x3 conv 64 -> 3

``relative_position_index`` and ``attn_mask`` are persistent buffers as in the reference (a
checkpoint holds them and loads strictly). The mask is the one for a feature map of
``img_size``; other sizes get theirs computed per call, as the reference's
``calculate_mask``. Images are ``(B, 3, H, W)`` in ``[0, 1]`` (the output is not clamped).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # subtracted before, added after (SwinIR's DIV2K mean)
NUM_FEAT = 64  # width of the reconstruction convs (fixed in the reference)

#: The arguments VARestorer's release builds its SwinIR with (``tools/run_varestorer.py``):
#: 512 x 512 in, 64 x 64 x 180 features, 512 x 512 out.
RELEASE_CONFIG: dict = dict(
    embed_dim=180,
    depths=(6, 6, 6, 6, 6, 6, 6, 6),
    num_heads=(6, 6, 6, 6, 6, 6, 6, 6),
    window_size=8,
    mlp_ratio=2.0,
    img_size=64,
    sf=8,
    unshuffle_scale=8,
    in_chans=3,
    img_range=1.0,
    qkv_bias=True,
    upsampler="nearest+conv",
    resi_connection="1conv",
    residual=False,
)

#: The ``small`` preset's restorer (128 px images, 4x unshuffled to 32 x 32 x 48 features): a few
#: hundred thousand parameters, trained on a CPU in minutes (``recipes/small-restorer.yaml``).
#: Unlike the release's, it adds its output to its input (``residual``): trained from scratch on 36
#: photos, the release's form had not learnt to pass the image through after 2000 steps (29.05 dB
#: against the input's 29.20); starting as the identity, it only has to learn the correction.
SMALL_CONFIG: dict = {
    **RELEASE_CONFIG,
    **dict(
        embed_dim=48,
        depths=(4, 4),
        num_heads=(4, 4),
        window_size=8,
        img_size=32,
        sf=4,
        unshuffle_scale=4,
        residual=True,
    ),
}

#: A few thousand parameters, for tests: 32 x 32 in, 16 x 16 x 12 features (the stored mask's size).
TINY_CONFIG: dict = {
    **RELEASE_CONFIG,
    **dict(embed_dim=12, depths=(2, 2), num_heads=(2, 2), window_size=4, img_size=16, sf=2, unshuffle_scale=2),
}


def window_partition(x: Tensor, window: int) -> Tensor:
    """``(B, H, W, C)`` -> ``(B * nW, window**2, C)``, windows in row-major order."""
    B, H, W, C = x.shape
    return x.view(B, H // window, window, W // window, window, C).transpose(2, 3).reshape(-1, window * window, C)


def window_merge(x: Tensor, window: int, H: int, W: int) -> Tensor:
    """The inverse of :func:`window_partition`: ``(B * nW, window**2, C)`` -> ``(B, H, W, C)``."""
    C = x.shape[-1]
    return x.view(-1, H // window, W // window, window, window, C).transpose(2, 3).reshape(-1, H, W, C)


def shifted_window_mask(H: int, W: int, window: int, shift: int, device=None) -> Tensor:
    """The reference's ``calculate_mask``, ``(nW, window**2, window**2)``: after the cyclic shift by
    ``shift``, the last window of each axis holds tokens of three bands of the image (all before
    the last window, the last window less the shift, the shift wrapped around); tokens of
    different bands do not attend to each other (-100), all others do (0)."""

    def bands(n: int) -> Tensor:
        b = torch.zeros(n, device=device)
        b[n - window :] = 1
        b[n - shift :] = 2
        return b

    region = bands(H)[:, None] * 3 + bands(W)[None, :]
    win = window_partition(region[None, :, :, None], window).squeeze(-1)  # nW, window**2
    return torch.where(win[:, None, :] != win[:, :, None], -100.0, 0.0)


def relative_position_index(window: int) -> Tensor:
    """Row of the bias table for each (query, key) pair of a window, ``(window**2, window**2)``:
    ``(dy + w - 1) * (2w - 1) + (dx + w - 1)``."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + window - 1
    return rel[0] * (2 * window - 1) + rel[1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative position bias."""

    def __init__(self, dim: int, window: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        B_, N, C = x.shape
        q, k, v = self.qkv(x).view(B_, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1)
        attn = (q * self.scale) @ k.transpose(-2, -1) + bias.permute(2, 0, 1)
        if mask is not None:  # (nW, N, N), the same for every image of the batch
            nW = mask.shape[0]
            attn = (attn.view(B_ // nW, nW, self.num_heads, N, N) + mask[None, :, None]).view(B_, -1, N, N)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(B_, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention and MLP; ``shift > 0`` rolls the map by ``-shift``
    first (and back after) and masks the windows that wrap around (``attn_mask``, for a
    ``resolution`` x ``resolution`` map)."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float, qkv_bias: bool, res: int):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer("attn_mask", shifted_window_mask(res, res, window, shift) if shift else None)

    def forward(self, x: Tensor, size: tuple[int, int], mask: Tensor | None = None) -> Tensor:
        """``x``: ``(B, H * W, C)``; ``mask``: the shifted-window mask for ``size`` when it is not
        the stored one's (ignored by unshifted blocks)."""
        (H, W), (B, _, C), s = size, x.shape, self.shift
        h = self.norm1(x).view(B, H, W, C)
        if s:
            h = torch.roll(h, shifts=(-s, -s), dims=(1, 2))
        h = self.attn(window_partition(h, self.window), (self.attn_mask if mask is None else mask) if s else None)
        h = window_merge(h, self.window, H, W)
        if s:
            h = torch.roll(h, shifts=(s, s), dims=(1, 2))
        x = x + h.reshape(B, H * W, C)
        return x + self.mlp(self.norm2(x))


class ResidualSwinGroup(nn.Module):
    """The reference's RSTB: Swin blocks (every other one shifted by half a window), a 3x3 conv
    on the map, and a residual around both. (Its patch (un)embeddings hold no weights.)"""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float, qkv_bias: bool, res: int):
        super().__init__()
        self.residual_group = nn.Module()
        self.residual_group.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, (window // 2) * (j % 2), mlp_ratio, qkv_bias, res) for j in range(depth)
        )
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x: Tensor, size: tuple[int, int], mask: Tensor | None = None) -> Tensor:
        h = x
        for block in self.residual_group.blocks:
            h = block(h, size, mask)
        B, _, C = h.shape
        return self.conv(h.transpose(1, 2).reshape(B, C, *size)).flatten(2).transpose(1, 2) + x


class SwinIR(ModelMixin, ConfigMixin):
    """DiffBIR's SwinIR restorer (see the module doc for the layout).

    Args:
        embed_dim: width ``C`` of the Swin body (180 in the release).
        depths, num_heads: blocks and attention heads of each residual Swin group.
        window_size: attention window side; odd blocks shift by half of it.
        mlp_ratio: MLP hidden width over ``embed_dim``.
        img_size: side of the feature map (the image over ``unshuffle_scale``) whose shifted-window
            mask is stored in the state dict; any multiple of ``window_size`` runs.
        sf: upsampling of the reconstruction, 2, 4 or 8 (one nearest 2x + conv per factor 2).
        unshuffle_scale: pixel-unshuffle factor of the input, equal to ``sf`` (the reference
            unshuffles by ``sf`` and sizes ``conv_first`` by ``unshuffle_scale``), so the output
            has the input's size; ``None``: no unshuffle (plain ``conv_first``, the output is
            ``sf`` times larger, SwinIR's real-world super-resolution models).
        in_chans: image channels (3: SwinIR's RGB mean is subtracted; otherwise none).
        img_range: images are scaled by it after the mean is subtracted (1.0 or 255.0).
        qkv_bias: biases in the attention's qkv projections.
        upsampler, resi_connection: the reference's options; only ``'nearest+conv'`` and
            ``'1conv'`` (the release's) are implemented.
        residual: add the input image to the output (not in the reference, whose checkpoints have
            ``False``; same weights and keys). ``conv_last`` starts at zero, so a new model is the
            identity. Needs an unshuffle (the output has the input's size).
    """

    @register_to_config
    def __init__(
        self,
        embed_dim: int = 180,
        depths: tuple[int, ...] = (6, 6, 6, 6, 6, 6, 6, 6),
        num_heads: tuple[int, ...] = (6, 6, 6, 6, 6, 6, 6, 6),
        window_size: int = 8,
        mlp_ratio: float = 2.0,
        img_size: int = 64,
        sf: int = 8,
        unshuffle_scale: int | None = 8,
        in_chans: int = 3,
        img_range: float = 1.0,
        qkv_bias: bool = True,
        upsampler: str = "nearest+conv",
        resi_connection: str = "1conv",
        residual: bool = False,
    ):
        super().__init__()
        if residual and unshuffle_scale is None:
            raise ValueError("a residual SwinIR needs unshuffle_scale (its output must have the input's size)")
        if upsampler != "nearest+conv" or resi_connection != "1conv":
            raise ValueError(
                f"SwinIR upsampler {upsampler!r} / resi_connection {resi_connection!r}: only DiffBIR's "
                f"'nearest+conv' / '1conv' are implemented"
            )
        if sf not in (2, 4, 8):
            raise ValueError(f"SwinIR 'nearest+conv' upsamples by 2, 4 or 8, not sf={sf}")
        if unshuffle_scale is not None and unshuffle_scale != sf:
            raise ValueError(f"unshuffle_scale {unshuffle_scale} must equal sf {sf} (the reference unshuffles by sf)")
        if len(depths) != len(num_heads) or any(embed_dim % h for h in num_heads):
            raise ValueError(
                f"num_heads {list(num_heads)} must give each of the {len(depths)} groups heads of embed_dim"
            )
        if img_size <= window_size or img_size % window_size:
            raise ValueError(f"img_size {img_size} must be a multiple of window_size {window_size} and larger")
        C, self.window_size = embed_dim, window_size
        first = nn.Conv2d(in_chans * (unshuffle_scale or 1) ** 2, C, 3, 1, 1)
        self.conv_first = nn.Sequential(nn.PixelUnshuffle(sf), first) if unshuffle_scale else first
        self.patch_embed = nn.Module()
        self.patch_embed.norm = nn.LayerNorm(C)
        self.layers = nn.ModuleList(
            ResidualSwinGroup(C, d, h, window_size, mlp_ratio, qkv_bias, img_size) for d, h in zip(depths, num_heads)
        )
        self.norm = nn.LayerNorm(C)
        self.conv_after_body = nn.Conv2d(C, C, 3, 1, 1)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(C, NUM_FEAT, 3, 1, 1), nn.LeakyReLU())
        for i in range(1, int(math.log2(sf)) + 1):
            setattr(self, f"conv_up{i}", nn.Conv2d(NUM_FEAT, NUM_FEAT, 3, 1, 1))
        self.conv_hr = nn.Conv2d(NUM_FEAT, NUM_FEAT, 3, 1, 1)
        self.conv_last = nn.Conv2d(NUM_FEAT, in_chans, 3, 1, 1)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The reference's initialisation: truncated normal (std 0.02) linear weights and bias
        tables, zero linear biases, unit LayerNorms, PyTorch's default convs (no-op on meta)."""
        if self.norm.weight.is_meta:
            return
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, WindowAttention):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)
        if self.config.residual:  # starts as the identity
            self.conv_last.weight.zero_()
            self.conv_last.bias.zero_()

    @property
    def pad_multiple(self) -> int:
        """Input sides are padded to a multiple of this (the feature map to whole windows)."""
        return self.window_size * (self.config.unshuffle_scale or 1)

    def forward_features(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        mask = None  # the stored one, for a map of img_size
        if (H, W) != (self.config.img_size,) * 2 and any(d > 1 for d in self.config.depths):
            w = self.window_size
            mask = shifted_window_mask(H, W, w, w // 2, device=x.device).to(x.dtype)
        t = self.patch_embed.norm(x.flatten(2).transpose(1, 2))
        for layer in self.layers:
            t = layer(t, (H, W), mask)
        return self.norm(t).transpose(1, 2).reshape(B, C, H, W)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B, 3, H * sf / unshuffle_scale, ...)``, nominally in
        ``[0, 1]`` (not clamped). Sides that are not a multiple of :attr:`pad_multiple` are
        reflect-padded, and the padding cropped off the output. (The reference pads to a multiple
        of ``window_size`` only, so with an unshuffle it fails on sides that are not multiples of
        ``window_size * sf`` (64 in the release), and it crops at ``H * sf``, which leaves an
        unshuffled model's padding on; where it runs, the two agree.)"""
        H, W = x.shape[-2:]
        ph, pw = -H % self.pad_multiple, -W % self.pad_multiple
        if ph or pw:  # a side shorter than its padding cannot reflect; it repeats its edge
            x = F.pad(x, (0, pw, 0, ph), "reflect" if ph < H and pw < W else "replicate")
        cfg = self.config
        mean = x.new_tensor(RGB_MEAN if cfg.in_chans == 3 else (0.0,)).view(1, -1, 1, 1)
        image, x = x, self.conv_first((x - mean) * cfg.img_range)
        x = self.conv_before_upsample(self.conv_after_body(self.forward_features(x)) + x)
        for i in range(1, int(math.log2(cfg.sf)) + 1):
            x = F.leaky_relu(getattr(self, f"conv_up{i}")(F.interpolate(x, scale_factor=2, mode="nearest")), 0.2)
        x = self.conv_last(F.leaky_relu(self.conv_hr(x), 0.2)) / cfg.img_range
        x = x + (image if cfg.residual else mean)
        scale = cfg.sf // (cfg.unshuffle_scale or 1)
        return x[..., : H * scale, : W * scale]


#: The architectures a ``mode: restorer`` recipe names (``restorer.architecture``).
ARCHITECTURES: dict[str, dict] = {"release": RELEASE_CONFIG, "small": SMALL_CONFIG, "tiny": TINY_CONFIG}
