"""DiffBIR's first-order degradation (``pipeline: first_order``), batched on the training device.

The released VARestorer trainer (EternalEvan/VARestorer d500fad, ``SRIterableDataset``) degrades
each HQ crop once, on the CPU, with DiffBIR/CodeFormer's recipe:

    blur (41-tap iso/aniso Gaussian, sigma 0.1-12) -> downsample x1-12 (bilinear) -> Gaussian
    noise sigma 0-15 -> JPEG quality 30-100 -> upsample back to the HQ size (bilinear)

Here every random choice of a sample is a function of its seed alone (:func:`sample_first_order`,
drawn in basicsr's order from seeded global generators, as :mod:`.params` does for Real-ESRGAN), and
the batch runs on the device with the ragged operations of :mod:`.ops`. The differences from the
release's per-image OpenCV code: JPEG is basicsr's DiffJPEG at the same integer quality (not
libjpeg: the same tables and 4:2:0 subsampling, its own rounding), the resizes are ``F.interpolate``'s
bilinear (OpenCV's ``INTER_LINEAR`` computes in fixed point), and nothing is left unseeded (the
release draws from NumPy's global state, which its workers do not seed).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..compat import import_basicsr
from . import ops
from .params import NoiseParams, seeded_global_rng
from .pipeline import PIPELINES, DegradationOutput, DegradationPipeline
from .presets import DegradationConfig


@dataclass(frozen=True)
class FirstOrderParams:
    """Every random choice of one sample's first-order degradation."""

    seed: int
    kernel_type: str  # iso | aniso
    sigma_x: float
    sigma_y: float
    rotation: float
    kernel: np.ndarray = field(repr=False)  # (K, K) float32, K = blur_kernel_size
    downsample: float  # the factor: the LQ is (int(H // f), int(W // f)) before it is resized back
    noise: NoiseParams
    jpeg: float  # an integer quality, as OpenCV's encoder takes it

    def describe(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if not isinstance(v, np.ndarray)}
        out["noise"] = self.noise.__dict__
        return out


def sample_first_order(cfg: DegradationConfig, seed: int) -> FirstOrderParams:
    """One sample's choices, drawn as basicsr's ``random_mixed_kernels`` and DiffBIR's dataset draw them."""
    deg = import_basicsr("basicsr.data.degradations")
    k = cfg.blur_kernel_size
    with seeded_global_rng(int(seed)):
        kind = random.choices(list(cfg.kernel_list), list(cfg.kernel_prob))[0]
        if kind not in ("iso", "aniso"):
            raise ValueError(f"the first-order pipeline blurs with iso or aniso Gaussians, not {kind}")
        sx = float(np.random.uniform(*cfg.blur_sigma))
        sy, rot = sx, 0.0
        if kind == "aniso":
            sy = float(np.random.uniform(*cfg.blur_sigma))
            rot = float(np.random.uniform(-math.pi, math.pi))
        kernel = deg.bivariate_Gaussian(k, sx, sy, rot, isotropic=kind == "iso").astype(np.float32)
        factor = float(np.random.uniform(*cfg.downsample_range))
        sigma = float(np.float32(np.random.uniform(*cfg.noise_range)))
        noise_seed = int(np.random.randint(0, 2**62, dtype=np.int64))
        quality = float(int(np.random.uniform(*cfg.jpeg_range)))
    return FirstOrderParams(
        seed=int(seed),
        kernel_type=kind,
        sigma_x=sx,
        sigma_y=sy,
        rotation=rot,
        kernel=kernel,
        downsample=factor,
        noise=NoiseParams("gaussian", sigma, False, noise_seed),
        jpeg=quality,
    )


class FirstOrderPipeline(DegradationPipeline):
    """DiffBIR's first-order degradation for a batch, seeded per sample (module docstring).

    ``out.lq`` and ``out.lq_up`` are both the degraded image at the HQ size (the release's input to
    its SwinIR); ``out.gt`` is the HQ itself."""

    def sample_params(self, seeds) -> list[FirstOrderParams]:
        return [sample_first_order(self.config, int(s)) for s in seeds]

    def _run(self, hq: Tensor, params: list[FirstOrderParams]) -> DegradationOutput:
        B, C, H, W = hq.shape
        blurred = ops.filter2d(hq, self._kernels([p.kernel for p in params]))
        small = [(max(1, int(H // p.downsample)), max(1, int(W // p.downsample))) for p in params]
        lq = torch.zeros_like(hq)
        for group in ops.size_buckets(small):
            # samples of similar LQ size together: the factors span 1x to 12x
            idx = torch.tensor(group, device=hq.device)
            gp = [params[i] for i in group]
            sizes = [small[i] for i in group]
            x, _ = ops.resize(blurred[idx], [(H, W)] * len(group), ["bilinear"] * len(group), out_sizes=sizes)
            x = ops.add_noise(x, sizes, [p.noise for p in gp])
            x = self._jpeg(x, [p.jpeg for p in gp]) * ops.valid_mask(sizes, *x.shape[-2:], hq.device)
            x, _ = ops.resize(x, sizes, [self.config.lq_up_mode] * len(group), out_sizes=[(H, W)] * len(group))
            lq = lq.index_copy(0, idx, x.clamp(0, 1))
        return DegradationOutput(lq=lq, lq_up=lq, gt=hq, params=params)


PIPELINES["first_order"] = FirstOrderPipeline


class OpenCVFirstOrder:
    """The released trainer's own per-image degradation (``SRIterableDataset.get_img_gt_and_img_lq``:
    OpenCV and NumPy on the CPU, BGR), driven by the same :class:`FirstOrderParams`: the yardstick
    of :class:`FirstOrderPipeline` in the tests and in ``varestorer bench degrade``. Its noise is
    NumPy's (seeded with the sample's noise seed), so only noise-free settings compare value for value."""

    def __init__(self, config: DegradationConfig):
        self.config = config

    def __call__(self, hq: Tensor, seed: int) -> Tensor:
        """``hq`` (3, H, W) in [0, 1] -> the LQ (3, H, W) in [0, 1], as the release makes it."""
        import cv2

        p = sample_first_order(self.config, seed)
        img = np.ascontiguousarray(hq.detach().cpu().float().permute(1, 2, 0).numpy()[..., ::-1])
        h, w = img.shape[:2]
        img = cv2.filter2D(img, -1, p.kernel)
        img = cv2.resize(img, (int(w // p.downsample), int(h // p.downsample)), interpolation=cv2.INTER_LINEAR)
        rng = np.random.RandomState(p.noise.seed % 2**32)
        img = np.clip(img + rng.randn(*img.shape).astype(np.float32) * p.noise.level / 255.0, 0, 1)
        ok, buf = cv2.imencode(".jpg", img * 255.0, [int(cv2.IMWRITE_JPEG_QUALITY), int(p.jpeg)])
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).astype(np.float32) / 255.0
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        return torch.from_numpy(np.ascontiguousarray(img[..., ::-1])).permute(2, 0, 1).clamp(0, 1)
