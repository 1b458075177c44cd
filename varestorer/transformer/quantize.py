"""Int8 inference on a CPU: the blocks' Linears on oneDNN's int8 matrix product (VNNI).

Weights are quantised once, symmetric per output channel (int8, ``scale = max|w| / 127``);
activations on the fly, per tensor (uint8 with a zero point, from the tensor's min and max).
oneDNN's ``qlinear_pointwise`` multiplies them in int8 and writes the dequantised output with
the bias (and the FFN's tanh-GELU) fused, in the dtype the block runs in. It is the path that
pays on a CPU: ``torch._int_mm`` alone is as fast, but its int32 output rescaled in separate
passes made the whole Linear slower than bfloat16 (docs/real-size.md). The VAE's convolutions stay
in bfloat16: oneDNN's int8 convolution is faster alone, but quantising its large activations
(and the layout copies around it) made the 2B's decoder slower in all (8.0 s against 5.8 s).

What is quantised: in every block, ``sa.mat_qkv, sa.proj, ca.mat_q, ca.proj, ffn.fc1,
ffn.fc2`` (the products over the image tokens: nearly all the pass's Linear FLOPs). The
cross-attention's keys and values (``ca.mat_kv``, a few text tokens), the text pooling, the
embeddings, AdaLN and the head stay as they are. A LoRA must be merged first (its product then
lives in the base weight): quantising is one-way; load the model again for the exact weights.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ..errors import ConfigError

QUANTISED = ("sa.mat_qkv", "sa.proj", "ca.mat_q", "ca.proj", "ffn.fc1", "ffn.fc2")
MODES = ("int8",)


def int8_available() -> bool:
    """Whether this torch build has oneDNN's int8 Linear and the dynamic quantiser it is fed by
    (x86 CPU builds do)."""
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.onednn, "qlinear_pointwise")
        and hasattr(torch, "quantize_per_tensor_dynamic")
    )


def quantize_rows(weight: Tensor, rows: int = 256) -> tuple[Tensor, Tensor]:
    """``(scale, int8 weight)``: each output row symmetric, ``scale = max|w| / 127``, ``q =
    round(w / scale)``. Computed ``rows`` rows at a time: the temporaries stay in the CPU's cache
    (the 2B's 8192 x 2048 layer in 10 ms, not 130 ms whole)."""
    out = torch.empty(weight.shape, dtype=torch.int8)
    scale = torch.empty(weight.shape[0])
    for i in range(0, weight.shape[0], rows):
        w = weight[i : i + rows].to(torch.float32, copy=True)  # never the weight itself: divided in place
        s = (w.abs().amax(dim=1) / 127).clamp_(min=torch.finfo(torch.float32).tiny)
        out[i : i + rows] = w.div_(s[:, None]).round_().clamp_(-127, 127)
        scale[i : i + rows] = s
    return scale, out


class Int8Linear(nn.Module):
    """``nn.Linear`` on oneDNN's int8 product; ``gelu=True`` fuses the tanh GELU after it.

    The output is in ``out_dtype`` when given (float32 for a next int8 Linear, which quantises
    float32), else in the autocast dtype when CPU autocast is on (as ``nn.Linear``'s is), else in
    the dtype of the weight it was made from. Inference only: it holds no parameters.
    """

    def __init__(self, linear: nn.Linear, gelu: bool = False, out_dtype: torch.dtype | None = None):
        super().__init__()
        scale, qweight = quantize_rows(linear.weight.detach())
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
