"""``varestorer bench memory``: peak memory of one restoration, per method and resolution, with and
without CPU offload (:meth:`VARestorerPipeline.enable_model_cpu_offload`).

A pipeline of the preset is built with random weights, with every model a real restoration holds:
the transformer (+ LoRA) and the LQ encoder, the VAE, the text encoder (Hub T5s: a module with the
real encoder's weights whose output is random features: T5 runs once per prompt, its activations
are a few MB), the stage-1 restorer (the release's SwinIR for a Hub preset, the shipped one's form
for ``small``) and BLIP-large as the captioner (its weights and one vision-encoder pass; its text
decoding is not run). One call: caption, then restore a batch of ``resolution x resolution`` inputs
with the method (what the pipeline does at that size, without the resizing around it).

What is reported:

- ``cuda``: ``torch.cuda.max_memory_allocated`` over the call (the weights held on the GPU
  included), after ``reset_peak_memory_stats``;
- ``cpu``: the process's peak resident set over the call (``VmHWM``, reset through
  ``/proc/self/clear_refs``; where that cannot be reset, the peak since the process started);
- ``meta`` (an estimate with no GPU and no weights, as ``bench train --device meta``): the weights
  on the device (all of them; with offload, those of the step running) plus the bytes of the tensors
  the ops allocate and that are still alive, at its largest over the call. Attention is counted in
  the form the meta kernels use (``scaled_dot_product_attention``'s math form, the ``L x L`` scores
  materialised): on a GPU with flash attention the transient is smaller. CUDA's allocator rounding,
  its workspace and the CUDA context (~0.5 GB) are not counted.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import weakref
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..methods import METHODS as METHOD_TABLE
from ..presets import get_preset
from ..restorer.swinir import ARCHITECTURES, SwinIR
from ..transformer.text import T5_ENCODERS, TextEncoder, TextFeatures
from .bench import build_random_pipeline
from .pipeline import METHODS, OFFLOAD_STEPS

#: The methods measured (those that run a model, but varsr, which needs one trained in varsr mode), in
#: the order printed.
MEASURED = tuple(m for m in METHODS if METHOD_TABLE[m].needs_model and m != "varsr")
GIB = 2**30

#: BLIP-large (Salesforce/blip-image-captioning-large): ViT-L/16 at 384 px and a BERT-base decoder.
BLIP_LARGE = dict(
    vision_config=dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=384
    ),
    text_config=dict(vocab_size=30524),
)


def fake_weights(*roots: nn.Module) -> None:
    """Every parameter and buffer of ``roots`` replaced by an empty one of its shape and dtype (a
    fake tensor inside ``FakeTensorMode``: modules built on the meta device can then run there)."""
    for m in (m for root in roots for m in root.modules()):
        for n, t in list(m._parameters.items()):
            if t is not None:
                m._parameters[n] = nn.Parameter(torch.empty(t.shape, dtype=t.dtype), requires_grad=t.requires_grad)
        for n, t in list(m._buffers.items()):
            if t is not None:
                m._buffers[n] = torch.empty(t.shape, dtype=t.dtype)


def model_bytes(module: nn.Module | None) -> int:
    """Bytes of ``module``'s parameters and buffers."""
    if module is None:
        return 0
    return sum(t.numel() * t.element_size() for t in itertools.chain(module.parameters(), module.buffers()))


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensors that ops allocate (not views, not in-place results) and that are still
    alive, plus ``resident`` (the weights on the device), at their largest: ``peak``."""

    def __init__(self, resident: int = 0):
        super().__init__()
        self.live, self.resident, self.peak = 0, resident, resident

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not any(r.alias_info is not None for r in func._schema.returns):
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    nbytes = t.numel() * t.element_size()
                    self.live += nbytes
                    weakref.finalize(t, self._free, nbytes)
        self.peak = max(self.peak, self.live + self.resident)
        return out


class StandInText(nn.Module):
    """A text encoder with ``weights`` (the real encoder's, random) that returns random features
    of ``tokens`` tokens: the memory of T5 without its tokenizer files."""

    def __init__(self, weights: nn.Module, channels: int, tokens: int = 30):
        super().__init__()
        self.weights, self.channels, self.tokens = weights, channels, tokens

    def forward(self, captions, device=None, drop=None):
        device = device or next(self.weights.parameters()).device
        feats = torch.zeros(len(captions), self.tokens, self.channels, device=device)
        return TextFeatures(feats, torch.ones(len(captions), self.tokens, dtype=torch.bool, device=device), drop)


class StandInCaptioner:
    """BLIP-large's weights and one pass of its vision encoder per call; a fixed caption."""

    def __init__(self, model: nn.Module, device):
        self.model, self.device = model, torch.device(device)

    def __call__(self, images) -> list[str]:
        dtype = next(self.model.parameters()).dtype
        size = self.model.config.vision_config.image_size
        with torch.no_grad():
            self.model.vision_model(
                pixel_values=torch.zeros(len(images), 3, size, size, device=self.device, dtype=dtype)
            )
        return ["a photo"] * len(images)


def _text_weights(preset) -> nn.Module:
    if preset.text_encoder == "local":
        return TextEncoder.from_preset(preset)
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**T5_ENCODERS[preset.text_encoder]))


def _restorer(preset) -> nn.Module | None:
    """The release's SwinIR for a Hub preset, the shipped one's form for ``small``, none for ``tiny``."""
    if preset.hub_repo is None and not preset.bundled:
        return None
    return SwinIR(**ARCHITECTURES["small" if preset.bundled else "release"]).eval().requires_grad_(False)


def build_pipeline(preset_name: str, resolution: int, device: torch.device, dtype: torch.dtype):
    """The random pipeline of :mod:`.bench` with the real-size text encoder, restorer and captioner."""
    from transformers import BlipConfig, BlipForConditionalGeneration

    preset = get_preset(preset_name)
    pipe = build_random_pipeline(preset_name, resolution, device)
    torch.manual_seed(0)
    with torch.device(device):
        weights = _text_weights(preset)
        pipe.text_encoder = StandInText(weights, preset.transformer["text_channels"])
        pipe.stage1 = _restorer(preset)
        blip = BlipForConditionalGeneration(BlipConfig(**BLIP_LARGE)).eval().requires_grad_(False)
    half = torch.float32 if device.type == "cpu" else torch.float16  # as BlipCaptioner loads it on a GPU
    pipe.set_captioner(StandInCaptioner(blip.to(half), device), caption_from="input")
    pipe.to(None, dtype)
    return pipe


@contextlib.contextmanager
def _on(pipe, device: torch.device):
    """``pipe`` on ``device``; for ``meta``, on fake CPU tensors (``FakeTensorMode``: shapes and
    dtypes, no storage, CPU autocast as on a device), as ``bench train --device meta`` runs."""
    if device.type != "meta":
        pipe.to(device)
        yield
        return
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        fake_weights(*pipe.models().values())
        pipe.captioner.device = torch.device("cpu")
        yield


def _restore_once(pipe, method: str, x: torch.Tensor) -> None:
    """Caption (BLIP on the input), then restore ``x`` with ``method``; every model offloaded after."""
    pipe._use("caption")
    pipe.captioner([None] * len(x))
    pipe.restore_fn(method)(x, ["a photo"] * len(x))
    pipe._use("idle")


class _PeakRSS:
    """The process's peak resident set over a block (``VmHWM``, reset where Linux allows it)."""

    def __enter__(self):
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            self.reset = False
        return self

    def __exit__(self, *exc):
        text = Path("/proc/self/status").read_text()
        self.peak = int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) * 1024


def _measure(pipe, method: str, x: torch.Tensor, device: torch.device, offload: bool) -> int:
    if device.type == "meta":  # fake CPU tensors (see _on)
        return _estimate(pipe, method, x, offload)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            _restore_once(pipe, method, x)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    with _PeakRSS() as rss, torch.no_grad():
        _restore_once(pipe, method, x)
    return rss.peak


def _estimate(pipe, method: str, x: torch.Tensor, offload: bool) -> int:
    """Weights on the device plus the live tensors at their largest (see the module doc): on meta,
    offloading is followed (which models are on the device at each step) without moving anything."""
    models = pipe.models()
    every = sum(model_bytes(m) for m in models.values())
    tracker = LiveBytes(resident=0 if offload else every)
    if offload:

        def use(step: str) -> None:  # the step's models (OFFLOAD_STEPS) resident, as offloading holds them
            wanted = {id(models[n]): models[n] for n in OFFLOAD_STEPS[step] if n in models}
            tracker.resident = sum(model_bytes(m) for m in wanted.values())

        pipe._use = use  # the instance's, for this estimate only
    try:
        with tracker, torch.no_grad():
            _restore_once(pipe, method, x)
    finally:
        pipe.__dict__.pop("_use", None)
    return tracker.peak


def bench_memory(
    preset: str = "tiny",
    resolutions: tuple[int, ...] = (),
    methods: tuple[str, ...] = ("onestep",),
    batch: int = 1,
    device: str | None = None,
    dtype: str | None = None,
) -> dict:
    """Peak bytes per (method, resolution), without and (not on the CPU) with CPU offload, and the
    bytes of each model (see the module doc)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dt = getattr(torch, dtype) if dtype else (torch.float32 if dev.type == "cpu" else torch.bfloat16)
    p = get_preset(preset)
    resolutions = resolutions or (p.resolution,)
    offloads = (False,) if dev.type == "cpu" else (False, True)
    rows, models = [], {}
    for res in resolutions:
        pipe = build_pipeline(preset, res, dev if dev.type == "meta" else torch.device("cpu"), dt)
        models = {name: model_bytes(m) for name, m in pipe.models().items()}
        with _on(pipe, dev):
            x = torch.rand(batch, 3, res, res, generator=torch.Generator().manual_seed(0)).to(pipe.device)
            for offload in offloads:
                if offload and dev.type != "meta":
                    pipe.enable_model_cpu_offload(dev)
                for m in methods:
                    peak = _measure(pipe, m, x, dev, offload)
                    rows.append(dict(method=m, resolution=res, offload=offload, peak_bytes=peak))
                if offload and dev.type != "meta":
                    pipe.disable_model_cpu_offload()
        del pipe
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    return dict(
        preset=preset,
        batch=batch,
        device=str(dev),
        device_name=name,
        dtype=str(dt).removeprefix("torch."),
        measured="estimate" if dev.type == "meta" else ("peak RSS" if dev.type == "cpu" else "max_memory_allocated"),
        model_bytes=models,
        rows=rows,
    )


def format_memory(r: dict) -> str:
    how = {
        "estimate": "estimated on the meta device (weights + live tensors; no CUDA context or allocator slack)",
        "peak RSS": "the process's peak resident set (CPU)",
        "max_memory_allocated": "torch.cuda.max_memory_allocated",
    }[r["measured"]]
    lines = [
        f"bench memory: preset {r['preset']}, batch {r['batch']}, {r['device_name']} {r['dtype']}; {how}",
        "  models (GiB): " + ", ".join(f"{k} {v / GIB:.2f}" for k, v in r["model_bytes"].items()),
        f"  {'method':<10} {'px':>5} {'offload':>8} {'peak GiB':>9}",
    ]
    for row in r["rows"]:
        off = "yes" if row["offload"] else "no"
        lines.append(f"  {row['method']:<10} {row['resolution']:>5} {off:>8} {row['peak_bytes'] / GIB:>9.2f}")
    return "\n".join(lines)
