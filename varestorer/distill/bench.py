"""``varestorer bench train``: seconds/step, images/s, peak memory (and MFU on a GPU) of the
real training step (degradation, teacher, student, losses, backward, AdamW) with random weights."""

from __future__ import annotations

import resource
import time

import torch

from ..data.samples import SampleImages
from ..inference.bench import RandomText
from ..presets import get_preset
from ..restorer.swinir import ARCHITECTURES, SwinIR
from ..tokenizer.loading import build_vae
from ..transformer.loading import build_transformer
from ..transformer.text import TextEncoder
from .dataloader import collate
from .model import VARestorerModel, _step_parts
from .recipe import Recipe, load_recipe, recipe_from_dict

#: Dense bf16 peak FLOP/s of common training GPUs (no sparsity), for model FLOPs utilisation.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def bench_train(  # noqa: C901
    preset: str,
    resolution: int,
    batch: int,
    steps: int = 5,
    warmup: int = 2,
    device: str | None = None,
    mode: str = "distill",
    gradient_checkpointing: bool = False,
    recipe: str | None = None,
    mixed_precision: str | None = None,
    count_flops: bool = True,
    frozen_dtype: str = "float32",
) -> dict:
    """Time the step. ``recipe``: a shipped recipe's step (its objective, student, degradation and
    stage-1 restorer, random weights) at ``preset``, ``resolution`` and ``batch`` instead of the
    default distillation step. ``mixed_precision``: ``bf16`` (autocast, float32 weights, as accelerate
    runs it; the default on a GPU, and on a CPU with bfloat16 kernels when asked) or ``no`` (the
    default on a CPU). ``count_flops``: one more step under torch's FLOP counter (a step's time again).
    ``frozen_dtype``: ``train.frozen_dtype`` (``bf16``: the frozen weights held in bf16)."""
    from torch.utils.flop_counter import FlopCounterMode

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = mixed_precision or ("bf16" if dev.type == "cuda" else "no")
    if precision not in ("no", "bf16"):
        raise ValueError(f"mixed_precision must be 'no' or 'bf16', not {precision!r}")
    if recipe is not None:
        recipe = bench_recipe(recipe, preset, resolution, batch, precision, (f"train.frozen_dtype={frozen_dtype}",))
        mode = recipe.mode
    else:
        recipe = recipe_from_dict(
            {
                "name": "bench",
                "mode": mode,
                "model": {"preset": preset, "random_init": True, "resolution": resolution},
                "loss": {"lpips_pretrained": False},
                "student": {"full_finetune": mode == "teacher", "train_encoder": mode != "teacher"},
                "train": {"global_batch_size": batch, "mixed_precision": precision, "frozen_dtype": frozen_dtype},
            }
        )
    torch.manual_seed(0)
    with torch.device(dev):
        model = _random_model(recipe)
    model.to(dev).train()
    if recipe.train.frozen_dtype == "bf16":
        if precision != "bf16":
            raise ValueError("train.frozen_dtype=bf16 needs --mixed-precision bf16")
        model.hold_frozen_in(torch.bfloat16)
    if gradient_checkpointing:
        model.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-6)
    data = SampleImages(resolution, repeats=batch)
    batch_data = collate([data[i] for i in range(batch)])
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        with amp:
            loss = model(batch_data)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    sec = (time.perf_counter() - t0) / steps
    flops = None
    if count_flops:
        counter = FlopCounterMode(display=False)
        with counter:
            step()
        flops = counter.get_total_flops()
    out = {
        "preset": preset,
        "recipe": recipe.name,
        "mode": mode,
        "resolution": resolution,
        "batch": batch,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "mixed_precision": precision,
        "frozen_dtype": recipe.train.frozen_dtype,
        "gradient_checkpointing": gradient_checkpointing,
        "trainable_params": sum(p.numel() for p in model.trainable_parameters()),
        "sec_per_step": sec,
        "images_per_sec": batch / sec,
        "flops_per_step": flops,
        "achieved_tflops": flops / sec / 1e12 if flops else None,
    }
    if dev.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    else:
        out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    peak = _peak_flops(dev)
    if peak and flops:
        out["mfu"] = flops / sec / peak
    return out


def bench_recipe(
    name: str, preset: str, resolution: int, batch: int, mixed_precision: str, overrides: tuple[str, ...] = ()
) -> Recipe:
    """A shipped recipe (or a path) at another preset, size and batch, every checkpoint it names
    replaced by random weights (its stage-1 restorer: a random SwinIR, :func:`_random_model`)."""
    return load_recipe(
        name,
        [
            f"model.preset={preset}",
            f"model.resolution={resolution}",
            "model.random_init=true",
            "model.transformer=null",
            "model.vae=null",
            "model.text_encoder=null",
            "model.init_from=null",
            "loss.lpips_pretrained=false",
            f"train.global_batch_size={batch}",
            "train.gradient_accumulation_steps=1",
            f"train.mixed_precision='{mixed_precision}'",
            *overrides,
        ],
    )


def _random_model(recipe) -> VARestorerModel:
    """The recipe's model with random weights and nothing from the network: a preset whose text
    encoder is a Hub model (infinity-2b: flan-t5-xl) gets a stand-in of its width (fixed random
    features, as ``bench latency`` has; T5 is frozen and outside the step's backward)."""
    preset = get_preset(recipe.model.preset)
    restorer = None
    if recipe.model.restorer is not None:  # the recipe's stage-1 restorer, random, of the preset's size
        restorer = SwinIR(**ARCHITECTURES["release" if preset.name == "infinity-2b" else preset.name])
    if preset.text_encoder == "local":
        text = TextEncoder.from_preset(preset)
    else:
        text = RandomText(preset.transformer["text_channels"], prompt_tokens=30)
    return VARestorerModel.for_mode(recipe.mode)(
        recipe, build_vae(preset), build_transformer(preset), text, *_step_parts(recipe), restorer
    )


def format_result(r: dict) -> str:
    lines = [
        f"bench train: {r['recipe']}, preset {r['preset']} ({r['mode']}), {r['resolution']}px, batch {r['batch']}, "
        f"{r['device_name']}, {r['mixed_precision']}, {r['trainable_params']:,} trainable parameters",
        f"  {r['sec_per_step']:.3f} s/step   {r['images_per_sec']:.2f} images/s"
        + (
            f"   {r['flops_per_step'] / 1e12:.2f} TFLOP/step   {r['achieved_tflops']:.2f} TFLOP/s"
            if r["flops_per_step"]
            else ""
        ),
    ]
    if "peak_memory_gib" in r:
        lines.append(f"  peak GPU memory {r['peak_memory_gib']:.2f} GiB")
    else:
        lines.append(f"  peak process RSS {r['peak_rss_gib']:.2f} GiB")
    if "mfu" in r:
        lines.append(f"  model FLOPs utilisation {100 * r['mfu']:.1f}% of bf16 peak")
    return "\n".join(lines)
