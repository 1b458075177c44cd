"""``varestorer bench latency``: seconds per image of every restoration method on the same weights.

A pipeline of the preset is built with random weights (a LoRA away from zero, so the adapter does
work); every method then restores the same batch of ``resolution x resolution`` inputs, each
method timed in the same run: ``warmup`` untimed calls, then the mean of ``repeats`` timed ones
(``torch.cuda.synchronize`` around each on a GPU). The T5 encoder is replaced by random text
features of ``prompt_tokens`` tokens (its cost is one encoder pass per prompt, the same for
every method, and cached), so the figures are the transformer's and the VAE's.
"""

from __future__ import annotations

import copy
import math
import time

import torch
from torch import nn

from ..export import ExportConfig
from ..methods import METHODS as METHOD_TABLE
from ..presets import get_preset
from ..tokenizer.loading import build_vae
from ..transformer.loading import build_transformer
from ..transformer.lora import apply_lora
from ..transformer.text import TextFeatures
from .pipeline import METHODS, VARestorerPipeline

#: The methods timed (all but bicubic and the stage-1 restorer, which a random pipeline has not), in
#: the order printed; ``onestep`` is the reference of the ratios.
TIMED = tuple(m for m in METHODS if METHOD_TABLE[m].timed)


class RandomText(nn.Module):
    """A stand-in for T5: fixed random features ``(B, prompt_tokens, channels)`` per call."""

    def __init__(self, channels: int, prompt_tokens: int):
        super().__init__()
        self.channels, self.prompt_tokens = channels, prompt_tokens
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # follows .to(device)

    def forward(self, captions, device=None, drop=None):

        g = torch.Generator().manual_seed(0)
        feats = torch.randn(len(captions), self.prompt_tokens, self.channels, generator=g)
        return TextFeatures.from_list(list(feats.to(device or self.anchor.device)), drop=drop)


def build_random_pipeline(preset: str, resolution: int, device: torch.device, mode: str = "distill"):
    """A :class:`VARestorerPipeline` of ``preset`` with random weights (LoRA included)."""

    p = get_preset(preset)
    torch.manual_seed(0)
    with torch.device(device):
        vae, transformer = build_vae(p), apply_lora(build_transformer(p))
    with torch.no_grad():
        for name, w in transformer.named_parameters():
            if "lora_B" in name:
                w.normal_(0, 1e-3)
    text = RandomText(p.transformer["text_channels"], prompt_tokens=30).to(device)
    config = ExportConfig(
        base_preset=p.name,
        mode=mode,
        resolution=resolution,
        scale_schedule=[list(s) for s in vae.schedule(resolution)],
        has_adapter=True,
    ).validate()
    return VARestorerPipeline(vae, copy.deepcopy(vae.encoder), transformer, text, config)


def _time(fn, warmup: int, repeats: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def bench_latency(
    preset: str = "tiny",
    resolution: int | None = None,
    batch: int = 1,
    warmup: int = 1,
    repeats: int = 3,
    device: str | None = None,
    dtype: str | None = None,
    methods: tuple[str, ...] = TIMED,
    sdpa: str = "default",
    compile: bool = False,
    channels_last: bool = False,
    quantize: str | None = None,
    attention_kernel: str = "sdpa",
) -> dict:
    """Seconds per image of each method (see the module doc); ratios to ``onestep``. ``sdpa``: the
    attention kernel allowed (``default``: torch's choice; ``math``, ``flash``, ``efficient``,
    ``cudnn``); ``compile``: ``torch.compile`` the transformer first (compilation falls in the
    untimed warm-up calls); ``channels_last``: the convolutional models in channels-last memory
    format (oneDNN's and cuDNN's faster convolution layout). The CPU speed-ups, before and after
    side by side in one run on the same weights: after the methods, ``onestep`` again with each
    added in turn, ``attention_kernel`` (``matmul``: row ``onestep+matmul``) then ``quantize``
    (``int8``: the block Linears in int8, :meth:`VARestorerPipeline.quantize`; row ``...+int8``),
    each row with the PSNR of its output against plain ``onestep``'s on the same input."""

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    res = resolution or get_preset(preset).resolution
    pipe = build_random_pipeline(preset, res, dev)
    dt = getattr(torch, dtype) if dtype else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    pipe.to(dev, dt)
    pipe.merge_lora()  # as from_pretrained loads a model (the sampling methods unmerge it)
    x = torch.rand(batch, 3, res, res, generator=torch.Generator().manual_seed(0)).to(dev)
    prompts = ["a photo"] * batch
    if compile:
        pipe.transformer.compile()
    if channels_last:
        for m in (pipe.vae, pipe.encoder, pipe.stage1):
            if m is not None:
                m.to(memory_format=torch.channels_last)
    rows = {}
    for m in methods:
        pipe.config = pipe.config.replace(
            mode="varsr" if m == "varsr" else "distill"
        )  # the same weights read as either model
        restore = pipe.restore_fn(m)
        with _sdpa(sdpa):
            sec = _time(lambda: restore(x, prompts), warmup, repeats, dev)
        rows[m] = {"sec_per_image": sec / batch}
    speedups = [("attention", attention_kernel, attention_kernel)] if attention_kernel != "sdpa" else []
    speedups += [("quantize", quantize, quantize)] if quantize else []
    if speedups:  # then onestep again with each speed-up added in turn, on the same weights and input
        with _sdpa(sdpa):
            before, name = pipe.restore_fn("onestep")(x, prompts), "onestep"
            for kind, value, label in speedups:
                pipe.set_attention_kernel(value) if kind == "attention" else pipe.quantize(value)
                name += f"+{label}"
                restore = pipe.restore_fn("onestep")
                sec = _time(lambda: restore(x, prompts), warmup, repeats, dev)
                rows[name] = {"sec_per_image": sec / batch, "psnr_vs_onestep": _psnr(restore(x, prompts), before)}
    ref = rows.get("onestep", {}).get("sec_per_image")
    for r in rows.values():
        if ref:
            r["x_onestep"] = r["sec_per_image"] / ref
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {
        "preset": preset,
        "resolution": res,
        "batch": batch,
        "scales": len(pipe.schedule),
        "device": str(dev),
        "device_name": name,
        "dtype": str(dt).removeprefix("torch."),
        "sampler": get_preset(preset).sampler.as_kwargs(),
        "sdpa": sdpa,
        "compile": compile,
        "channels_last": channels_last,
        "quantize": quantize,
        "attention_kernel": attention_kernel,
        "methods": rows,
    }


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) of ``a`` against ``b``, both in [0, 1], on the 8-bit images a user gets."""
    a8, b8 = (t.float().clamp(0, 1).mul(255).round() for t in (a, b))
    mse = (a8 - b8).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255**2 / mse)


def _sdpa(backend: str):
    """A context allowing only ``backend`` in ``scaled_dot_product_attention`` (``default``: any)."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    if backend == "default":
        return contextlib.nullcontext()
    kinds = {
        "math": SDPBackend.MATH,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }
    return sdpa_kernel(kinds[backend])


def format_latency(r: dict) -> str:
    lines = [
        f"bench latency: preset {r['preset']}, {r['resolution']}px ({r['scales']} scales), batch {r['batch']}, "
        f"{r['device_name']} {r['dtype']}; sampler {r['sampler']}; attention {r.get('sdpa', 'default')}"
        f"{', compiled' if r.get('compile') else ''}{', channels-last' if r.get('channels_last') else ''}",
        f"  {'method':<24} {'s/image':>10} {'x onestep':>10}",
    ]
    for m, row in r["methods"].items():
        ratio = f"{row['x_onestep']:.2f}x" if "x_onestep" in row else "-"
        psnr = f"   {row['psnr_vs_onestep']:.2f} dB PSNR against onestep" if "psnr_vs_onestep" in row else ""
        lines.append(f"  {m:<24} {row['sec_per_image']:>10.4f} {ratio:>10}{psnr}")
    return "\n".join(lines)
