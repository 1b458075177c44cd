"""Int8 inference on a CPU: the blocks' Linears on oneDNN's int8 matrix product (VNNI).

Weights are quantised once, symmetric per output channel (int8, ``scale = max|w| / 127``);
activations on the fly, per tensor (uint8 with a zero point, from the tensor's min and max).
oneDNN's ``qlinear_pointwise`` multiplies them in int8 and writes the dequantised output with
the bias (and the FFN's tanh-GELU) fused, in the dtype the block runs in. It is the path that
pays on a CPU: ``torch._int_mm`` alone is as fast, but its int32 output rescaled in separate
passes made the whole Linear slower than bfloat16 (docs/real-size.md).

What is quantised (``MODES``): in every block, ``sa.mat_qkv, sa.proj, ca.mat_q, ca.proj, ffn.fc1,
ffn.fc2`` (the products over the image tokens: nearly all the pass's Linear FLOPs). The
cross-attention's keys and values (``ca.mat_kv``, a few text tokens), the text pooling, the
embeddings, AdaLN and the head stay as they are. ``int8-vae`` also runs the VAE decoder's and
the LQ encoder's convolutions in int8 (oneDNN's int8 convolution, quantised alike), but for the
first and last, which read and write the image. A LoRA must be merged first (its product then
lives in the base weight): quantising is one-way; load the model again for the exact weights.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ..errors import ConfigError

QUANTISED = ("sa.mat_qkv", "sa.proj", "ca.mat_q", "ca.proj", "ffn.fc1", "ffn.fc2")
#: ``int8``: the transformer's block Linears; ``int8-vae``: also the convolutions of the VAE decoder
#: and the LQ encoder (but the first and last, on the pixels: :func:`quantize_convs`).
MODES = ("int8", "int8-vae")


def int8_available() -> bool:
    """Whether this torch build has oneDNN's int8 Linear and the dynamic quantiser it is fed by
    (x86 CPU builds do)."""
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.onednn, "qlinear_pointwise")
        and hasattr(torch, "quantize_per_tensor_dynamic")
    )


class Int8Linear(nn.Module):
    """``nn.Linear`` on oneDNN's int8 product; ``gelu=True`` fuses the tanh GELU after it.

    The output is in ``out_dtype`` when given (float32 for a next int8 Linear, which quantises
    float32), else in the autocast dtype when CPU autocast is on (as ``nn.Linear``'s is), else in
    the dtype of the weight it was made from. Inference only: it holds no parameters.
    """

    def __init__(self, linear: nn.Linear, gelu: bool = False, out_dtype: torch.dtype | None = None):
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        qweight = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight_dtype, self.out_dtype = linear.weight.dtype, out_dtype
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", torch.zeros_like(scale, dtype=torch.int32))
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.register_buffer("bias", bias)
        self.gelu = gelu
        # oneDNN's blocked layout: an opaque tensor, kept out of the state dict and of .to()
        self._packed = torch.ops.onednn.qlinear_prepack(qweight, None)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8, gelu={self.gelu}"

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu":
            raise ConfigError(f"int8 Linears run on the CPU only (oneDNN); this input is on {x.device}")
        out_dtype = self.out_dtype
        if out_dtype is None:
            out_dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else self.weight_dtype
        flat = x.reshape(-1, x.shape[-1]).float()
        with warnings.catch_warnings():  # quantised tensors are deprecated; this one lives for a line
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            qx = torch.quantize_per_tensor_dynamic(flat, torch.quint8, False)
        y = torch.ops.onednn.qlinear_pointwise(
            qx.int_repr(),
            qx.q_scale(),
            qx.q_zero_point(),
            self._packed,
            self.weight_scale,
            self.weight_zero_point,
            self.bias,
            1.0,
            0,
            out_dtype,
            "gelu" if self.gelu else "none",
            [],
            "tanh" if self.gelu else "",
        )
        return y.reshape(*x.shape[:-1], self.out_features)


class Int8Conv2d(nn.Module):
    """``nn.Conv2d`` on oneDNN's int8 convolution: the same quantisation as :class:`Int8Linear`
    (weights per output channel, activations per tensor, on the fly); the output in the autocast
    dtype (else the weight's)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ConfigError(f"cannot quantise a Conv2d with padding {conv.padding!r} ({conv.padding_mode})")
        w = conv.weight.detach().float()
        scale = (w.abs().amax(dim=(1, 2, 3)) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        qweight = torch.round(w / scale[:, None, None, None]).clamp(-127, 127).to(torch.int8)
        self.geometry = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.weight_dtype = conv.weight.dtype
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", torch.zeros_like(scale, dtype=torch.int64))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().float())
        stride, padding, dilation, groups = self.geometry
        self._packed = torch.ops.onednn.qconv_prepack(qweight, scale, 1.0, 0, stride, padding, dilation, groups, None)

    def forward(self, x: Tensor) -> Tensor:
        out_dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else self.weight_dtype
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            qx = torch.quantize_per_tensor_dynamic(x.float().contiguous(), torch.quint8, False)
        stride, padding, dilation, groups = self.geometry
        return torch.ops.onednn.qconv_pointwise(
            qx.int_repr(),
            qx.q_scale(),
            qx.q_zero_point(),
            self._packed,
            self.weight_scale,
            self.weight_zero_point,
            self.bias,
            stride,
            padding,
            dilation,
            groups,
            1.0,
            0,
            out_dtype,
            "none",
            [],
            "",
        )


def quantize_convs(model: nn.Module, min_channels: int = 16) -> int:
    """Replace ``model``'s ``nn.Conv2d`` layers by :class:`Int8Conv2d`, in place, but those with
    fewer than ``min_channels`` input or output channels (an image's first and last convolutions,
    where the pixels are). Returns how many were replaced."""
    found = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and min(m.in_channels, m.out_channels) >= min_channels
    ]
    for name, m in found:
        _set(model, name, Int8Conv2d(m))
    return len(found)


class Int8FFN(nn.Module):
    """Infinity's FFN with ``fc1`` and its GELU in one int8 product (written in float32, which
    ``fc2`` quantises without a conversion pass), then ``fc2``."""

    def __init__(self, ffn: nn.Module):
        super().__init__()
        self.fc1 = Int8Linear(_plain(ffn.fc1), gelu=True, out_dtype=torch.float32)
        self.fc2 = Int8Linear(_plain(ffn.fc2))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc1(x))


def _plain(module: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` holding a layer's weights: itself, or a PEFT layer's base once merged."""
    if isinstance(module, nn.Linear) and not hasattr(module, "base_layer"):
        return module
    base = getattr(module, "base_layer", None)
    if isinstance(base, nn.Linear):
        if getattr(module, "merged", True) is False and getattr(module, "active_adapters", None):
            raise ConfigError(
                "the LoRA is not merged into the base weights: merge it first (pipe.merge_lora(), "
                "from_pretrained(merge_lora=True)) and quantise then"
            )
        return base
    raise ConfigError(f"cannot quantise a {type(module).__name__}: an nn.Linear (or a merged LoRA layer) is needed")


def _set(parent: nn.Module, dotted: str, module: nn.Module) -> None:
    owner, _, name = dotted.rpartition(".")
    setattr(parent.get_submodule(owner) if owner else parent, name, module)


def quantize_blocks(transformer: nn.Module) -> nn.Module:
    """Replace the blocks' Linears listed in ``QUANTISED`` by int8 ones, in place (one-way).

    The transformer must be on the CPU, any LoRA merged. Returns ``transformer``.
    """
    if not int8_available():
        raise ConfigError("this torch build has no oneDNN int8 Linear (x86 CPU builds have it): run in bfloat16")
    if next(transformer.parameters()).device.type != "cpu":
        raise ConfigError("int8 quantisation is for CPU inference; on a GPU run in bfloat16 (--dtype bfloat16)")
    for blk in transformer.blocks:
        for name in QUANTISED:
            if name.startswith("ffn."):
                continue
            _set(blk, name, Int8Linear(_plain(blk.get_submodule(name))))
        blk.ffn = Int8FFN(blk.ffn)
    return transformer
