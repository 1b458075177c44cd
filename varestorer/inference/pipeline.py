"""One-step restoration with a trained VARestorer model, the way diffusers pipelines are used.

    pipe = VARestorerPipeline.from_pretrained("outputs/varestorer-2b-512/final")   # or a Hub id
    pipe = pipe.to("cuda", torch.bfloat16)
    pipe.set_captioner(BlipCaptioner())                  # prompts for calls that give none
    restored = pipe(["photo.jpg"], prompt=None)          # list of PIL images, 4x the input size

What a call does: each LQ image is upsampled (bicubic) to its output
size, as training made the student's input; an output no larger than the model's resolution is
resized to ``resolution x resolution`` (the paper), a larger one is cut into overlapping tiles
that are blended (:mod:`.tiling`); the fine-tuned encoder gives the LQ token pyramid, one
transformer pass (LoRA merged, full attention) predicts every scale's bits, the most likely bits
go through the frozen VAE decoder. Without a prompt, the captioner describes the model's own
first restoration (see :meth:`VARestorerPipeline.set_captioner`).

``method`` picks how to restore, so that baselines run through the same resizing and tiling:
``onestep`` (VARestorer), ``bicubic`` (the input upsampled), ``zeroshot`` (the base model samples
scale by scale with the LQ tokens injected at the first ``num_given`` scales: the paper's Fig. 2a),
``multistep`` (the base model samples from the prompt alone: conventional VAR inference, for its
cost), ``guided`` (the training-free reconstruction of :mod:`.guidance`), ``varsr`` (a model
trained in ``varsr`` mode samples with the LQ prefix: the paper's "w/o distill"). The sampling methods
take the preset's sampler settings (Infinity's) unless given, and ``generator``/``seed``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.utils import BaseOutput
from torch import Tensor

from ..data.images import to_tensor, to_uint8
from ..errors import ConfigError
from ..export import ExportConfig, load_export, write_export
from ..export.config import DECODINGS
from ..methods import BASE_SAMPLING, METHOD_NAMES, Method
from ..methods import METHODS as METHOD_TABLE
from ..presets import get_preset
from ..tokenizer import MultiScaleBSQ
from ..transformer.lora import adapters_disabled, is_adapted
from ..transformer.quantize import MODES as QUANTIZE_MODES
from ..transformer.quantize import quantize_blocks
from ..transformer.sampling import gumbel_noise, sample
from ..transformer.text import TextFeatures
from .color import check_color_fix
from .color import color_fix as apply_color_fix
from .guidance import DEFAULT_ALPHA, MeasurementGuidance, default_gamma
from .tiling import restore_tiled

logger = logging.getLogger(__name__)

#: Restoration methods, all through the same resizing and tiling (see the module doc); each one's
#: needs and settings are in :data:`varestorer.methods.METHODS`.
METHODS = METHOD_NAMES
#: What the captioner looks at when a call gives no prompt (:meth:`VARestorerPipeline.set_captioner`).
CAPTION_SOURCES = ("restored", "input", "restorer")
MODES = ("auto", "resize", "tile")
#: The models (:meth:`VARestorerPipeline.models`) each step of a restoration runs: with CPU offload
#: (``enable_model_cpu_offload``) they alone are on the device for it, the others in CPU memory.
OFFLOAD_STEPS = {
    "caption": ("captioner",),
    "stage1": ("restorer",),
    "encode": ("encoder", "vae"),  # the LQ encoder, then the VAE's quantizer
    "text": ("text_encoder",),
    "transformer": ("transformer",),
    "tokenize": ("vae",),  # the frozen VAE's tokens of the LQ image (zeroshot, guided)
    "sampling": ("transformer",),
    "guided sampling": ("transformer", "vae"),  # the measurement guidance decodes at each guided scale
    "decode": ("vae",),
    "idle": (),  # between calls
}
OUTPUT_TYPES = ("pil", "np", "pt")
#: Largest output the pipeline makes (pixels); beyond it a call fails before allocating anything.
MAX_OUTPUT_PIXELS = 8192 * 8192


def resize_images(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic resize of (N, 3, H, W) in [0, 1] (area when shrinking a lot: no aliasing)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] / 2 or size[1] < x.shape[-1] / 2
    mode = dict(mode="area") if shrink else dict(mode="bicubic", align_corners=False)
    return F.interpolate(x, size=size, **mode).clamp(0, 1)


def resize_lanczos(x: Tensor, size: tuple[int, int]) -> Tensor:
    """PIL's LANCZOS resize of (N, 3, H, W) in [0, 1] through 8-bit images (what the released
    VARestorer does to its inputs and outputs); the same tensor when the size is unchanged."""
    from PIL import Image

    if tuple(x.shape[-2:]) == tuple(size):
        return x
    out = [Image.fromarray(to_uint8(im)).resize((size[1], size[0]), Image.LANCZOS) for im in x.float().cpu()]
    return torch.stack([to_tensor(o) for o in out]).to(x.device)


def gumbel_bits(logits: Tensor, schedule, generator: torch.Generator | None = None) -> list[Tensor]:
    """Each bit drawn from its Bernoulli, as the released VARestorer's ``GumbelArgmax`` draws it:
    per scale one ``torch.rand`` of shape ``(B, h*w*d, 2)`` (float32, on the CPU, from
    ``generator``), Gumbel noise ``-log(-log(u + 1e-20) + 1e-20)``, and the larger of the two
    perturbed logits (its temperature 0.5 divides both: the choice is the same)."""
    bits = []
    for part, (h, w) in zip(MultiScaleBSQ.split_sequence(logits.float(), schedule), schedule):
        flat = part.reshape(part.shape[0], -1, 2)
        u = torch.rand(flat.shape, generator=generator, dtype=torch.float32).to(flat.device)
        bits.append(((flat + gumbel_noise(u)).argmax(-1) == 1).float().view(part.shape[0], h, w, -1))
    return bits


def output_size(size: tuple[int, int], upscale: float) -> tuple[int, int]:
    """``(H, W)`` of the output of an ``size`` input at ``upscale``; refuses what is too large."""
    s = float(upscale)
    if s <= 0:
        raise ConfigError(f"upscale must be positive, got {s}")
    out = (round(size[0] * s), round(size[1] * s))
    if min(out) < 1:  # not clamped to 1 px: --upscale 1e-9 is a mistake, not a request for 1x1 images
        raise ConfigError(
            f"a {size[1]}x{size[0]} input at {s:g}x gives {size[1] * s:.3g}x{size[0] * s:.3g} pixels, less than "
            f"one on a side: raise --upscale"
        )
    if out[0] * out[1] > MAX_OUTPUT_PIXELS:
        raise ConfigError(
            f"a {size[1]}x{size[0]} input at {s:g}x gives {out[1]}x{out[0]} pixels, more than "
            f"this pipeline makes ({MAX_OUTPUT_PIXELS / 1e6:.0f} MP): lower --upscale or "
            f"downscale the input first"
        )
    return out


@dataclass
class VARestorerPipelineOutput(BaseOutput):
    """What a :class:`VARestorerPipeline` call returns (diffusers' output convention).

    Attributes:
        images: the restored images (PIL images, ``(H, W, 3)`` uint8 arrays or ``(3, H, W)``
            float tensors in [0, 1], as ``output_type`` asked).
        prompts: the prompt each image was restored with (given, captioned or empty).
    """

    images: list
    prompts: list[str]


def _check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ConfigError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")


def pipeline_output(images: list[Tensor], prompts: list[str], output_type: str = "pil", return_dict: bool = True):
    """Restored float images ``(3, H, W)`` -> what a call returns: a :class:`VARestorerPipelineOutput`
    (or the tuple ``(images, prompts)``) of tensors in [0, 1] (``"pt"``), uint8 arrays (``"np"``) or
    PIL images (``"pil"``)."""
    _check_output_type(output_type)
    images = [o.clamp(0, 1) for o in images]
    if output_type != "pt":
        images = [to_uint8(o) for o in images]
    if output_type == "pil":
        from PIL import Image

        images = [Image.fromarray(a) for a in images]
    return VARestorerPipelineOutput(images=images, prompts=prompts) if return_dict else (images, prompts)


class VARestorerPipeline:
    """A trained VARestorer model: frozen VAE, fine-tuned encoder, transformer (+ LoRA), T5.

    Build it with :meth:`from_pretrained`; call it on images (see the module doc).
    """

    def __init__(
        self, vae, encoder, transformer, text_encoder, config: ExportConfig, source: Path | None = None, stage1=None
    ):
        self.vae = vae.eval().requires_grad_(False)
        self.encoder = encoder.eval().requires_grad_(False)
        self.transformer = transformer.eval().requires_grad_(False)
        self.text_encoder = text_encoder
        self.config = config
        self.source = source
        self.resolution = config.resolution
        self.schedule = config.schedule
        self.attention = config.attention
        self.upscale = float(config.upscale)
        self.stage1 = stage1  # the stage-1 model (DiffBIR's SwinIR; enable_stage1): cleans the LQ image first
        self.stage1_enabled = True
        self.captioner = None  # set by set_captioner: prompts from BLIP when a call gives none
        self.caption_from = "restored"
        self._warned_no_prompt = False
        self.dtype = torch.float32
        self._merged = False  # LoRA folded into the base weights now
        self._offload: torch.device | None = None  # enable_model_cpu_offload: where each model runs
        self._merge_wanted = False  # ...and to be folded again after a sampling method (adapters off)
        self.quantized: str | None = None  # "int8": the blocks' Linears on the CPU's int8 kernels (quantize)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        *,
        base: str | Path | None = None,
        vae: str | Path | None = None,
        text_encoder: str | Path | None = None,
        merge_lora: bool = True,
        revision: str | None = None,
        torch_dtype: torch.dtype | None = None,
    ) -> VARestorerPipeline:
        """Load an export folder (``varestorer export``, a run's ``final/``) or a Hub repo id.

        Args:
            base: the base transformer checkpoint (file, folder or Hub id) when it is not the
                one the export names (``base_transformer`` in its config; ``None`` there means
                the preset's official weights on the Hub). Not needed with a merged export.
            vae, text_encoder: likewise for the VAE and the T5 encoder.
            merge_lora: merge the LoRA into the base weights for speed (``fuse_lora``;
                reversible: the sampling methods unfuse it).
            torch_dtype: read the transformer's blocks and T5 in this dtype, as
                ``.to(dtype=...)`` holds them (``torch.bfloat16``: half the memory of float32, and
                no float32 copy on the way; the LoRA is then merged in it, as PEFT merges into a
                bfloat16 base). ``None``: float32; ``.to(dtype=...)`` later casts, after a float32
                peak.
        """
        parts = load_export(model, base=base, vae=vae, text_encoder=text_encoder, revision=revision, dtype=torch_dtype)
        pipe = cls(
            parts.vae,
            parts.encoder,
            parts.transformer,
            parts.text_encoder,
            parts.config,
            source=parts.folder,
            stage1=parts.restorer,
        )
        if torch_dtype is not None:
            pipe.to(dtype=torch_dtype)  # the blocks are in it already: T5's rule and autocast
        if merge_lora:
            pipe.merge_lora()
        return pipe

    def merge_lora(self) -> None:
        """Fold the LoRA into the base weights (one matmul per layer, as fast as the base)."""
        self._merge_wanted = True
        if is_adapted(self.transformer) and not self._merged:
            self.transformer.fuse_lora()
            self._merged = True

    def quantize(self, mode: str = "int8") -> VARestorerPipeline:
        """Run the transformer's block Linears in int8 on the CPU (oneDNN's VNNI kernels; weights
        per output channel, activations per tensor, the dequantisation, bias and GELU fused;
        :mod:`varestorer.transformer.quantize`). For CPU inference: at 512 px the 2B's one-step
        pass is faster than in bfloat16 (``varestorer bench latency --quantize int8``; its cost in
        PSNR: docs/real-size.md). Set the device and dtype first. One-way: the LoRA is merged into the weights for good, so the methods that
        sample the base model (adapters off) are refused afterwards, and so is saving; load the
        model again for them."""
        if mode not in QUANTIZE_MODES:
            raise ConfigError(f"quantisation {mode!r} is not supported; one of {', '.join(QUANTIZE_MODES)}")
        if self.quantized == mode:
            return self
        if self._offload is not None or self.device.type != "cpu":
            raise ConfigError(
                "int8 quantisation runs on the CPU (oneDNN's int8 kernels); on a GPU use --dtype bfloat16 (no --offload)"
            )
        self.merge_lora()
        quantize_blocks(self.transformer)
        self.quantized = mode
        return self

    def set_attention_kernel(self, kernel: str) -> VARestorerPipeline:
        """How the transformer's unmasked self-attention is computed: ``"matmul"`` (two matrix
        products and a softmax; faster than torch's CPU flash kernel in bfloat16 on a CPU,
        ``varestorer bench latency --attention-kernel matmul``) or ``"sdpa"`` (torch's kernels; the
        default). See :meth:`InfinityTransformer.set_attention_kernel`."""
        self.transformer.set_attention_kernel(kernel)
        return self

    def _unmerge_lora(self) -> None:
        if self._merged and self.quantized:
            raise ConfigError(
                f"this pipeline's transformer is quantised ({self.quantized}) with the LoRA in its weights: "
                f"sampling the base model ({', '.join(BASE_SAMPLING)}) needs the model loaded again without "
                "--quantize"
            )
        if self._merged:
            self.transformer.unfuse_lora()
            self._merged = False

    def enable_stage1(self, enabled: bool = True) -> VARestorerPipeline:
        """Run the stage-1 model the export names before the tokenizer (``enabled=False``: restore
        without it, the paper's "w/o restorer" row of Table A; ``--no-restorer``)."""
        self.stage1_enabled = enabled
        return self

    def set_restorer(self, enabled: bool = True) -> VARestorerPipeline:
        """The former name of :meth:`enable_stage1`."""
        warnings.warn("set_restorer is now enable_stage1", DeprecationWarning, stacklevel=2)
        return self.enable_stage1(enabled)

    def stage1_restore(self, x: Tensor) -> Tensor:
        """The stage-1 restorer's output of ``x`` (N, 3, R, R) in [0, 1], not clamped (as the
        release feeds it to the VAE); ``x`` itself without a restorer."""
        if self.stage1 is None or not self.stage1_enabled:
            return x
        self._use("stage1")
        with torch.no_grad(), self._autocast():
            return self.stage1(x.to(self.device)).float()

    def set_captioner(self, captioner, caption_from: str = "restored") -> VARestorerPipeline:
        """Where prompts come from when a call gives none.

        Args:
            captioner: a callable ``list of (H, W, 3) uint8 images -> list of str``
                (:class:`varestorer.data.captions.BlipCaptioner`), or ``None`` (empty prompts).
            caption_from: ``"restored"`` (default): the captioner looks at this model's own
                one-pass restoration with an empty prompt, then the image is restored with that
                caption. The student was trained on captions of clean HQ crops; the paper captions
                a coarse restoration (SwinIR, Sec. 3.4), for which the model's own first pass stands
                in. ``"input"``: the LQ image as it is (one pass less; the paper's "w/o restorer").
                ``"restorer"``: the stage-1 restorer's output (the released VARestorer's evaluation).
        """
        if caption_from not in CAPTION_SOURCES:
            raise ConfigError(f"caption_from must be one of {', '.join(CAPTION_SOURCES)}, got {caption_from!r}")
        self.captioner = captioner
        self.caption_from = caption_from
        if self._offload is not None and isinstance(getattr(captioner, "model", None), torch.nn.Module):
            captioner.model.to("cpu")  # brought to the GPU for its step only
            captioner.device = self._offload
        return self

    @property
    def device(self) -> torch.device:
        """Where the models run (with CPU offload: where each is brought for its step)."""
        return self._offload or next(self.vae.parameters()).device

    def models(self) -> dict:
        """Every model the pipeline holds, by name (the captioner's when it has one)."""
        found = dict(
            vae=self.vae,
            encoder=self.encoder,
            transformer=self.transformer,
            text_encoder=self.text_encoder,
            restorer=self.stage1,
            captioner=getattr(self.captioner, "model", None),
        )
        return {k: m for k, m in found.items() if isinstance(m, torch.nn.Module)}

    def enable_model_cpu_offload(self, device: str | torch.device = "cuda") -> VARestorerPipeline:
        """Hold every model in CPU memory and bring each to ``device`` only for its step (diffusers'
        ``enable_model_cpu_offload``): T5 for the prompts, BLIP for the captions, the stage-1
        restorer, the LQ encoder, the transformer, the VAE decoder. Peak GPU memory is the largest
        model plus its activations instead of all of them (``varestorer bench memory``); each
        batch moves the models over PCIe once. Set the precision first (``pipe.to(dtype=...)``)."""
        self._offload = torch.device(device)
        for m in self.models().values():
            m.to("cpu")
        if self.captioner is not None and hasattr(self.captioner, "device"):
            self.captioner.device = self._offload
        return self

    def disable_model_cpu_offload(self) -> VARestorerPipeline:
        """Every model back on the device offloading ran them on."""
        device, self._offload = self._offload, None
        if device is not None:
            self.to(device)
        return self

    def _use(self, step: str) -> None:
        """With CPU offload: the models of ``step`` (:data:`OFFLOAD_STEPS`) on the execution device,
        every other one in CPU memory."""
        if self._offload is None:
            return
        models = self.models()
        keep = {id(models[name]) for name in OFFLOAD_STEPS[step] if name in models}
        for m in models.values():
            if id(m) not in keep:
                m.to("cpu")
        for m in models.values():
            if id(m) in keep:
                m.to(self._offload)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> VARestorerPipeline:
        """Move every model to ``device``. ``dtype`` (bfloat16/float16): the transformer's blocks
        (nearly all its weights, with the LoRA in them) and the text encoder are held in it, as
        Infinity runs its 2B model (``block.bfloat16()``) and T5; the transformer and the VAE's
        decoder run under autocast in it (:meth:`decode_latent`, in channels-last), the LQ encoder
        in float32 (:meth:`lq_tokens`), as the released VARestorer runs them; the embeddings, head,
        VAE and LQ encoder keep float32 weights. Casting back to float32 does not bring the lost
        digits back: load the model again for exact float32."""
        if dtype is not None and dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ConfigError(f"dtype {dtype} is not supported; float32, bfloat16 or float16")
        if self.quantized and (dtype is not None or (device is not None and torch.device(device).type != "cpu")):
            raise ConfigError(
                f"the transformer is quantised ({self.quantized}) for the CPU: set the device and dtype before "
                "quantize(), or load the model again"
            )
        if device is not None:
            self._offload = None  # an explicit device ends CPU offload
        for m in (self.vae, self.encoder, self.transformer, self.text_encoder, self.stage1):
            if device is not None and m is not None:
                m.to(device)
        if dtype is not None:
            self._unmerge_lora()  # merged again in the new precision when it is next wanted
            self.transformer.cast_blocks(dtype)
            self.text_encoder.to(dtype=dtype)
            # the decoder runs under autocast in a reduced precision (decode_latent), where
            # channels-last convolutions are faster: 5.4 -> 4.0 s for the 2B's 512 px decode on a CPU
            layout = torch.contiguous_format if dtype == torch.float32 else torch.channels_last
            self.vae.decoder.to(memory_format=layout)
            self.dtype = dtype
        return self

    def save_pretrained(self, out: str | Path) -> Path:
        """Write the export form (adapter, encoder, config, and the base files it was loaded with)."""
        if self.quantized:
            raise ConfigError(
                f"a quantised pipeline ({self.quantized}) is not saved: load the model again and save that"
            )
        encoder = self.encoder.state_dict() if self.config.has_encoder else None
        return write_export(
            out,
            transformer=self.transformer,
            config=self.config,
            encoder_state=encoder,
            base_from=self.source,
            restorer=self.stage1,
        )

    # ------------------------------------------------------------------ the methods
    def _autocast(self):
        dev = self.device.type
        return torch.autocast(dev, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def text(self, prompts):
        """T5 features of ``prompts`` (a list of str), or ``prompts`` as they are when they are
        already features (:class:`TextFeatures`: a call's ``prompt_embeds``)."""
        if isinstance(prompts, TextFeatures):
            return prompts.to(self.device)
        if not self.config.use_captions:
            prompts = [""] * len(prompts)  # a model trained without prompts sees none
        self._use("text")
        return self.text_encoder(list(prompts), device=self.device)

    @torch.no_grad()
    def student_logits(self, x: Tensor, prompts: Sequence[str], lq_tokens=None) -> Tensor:
        """Bit logits ``(N, L, d, 2)`` of the one-step pass on ``x`` (N, 3, R, R) in [0, 1]
        (``lq_tokens``: :meth:`lq_tokens` of ``x`` when they are already computed)."""
        with self._autocast():
            lq_tokens = self.lq_tokens(x) if lq_tokens is None else lq_tokens
            lq = lq_tokens.lq_input_sequence(self.config.lq_input)
            text = self.text(prompts)
            self._use("transformer")
            return self.transformer(text, lq, self.schedule, attention=self.attention).float()

    def lq_tokens(self, x: Tensor):
        """The LQ token pyramid of ``x`` (N, 3, R, R) in [0, 1] (cleaned by the stage-1 restorer
        when the model has one) from the LQ encoder, with the LoRA (re)merged if it was asked for
        (the methods that use the adapter call this)."""
        if self._merge_wanted:
            self.merge_lora()
        x = self.stage1_restore(x)
        self._use("encode")
        with torch.autocast(self.device.type, enabled=False):  # the release encodes in float32: its bits are the input
            return self.vae.quantizer(self.encoder(x.to(self.device).float() * 2 - 1).float(), self.schedule)

    @torch.no_grad()
    def decode_logits(
        self,
        logits: Tensor | None,
        lq_tokens=None,
        decode: str | None = None,
        generator: torch.Generator | None = None,
        lq_scales: int | None = None,
    ) -> Tensor:
        """Bits of every scale -> images (N, 3, R, R) in [0, 1]: the most likely (``argmax``) or
        drawn (``gumbel``, :func:`gumbel_bits` from ``generator``); ``decode`` defaults to the
        model's. The first ``lq_scales`` scales are ``lq_tokens``' own (the fidelity knob; default
        the model's ``keep_lq_scales``, what it was trained with); ``logits`` is ``None`` when they
        are every scale (nothing predicted)."""
        decode = decode or self.config.decode
        if decode not in DECODINGS:
            raise ConfigError(f"decode must be one of {', '.join(DECODINGS)}, got {decode!r}")
        if logits is None:
            bits = []
        elif decode == "gumbel":
            bits = gumbel_bits(logits, self.schedule, generator)
        else:
            bits = MultiScaleBSQ.split_sequence((logits.float().softmax(-1)[..., 1] > 0.5).float(), self.schedule)
        keep = self.check_lq_scales(lq_scales)
        if keep:
            if lq_tokens is None:
                raise ValueError(f"this student keeps the LQ tokens' first {keep} scale(s): pass lq_tokens")
            bits = lq_tokens.keep_scales(bits, keep)
        return self.decode_latent(self.vae.quantizer.bits_to_latent(bits))

    @torch.no_grad()
    def decode_latent(self, latent: Tensor) -> Tensor:
        """A quantized latent ``(N, d, h, w)`` -> images ``(N, 3, R, R)`` in [0, 1], decoded under the
        pipeline's autocast: in bfloat16, the VAE's decoder runs in bfloat16 as the released
        VARestorer and Infinity decode (inside their sampler's autocast); the LQ encoder stays in
        float32, as theirs does, since its bits are the model's input."""
        self._use("decode")
        with self._autocast():
            return (self.vae.decode_latent(latent.float().to(self.device)).float() + 1) / 2

    def check_lq_scales(self, lq_scales: int | None) -> int:
        """``lq_scales`` (default: the model's ``keep_lq_scales``), checked against the schedule."""
        if lq_scales is None:
            return self.config.keep_lq_scales
        K = len(self.schedule)
        if isinstance(lq_scales, bool) or not isinstance(lq_scales, int) or not 0 <= lq_scales <= K:
            raise ConfigError(
                f"lq_scales (--lq-scales) must be an integer in [0, {K}] (this model has {K} scales; "
                f"{K}: every scale from the LQ tokens, the most faithful), got {lq_scales!r}"
            )
        return lq_scales

    @torch.no_grad()
    def restore_onestep(
        self,
        x: Tensor,
        prompts,
        *,
        decode: str | None = None,
        generator: torch.Generator | None = None,
        lq_scales: int | None = None,
    ) -> Tensor:
        """One pass; the coarsest ``lq_scales`` scales from the LQ tokens (:meth:`decode_logits`)."""
        lq_tokens = self.lq_tokens(x)
        every = self.check_lq_scales(lq_scales) == len(self.schedule)  # all the LQ tokens': no pass needed
        logits = None if every else self.student_logits(x, prompts, lq_tokens)
        return self.decode_logits(logits, lq_tokens, decode, generator, lq_scales)

    @torch.no_grad()
    def sample_base(
        self,
        x: Tensor,
        prompts: Sequence[str],
        *,
        num_given: int,
        seed: int = 0,
        generator: torch.Generator | None = None,
        guidance=None,
        greedy: bool = False,
        **sampler,
    ) -> Tensor:
        """The base model (adapters off; a fine-tuned teacher export: its own weights) samples
        scale by scale with a KV cache; the frozen VAE's tokens of ``x`` are given for the first
        ``num_given`` scales. Sampler settings left out or ``None`` (cfg, tau, top_k, top_p) are the
        base preset's: Infinity's released cfg 4, tau 0.5, top_p 0.97."""

        if not 0 <= num_given <= len(self.schedule):
            raise ConfigError(f"num_given={num_given}: this model has {len(self.schedule)} scales")
        settings = self._sampler_settings(sampler)
        self._check_runs("zeroshot")
        self._unmerge_lora()
        self._use("tokenize")
        lq = self.vae.tokenize(x.to(self.device) * 2 - 1, self.schedule) if num_given else None
        text = self.text(prompts)
        self._use("guided sampling" if guidance is not None else "sampling")
        with adapters_disabled(self.transformer), self._autocast():
            out = sample(
                self.transformer,
                text,
                self.schedule,
                seed=seed,
                generator=generator,
                given_bits=lq.bits if lq else None,
                num_given=num_given,
                guidance=guidance,
                greedy=greedy,
                **settings,
            )
        return self.decode_latent(out.latent)

    def _sampler_settings(self, given: dict) -> dict:
        """The base preset's sampler settings, with those ``given`` (not ``None``) instead."""

        unknown = set(given) - {"cfg", "tau", "top_k", "top_p"}
        if unknown:
            raise ConfigError(f"unknown sampler settings {sorted(unknown)}: cfg, tau, top_k, top_p")
        return {
            **get_preset(self.config.base_preset).sampler.as_kwargs(),
            **{k: v for k, v in given.items() if v is not None},
        }

    @torch.no_grad()
    def restore_varsr(
        self, x: Tensor, prompts: Sequence[str], *, seed: int = 0, generator: torch.Generator | None = None, **sampler
    ) -> Tensor:
        """A model trained in ``varsr`` mode (VARSR's multi-step restorer, the paper's "w/o
        distill"): its LoRA samples scale by scale with the LQ image's quantized latent (from the
        fine-tuned encoder) as prefix tokens in the KV cache."""

        self._check_runs("varsr")
        with self._autocast():
            prefix = self.lq_tokens(x).prefix_sequence()
            text = self.text(prompts)
            self._use("sampling")
            out = sample(
                self.transformer,
                text,
                self.schedule,
                seed=seed,
                generator=generator,
                prefix=prefix,
                **self._sampler_settings(sampler),
            )
        return self.decode_latent(out.latent)

    def restore_zeroshot(self, x: Tensor, prompts: Sequence[str], *, num_given: int = 4, **kwargs) -> Tensor:
        """Zero-shot upsampling (the paper's Fig. 2a): the LQ tokens for the first ``num_given``
        scales, the base model completes the rest."""
        return self.sample_base(x, prompts, num_given=num_given, **kwargs)

    def restore_multistep(self, x: Tensor, prompts: Sequence[str], **kwargs) -> Tensor:
        """Conventional VAR inference: the base model samples every scale from the prompt alone
        (``x`` only sets the batch size): what next-scale generation costs."""
        return self.sample_base(x, prompts, num_given=0, **kwargs)

    def restore_guided(
        self,
        x: Tensor,
        prompts: Sequence[str],
        *,
        gamma: int | None = None,
        alpha: float | None = None,
        factor: float | None = None,
        **kwargs,
    ) -> Tensor:
        """The training-free reconstruction of :mod:`.guidance`: LQ tokens injected below scale
        ``gamma`` (1-indexed; default the paper's 8/10 of the schedule), measurement-gradient
        guided logits (step ``alpha``, default 1) and the most likely bits above; ``factor`` is
        the SR operator's downsampling (default: the model's upscale; a call passes its own)."""

        K = len(self.schedule)
        gamma = default_gamma(K) if gamma is None else int(gamma)
        if not 1 <= gamma <= K:
            raise ConfigError(f"gamma={gamma}: the first guided scale must be in 1..{K}")
        guide = MeasurementGuidance(
            self.vae,
            x.to(self.device),
            self.schedule,
            factor or self.upscale,
            DEFAULT_ALPHA if alpha is None else alpha,
        )
        return self.sample_base(x, prompts, num_given=gamma - 1, guidance=guide, greedy=True, **kwargs)

    def _check_runs(self, method: str) -> None:
        """Refuse, before any work, a method this model cannot run."""
        if method == "restorer" and self.stage1 is None:
            raise ConfigError("method restorer runs the model's stage-1 restorer alone: this model has none")
        if method == "varsr" and self.config.mode != "varsr":
            raise ConfigError(
                f"the varsr method needs a model trained in mode 'varsr' (recipes/ablation-no-distill"
                f".yaml); this one was trained in mode {self.config.mode!r}"
            )
        if method in BASE_SAMPLING and self.quantized:
            raise ConfigError(
                f"--method {method} samples the base model with the adapters off; this pipeline is quantised "
                f"({self.quantized}) with the LoRA merged into its weights: run it without --quantize"
            )
        is_teacher = self.config.mode == "teacher"  # a fine-tuned teacher: its weights are the teacher
        if method in BASE_SAMPLING and not (is_teacher or is_adapted(self.transformer)):
            raise ConfigError(
                "sampling the base model needs the base weights and the adapter apart; this model "
                "was loaded from a merged or fully fine-tuned transformer: pass --base (the base "
                "checkpoint) with an adapter export"
            )

    def available_methods(self) -> list[str]:
        """The methods (:data:`METHODS`) this model can run."""
        runs = []
        for m in METHODS:
            try:
                self.restore_fn(m)
            except ConfigError:
                continue
            runs.append(m)
        return runs

    @staticmethod
    def method(name: str) -> Method:
        """The method ``name`` (:data:`varestorer.methods.METHODS`), or an error listing them."""
        if name not in METHOD_TABLE:
            hint = " (now called zeroshot)" if name == "teacher" else ""
            raise ConfigError(f"unknown method {name!r}{hint}; choose one of {', '.join(METHODS)}")
        return METHOD_TABLE[name]

    def restore_fn(self, method: str, **kwargs) -> Callable[[Tensor, Sequence[str]], Tensor]:
        """``(x (N, 3, R, R) in [0, 1], prompts) -> restored (N, 3, R, R)`` for ``method``."""
        spec = self.method(method)
        if method == "onestep" and self.config.mode == "teacher":
            raise ConfigError(
                "this export is a fine-tuned teacher (recipe mode 'teacher'), not a one-step "
                "model: restore with --method zeroshot/multistep/guided, or distil it "
                "(model.transformer in a recipe)"
            )
        if method == "onestep" and self.config.mode == "varsr":
            raise ConfigError(
                "this export is a multi-step VARSR-style model (recipe mode 'varsr'), not a one-step "
                "model: restore with --method varsr"
            )
        self._check_runs(method)
        if set(kwargs) - set(spec.settings):
            takes = f"; it takes {', '.join(spec.settings)}" if spec.settings else ""
            raise ConfigError(f"method {method} takes no settings {sorted(set(kwargs) - set(spec.settings))}{takes}")
        if method == "bicubic":
            return lambda x, prompts: x
        if method == "restorer":
            return lambda x, prompts: self.stage1_restore(x).clamp(0, 1)
        if method == "onestep":
            given = {k: v for k, v in kwargs.items() if v is not None}
            return lambda x, prompts: self.restore_onestep(x, prompts, **given)
        restore = getattr(self, f"restore_{method}")
        return lambda x, prompts: restore(x, prompts, **kwargs)

    @property
    def default_color_fix(self) -> str:
        """The colour fix the model's own restorations get: its export's (``ExportConfig.color_fix``:
        ``wavelet`` for the toolkit's models, ``none`` for an imported release and for exports made
        before colour correction existed), so a model restores as it did when it was exported."""
        return self.config.color_fix

    # ------------------------------------------------------------------ planning a call
    def output_size(self, size: tuple[int, int], upscale: float | None = None) -> tuple[int, int]:
        return output_size(size, self.upscale if upscale is None else upscale)

    def plan(self, out_size: tuple[int, int], mode: str = "auto") -> str:
        """``resize`` (the paper: one pass at resolution x resolution) or ``tile``."""
        if mode not in MODES:
            raise ConfigError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode == "auto":
            return "resize" if max(out_size) <= self.resolution else "tile"
        return mode

    def caption(self, images: list[Tensor], prompt, method: str = "onestep", batch_size: int = 4) -> list[str]:
        """One prompt per image: ``prompt`` as given (one for all or one each); for ``None``, the
        captioner's caption (see :meth:`set_captioner`), else empty prompts with a warning (once)
        when the model was trained with captions. ``prompt=""`` is the paper's "w/o prompt"."""
        if isinstance(prompt, str):
            return [prompt] * len(images)
        if prompt is not None:
            prompts = [str(p) for p in prompt]
            if len(prompts) != len(images):
                raise ConfigError(f"{len(prompts)} prompts for {len(images)} images")
            return prompts
        if method in ("bicubic", "restorer") or not self.config.use_captions:
            return [""] * len(images)  # prompts unused, or the model never saw any
        if self.captioner is None:
            if not self._warned_no_prompt:
                logger.warning(
                    "this model was trained with captions of the HQ images, but no prompt was given "
                    "and the pipeline has no captioner: restoring with empty prompts (the paper's "
                    "'w/o prompt' setting, weaker on every metric of its Table A). Pass prompt=..., or "
                    "pipe.set_captioner(BlipCaptioner()) (varestorer restore: --caption blip); pass "
                    'prompt="" (--no-prompt) to restore without prompts on purpose.'
                )
                self._warned_no_prompt = True
            return [""] * len(images)
        if self.caption_from == "restored" and self.config.mode != "teacher":
            images = self.pre_restore(images, batch_size)
        elif self.caption_from == "restorer":
            R = self.resolution
            images = [self.stage1_restore(self.resize(im[None], (R, R))).clamp(0, 1).cpu()[0] for im in images]
        self._use("caption")
        return [str(c) for c in self.captioner([to_uint8(im) for im in images])]

    def pre_restore(self, images: list[Tensor], batch_size: int = 4) -> list[Tensor]:
        """Each image restored in one pass at ``resolution x resolution`` with an empty prompt and
        brought back to its aspect ratio (long side = resolution): what the captioner looks at."""
        R, out = self.resolution, []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            x = torch.cat([resize_images(im[None], (R, R)) for im in chunk])
            y = self.restore_onestep(x, [""] * len(chunk)).float().cpu()
            for im, r in zip(chunk, y):
                h, w = im.shape[-2:]
                size = (max(1, round(R * h / max(h, w))), max(1, round(R * w / max(h, w))))
                out.append(resize_images(r[None], size)[0])
        return out

    def resize(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """(N, 3, H, W) in [0, 1] to ``size`` the model's way (``resize`` of its config)."""
        return resize_lanczos(x, size) if self.config.resize == "lanczos" else resize_images(x, size)

    # ------------------------------------------------------------------ the call
    def __call__(  # noqa: C901
        self,
        image=None,
        prompt: str | Sequence[str] | None = None,
        *,
        method: str = "onestep",
        upscale: float | None = None,
        mode: str = "auto",
        tile_overlap: int | None = None,
        batch_size: int = 4,
        tile_batch_size: int = 1,
        generator: torch.Generator | None = None,
        decode: str | None = None,
        lq_scales: int | None = None,
        color_fix: str | None = None,
        prompt_embeds: tuple[Tensor, Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        progress: bool = False,
        **method_kwargs,
    ):
        """Restore ``image``: one or a list of paths, PIL images, arrays or (3, H, W) tensors in [0, 1].

        Returns a :class:`VARestorerPipelineOutput` (``.images``: a list of PIL images for
        ``output_type="pil"``, uint8 arrays for ``"np"``, float tensors for ``"pt"``, each
        ``upscale`` times its input (default: the scale the model was trained for); ``.prompts``:
        the prompt each image was restored with), or with ``return_dict=False`` the tuple
        ``(images, prompts)``, as diffusers pipelines do.

        Args:
            prompt: one for all, one per image, ``""`` (none: the paper's "w/o prompt") or ``None``
                (the captioner's, see :meth:`set_captioner`; without one, empty prompts and a warning).
            method: one of :data:`METHODS`.
            batch_size: images restored per forward pass (those resized to the model's resolution).
            tile_batch_size: tiles of a large image restored per forward pass. 1 (the default, the
                released VARestorer's way) makes each tile's output independent of the others: with
                several, the stage-1 restorer's and the transformer's float rounding, and the order of
                the Gumbel draws, depend on the batch (a few LQ bits flip per tile). More is faster
                on a GPU.
            generator: the random draws of the sampling methods (default: ``seed``, 0) and of
                ``decode="gumbel"`` (default: torch's global generator, as the release draws).
            decode: ``onestep``: ``argmax`` (the most likely bits) or ``gumbel`` (each bit drawn
                from its Bernoulli, the release's); default: the model's (its config).
            lq_scales: ``onestep``: the fidelity <-> realism knob: how many of the coarsest scales
                are the LQ tokens' own (0: all predicted, the most detail; ``len(schedule)``: the
                LQ tokens decoded, the most faithful); default: the model's ``keep_lq_scales``.
            color_fix: ``adain``, ``wavelet`` or ``none``: the restoration's colour corrected
                against the input (:mod:`.color`); default: :attr:`default_color_fix` for the model's
                own restorations (``onestep``, ``varsr``), ``none`` for the baselines (a colour fix
                takes the input's low frequencies: ``multistep``, which ignores the input, would
                score as a blend of it).
            prompt_embeds: ``(features (N, T, C), mask (N, T))`` text features to restore with
                instead of prompts (one row per image), as diffusers pipelines take them.
            method_kwargs: the method's settings: ``zeroshot``: num_given; ``guided``: gamma,
                alpha; all sampling methods: cfg, tau, top_k, top_p, seed.
        """
        from tqdm.auto import tqdm

        _check_output_type(output_type)  # before any work
        spec = self.method(method)
        if color_fix is None:  # the model's own restorations get its colour fix; baselines stay as defined
            color_fix = self.default_color_fix if spec.own else "none"
        check_color_fix(color_fix)
        if batch_size < 1 or tile_batch_size < 1:
            raise ConfigError("batch_size and tile_batch_size must be >= 1")
        if image is None:
            raise ConfigError("pass the image(s) to restore: pipe(image, prompt=...)")
        items = [to_tensor(im) for im in (image if isinstance(image, (list, tuple)) else [image])]
        sizes = [self.output_size(tuple(x.shape[-2:]), upscale) for x in items]
        plans = [self.plan(s, mode) for s in sizes]
        if method == "onestep":
            method_kwargs.update(decode=decode, generator=generator, lq_scales=lq_scales)
        elif decode is not None or lq_scales is not None:
            hint = " (zeroshot: num_given)" if lq_scales is not None else ""
            raise ConfigError(
                f"{'decode' if decode else 'lq_scales'} applies to the one-step method, not {method}{hint}"
            )
        elif generator is not None and "generator" in spec.settings:
            method_kwargs["generator"] = generator
        if method == "guided":
            method_kwargs.setdefault("factor", upscale or self.upscale)
        restore = self.restore_fn(method, **method_kwargs)
        if prompt_embeds is not None:
            texts = _split_embeds(prompt_embeds, len(items))
            prompts = [""] * len(items)
        else:
            prompts = self.caption(items, prompt, method, batch_size)
            texts = prompts
        R = self.resolution
        overlap = R // 4 if tile_overlap is None else int(tile_overlap)
        if not 0 <= overlap < R:
            raise ConfigError(
                f"tile_overlap (--tile-overlap) must be in [0, {R}) pixels, less than the model's {R} px tiles; "
                f"got {overlap}"
            )
        outputs: list[Tensor | None] = [None] * len(items)
        bar = tqdm(total=len(items), desc=f"restore ({method})", disable=not progress, unit="image")
        resized = [i for i, p in enumerate(plans) if p == "resize"]
        for start in range(0, len(resized), batch_size):  # the paper's path, batched across images
            chunk = resized[start : start + batch_size]
            x = torch.cat([self._to_model_size(items[i][None], sizes[i]) for i in chunk])
            y = restore(x, _texts(texts, chunk)).float().cpu()
            for i, r in zip(chunk, y):
                outputs[i] = self.resize(r[None].clamp(0, 1), sizes[i])[0]
            bar.update(len(chunk))
        for i in (i for i, p in enumerate(plans) if p == "tile"):
            outputs[i] = self._tiled(items[i], sizes[i], _texts(texts, [i]), restore, overlap, tile_batch_size)
            bar.update(1)
        bar.close()
        self._use("idle")  # with CPU offload: every model back in CPU memory between calls
        if color_fix != "none" and method != "bicubic":
            outputs = [
                apply_color_fix(o, self.resize(x[None], s)[0], color_fix) for o, x, s in zip(outputs, items, sizes)
            ]
        return pipeline_output(outputs, prompts, output_type, return_dict)

    def _to_model_size(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """An input brought to ``resolution x resolution``: directly, or (``lanczos``, the release's
        way) first to its output ``size``, then to the resolution."""
        R = self.resolution
        if self.config.resize == "lanczos":
            return resize_lanczos(resize_lanczos(x, size), (R, R))
        return resize_images(x, (R, R))

    def _tiled(self, x: Tensor, size: tuple[int, int], text, restore, overlap: int, batch_size: int) -> Tensor:
        """Upsample to ``size`` (at least the resolution on the short side), restore overlapping
        tiles, blend (the model's ``tile_weights``), and bring the result to ``size``."""
        R = self.resolution
        grow = max(1.0, R / min(size))
        work = (max(R, round(size[0] * grow)), max(R, round(size[1] * grow)))
        up = self.resize(x[None], work)
        out = restore_tiled(
            up,
            lambda tiles: restore(tiles, _repeat(text, len(tiles))).float().cpu(),
            R,
            overlap,
            batch_size=batch_size,
            weights=self.config.tile_weights,
        )
        return self.resize(out.clamp(0, 1), size)[0]


def _split_embeds(prompt_embeds, n: int) -> TextFeatures:
    try:
        features, mask = prompt_embeds
    except (TypeError, ValueError):
        raise ConfigError("prompt_embeds must be a pair (features (N, T, C), mask (N, T))") from None
    if features.ndim != 3 or mask.shape != features.shape[:2] or len(features) != n:
        raise ConfigError(
            f"prompt_embeds: features {tuple(features.shape)} and mask {tuple(mask.shape)} must be "
            f"(N, T, C) and (N, T) with N = {n} images"
        )
    return TextFeatures(features, mask.bool())


def _texts(texts, index: list[int]):
    """The prompts (a list of str) or text features of the images ``index``."""
    if isinstance(texts, TextFeatures):
        i = torch.tensor(index)
        return TextFeatures(texts.features[i], texts.mask[i])
    return [texts[i] for i in index]


def _repeat(text, n: int):
    """One image's prompt (a one-item list) or features, for ``n`` tiles."""
    if isinstance(text, TextFeatures):
        return TextFeatures(text.features.expand(n, -1, -1), text.mask.expand(n, -1))
    return list(text) * n


class BicubicPipeline:
    """The ``bicubic`` method without a model: the pipeline's resizing alone, called as the pipeline
    is (``restore --method bicubic`` and ``evaluate``'s reference row need no export)."""

    def __init__(self, upscale: float = 4.0):
        self.upscale = upscale

    def __call__(self, images, prompt=None, *, method: str = "bicubic", upscale=None, output_type="pil", **_):
        if method != "bicubic":
            raise ConfigError(f"--method {method} needs --model (an export folder or a Hub repo id)")
        s = upscale or self.upscale
        items = [to_tensor(im) for im in (images if isinstance(images, (list, tuple)) else [images])]
        outs = [resize_images(x[None], output_size(tuple(x.shape[-2:]), s))[0] for x in items]
        return pipeline_output(outs, [""] * len(outs), output_type)
