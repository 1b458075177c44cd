"""``varestorer bench degrade``: images/second of the batched on-device pipeline, next to the
sequential per-image run of the same degradation, in the same process: basicsr's calls one image at
a time (Real-ESRGAN's way), or for a first-order preset OpenCV's on the CPU (the released VARestorer
trainer's way)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..data.samples import sample_image
from .first_order import OpenCVFirstOrder
from .pipeline import DegradationPipeline
from .reference import ReferenceDegrader

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


def sample_batch(size: int, batch: int) -> torch.Tensor:
    """(batch, 3, size, size) center crops of scikit-image's colour photos, in [0, 1]."""

    crops = []
    for i in range(batch):
        im = sample_image(PHOTOS[i % len(PHOTOS)])[None]
        scale = size / min(im.shape[-2:])
        h, w = max(size, round(im.shape[-2] * scale)), max(size, round(im.shape[-1] * scale))
        im = F.interpolate(im, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
        top, left = (h - size) // 2, (w - size) // 2
        crops.append(im[0, :, top : top + size, left : left + size])
    return torch.stack(crops)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_degrade(
    preset: str = "realesrgan-x4",
    size: int = 512,
    batch: int = 8,
    steps: int = 3,
    warmup: int = 1,
    device: str | None = None,
    sequential: bool = True,
) -> dict:
    """Time ``steps`` batches of the pipeline (each with new seeds) and, if ``sequential``, the same
    images one by one through :class:`~.reference.ReferenceDegrader` on the same device."""

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    hq = sample_batch(size, batch).to(dev)
    pipe = DegradationPipeline.from_preset(preset, device=dev)
    seeds = lambda step: [step * batch + i for i in range(batch)]  # noqa: E731
    for w in range(warmup):
        pipe(hq, seeds(10_000 + w))
    _sync(dev)
    t0 = time.perf_counter()
    for s in range(steps):
        pipe(hq, seeds(s))
    _sync(dev)
    batched = time.perf_counter() - t0
    out = {
        "preset": pipe.config.name,
        "size": size,
        "batch": batch,
        "steps": steps,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "batched_images_per_sec": steps * batch / batched,
    }
    if sequential:
        first_order = pipe.config.pipeline == "first_order"
        ref = OpenCVFirstOrder(pipe.config) if first_order else ReferenceDegrader(pipe.config, device=dev)
        out["sequential"] = "OpenCV on the CPU, one image at a time" if first_order else "basicsr, one image at a time"
        ref(hq[0], 10_000)  # warm-up
        _sync(dev)
        t0 = time.perf_counter()
        for s in range(steps):
            for i, seed in enumerate(seeds(s)):
                ref(hq[i], seed)
        _sync(dev)
        seq = time.perf_counter() - t0
        out["sequential_images_per_sec"] = steps * batch / seq
        out["speedup"] = out["batched_images_per_sec"] / out["sequential_images_per_sec"]
    return out


def format_result(r: dict) -> str:
    lines = [
        f"bench degrade: preset {r['preset']}, {r['size']}px, batch {r['batch']}, "
        f"{r['steps']} batches, {r['device_name']} ({r['threads']} threads)",
        f"  batched pipeline (on device, per-sample seeds): {r['batched_images_per_sec']:8.2f} images/s",
    ]
    if "sequential_images_per_sec" in r:
        seq = r["sequential_images_per_sec"]
        lines.append(f"  sequential ({r['sequential']}): {seq:8.2f} images/s")
        lines.append(f"  speedup: {r['speedup']:.1f}x")
    return "\n".join(lines)
