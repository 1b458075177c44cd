"""``varestorer bench train --device meta``: the GPU memory of a training step, estimated with no GPU
and no weights.

The step runs on fake tensors (``torch._subclasses.FakeTensorMode``: shapes and dtypes, no storage)
under bfloat16 autocast, as accelerate runs it on a GPU, with the preset's real modules at random
initialisation. What it adds up:

- weights: the frozen base transformer (float32, as loaded), the frozen VAE (float32), the text
  encoder (float16, as the trainer loads T5 on CUDA), LPIPS' VGG (float32);
- training state: every trainable parameter (LoRA, the LQ encoder copy) with its gradient and
  AdamW's two moments, float32: 16 bytes each;
- activations: the bytes of every tensor autograd saves for the backward pass, counted once each,
  attributed to the part of the model whose forward saved it. With gradient checkpointing the
  blocks save only their inputs; the backward recomputes one block at a time, so one block's
  activations (measured without checkpointing, divided by the depth) are added.

Not counted: the teacher's no-grad forward and other transient buffers, CUDA's workspace and
allocator fragmentation (typically a further 5-15%), and DDP's gradient buckets (the size of the
trainable gradients again). It is an estimate, and ``bench train`` says so.
"""

from __future__ import annotations

import torch
from torch import nn

from ..evaluation.metrics import build_lpips
from ..inference.memory import fake_weights
from ..presets import get_preset
from ..tokenizer.loading import build_vae
from ..transformer.loading import build_transformer
from ..transformer.text import T5_ENCODERS, TextEncoder, TextFeatures
from .model import VARestorerModel
from .recipe import recipe_from_dict

PARTS = ("transformer", "lq_encoder", "vae.decoder", "lpips")  # where the saved activations are


class _FeaturesOnly(nn.Module):
    """The text encoder's output without running it (it is frozen and runs without gradients)."""

    def __init__(self, channels: int, tokens: int):
        super().__init__()
        self.channels, self.tokens = channels, tokens

    def forward(self, captions, device=None, drop=None):

        n = len(captions)
        return TextFeatures(
            torch.zeros(n, self.tokens, self.channels), torch.ones(n, self.tokens, dtype=torch.bool), drop
        )


def _text_encoder_parameters(preset) -> int:
    if preset.text_encoder == "local":
        return sum(p.numel() for p in TextEncoder.from_preset(preset).parameters())
    if preset.text_encoder not in T5_ENCODERS:
        raise ValueError(f"no configuration of {preset.text_encoder} for an estimate; add it to T5_ENCODERS")
    from transformers import T5Config, T5EncoderModel

    with torch.device("meta"):
        return sum(p.numel() for p in T5EncoderModel(T5Config(**T5_ENCODERS[preset.text_encoder])).parameters())


def _saved_bytes(model, batch: int, resolution: int) -> dict[str, int]:
    """Bytes autograd saves in one forward, per part (``other``: the losses, the quantizer glue)."""
    current: list[str] = []
    hooks = []
    for name in PARTS:
        head, _, rest = name.partition(".")  # the VAE and LPIPS are held outside the module tree
        module = getattr(model, head, None)
        module = module.get_submodule(rest) if module is not None and rest else module
        if module is not None:
            hooks.append(module.register_forward_pre_hook(lambda m, a, name=name: current.append(name)))
            hooks.append(module.register_forward_hook(lambda m, a, o: current.pop() and None))  # None: output kept
    saved: dict[int, tuple[str, int]] = {}

    def pack(t):
        saved.setdefault(id(t), (current[-1] if current else "other", t.numel() * t.element_size()))
        return t

    hq = torch.empty(batch, 3, resolution, resolution)
    model.degrade = lambda b: (hq, hq, list(range(batch)))  # the degradation runs on the CPU in NumPy
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
            model({"caption": ["a photo"] * batch})
    finally:
        for h in hooks:
            h.remove()
    out = dict.fromkeys((*PARTS, "other"), 0)
    for part, nbytes in saved.values():
        out[part] += nbytes
    return out


def estimate_train_memory(
    preset_name: str,
    resolution: int,
    batch: int,
    gradient_checkpointing: bool = True,
    lora_rank: int = 32,
    caption_tokens: int = 64,
) -> dict:
    """The estimate (module docstring) for ``batch`` images per GPU, in GiB."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    preset = get_preset(preset_name)
    recipe = recipe_from_dict(
        {
            "name": "estimate",
            "mode": "distill",
            "model": {"preset": preset_name, "random_init": True, "resolution": resolution},
            "student": {"lora_rank": lora_rank, "lora_alpha": lora_rank},
            "loss": {"lpips_pretrained": False},
            "train": {"global_batch_size": batch, "mixed_precision": "bf16"},
        }
    )
    with torch.device("meta"):
        vae, transformer = build_vae(preset), build_transformer(preset)
    lpips = build_lpips(recipe.loss.lpips_net, pretrained=False).to("meta")
    text = _FeaturesOnly(transformer.config.text_channels, caption_tokens)
    model = VARestorerModel.for_mode(recipe.mode)(recipe, vae, transformer, text, None, lpips=lpips)
    trainable = sum(p.numel() for p in model.trainable_parameters())
    frozen = {
        "transformer": sum(p.numel() for n, p in model.transformer.named_parameters() if not p.requires_grad),
        "vae": sum(p.numel() for p in model.vae.parameters()),
        "lpips": sum(p.numel() for p in lpips.parameters()),
        "text_encoder": _text_encoder_parameters(preset),
    }
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake_weights(model, *model.held_outside())
        model.train()
        full = _saved_bytes(model, batch, resolution)
        checkpointed = None
        if gradient_checkpointing:
            model.enable_gradient_checkpointing()
            checkpointed = _saved_bytes(model, batch, resolution)
    depth = transformer.config.depth
    tokens = sum(h * w for h, w in model.schedule)
    gib = 2**30
    weights = (4 * (frozen["transformer"] + frozen["vae"] + frozen["lpips"]) + 2 * frozen["text_encoder"]) / gib
    state = 16 * trainable / gib
    if checkpointed is None:
        activations = sum(full.values()) / gib
        by_part = full
    else:
        per_block = (full["transformer"] - checkpointed["transformer"]) / depth
        block_inputs = depth * batch * tokens * transformer.config.embed_dim * 4  # the float32 residual stream
        by_part = {**checkpointed, "transformer": checkpointed["transformer"] + block_inputs + per_block}
        activations = sum(by_part.values()) / gib
    return {
        "preset": preset_name,
        "resolution": resolution,
        "batch": batch,
        "estimated": True,
        "gradient_checkpointing": gradient_checkpointing,
        "tokens": tokens,
        "trainable_params": trainable,
        "frozen_params": frozen,
        "weights_gib": weights,
        "training_state_gib": state,
        "activations_gib": activations,
        "activations_by_part_gib": {k: v / gib for k, v in by_part.items()},
        "peak_memory_gib": weights + state + activations,
    }


def format_estimate(r: dict) -> str:
    parts = ", ".join(f"{k} {v:.1f}" for k, v in r["activations_by_part_gib"].items() if v >= 0.05)
    return "\n".join(
        [
            f"bench train --device meta: preset {r['preset']}, {r['resolution']}px, batch {r['batch']} per GPU, "
            f"{'with' if r['gradient_checkpointing'] else 'without'} gradient checkpointing, bf16 autocast "
            f"(ESTIMATED, no GPU: see varestorer/distill/memory.py)",
            f"  weights {r['weights_gib']:.1f} GiB (frozen, as loaded)   training state {r['training_state_gib']:.1f} GiB "
            f"({r['trainable_params']:,} trainable x 16 bytes)",
            f"  activations {r['activations_gib']:.1f} GiB ({parts})",
            f"  peak about {r['peak_memory_gib']:.1f} GiB, before allocator overhead and transient buffers",
        ]
    )
