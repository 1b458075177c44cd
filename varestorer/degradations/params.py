"""Per-sample degradation parameters, drawn from the sample's seed alone.

:func:`sample_params` makes every random choice of the Real-ESRGAN second-order pipeline for one
image: the blur kernels (basicsr's ``random_mixed_kernels`` / ``circular_lowpass_kernel``, drawn
exactly as Real-ESRGAN's dataset draws them), resize factors and modes, noise kinds, levels and
the seeds of the noise itself, JPEG qualities, the order of the last step. basicsr's kernel
sampling uses the global ``random`` and ``numpy.random`` states: they are seeded with the
sample's seed for the duration of the draw and restored afterwards, so the parameters (and so the
LQ) depend on ``seed`` only, never on the batch the sample is in or on what ran before.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass, field

import numpy as np

from ..compat import import_basicsr
from .presets import DegradationConfig


@dataclass(frozen=True)
class NoiseParams:
    kind: str  # "gaussian" (sigma in 0..255 units) or "poisson" (scale)
    level: float  # sigma or Poisson scale
    gray: bool  # the same noise on the three channels
    seed: int  # seed of the noise field itself


@dataclass(frozen=True)
class SampleParams:
    """Every random choice of one sample's degradation (kernels are (K, K) float32, K = max size)."""

    seed: int
    kernel1: np.ndarray = field(repr=False)
    resize1: float
    mode1: str
    noise1: NoiseParams
    jpeg1: float
    blur2: bool
    kernel2: np.ndarray = field(repr=False)
    resize2: float
    mode2: str
    noise2: NoiseParams
    jpeg2: float
    sinc_first: bool  # True: [resize back + sinc] then JPEG; False: JPEG then [resize back + sinc]
    final_mode: str
    final_sinc: bool
    sinc_kernel: np.ndarray = field(repr=False)

    def describe(self) -> dict:
        """A JSON-friendly summary (without the kernels)."""
        out = {}
        for k, v in self.__dict__.items():
            if isinstance(v, np.ndarray):
                continue
            out[k] = v.__dict__ if isinstance(v, NoiseParams) else v
        return out


@contextlib.contextmanager
def seeded_global_rng(seed: int):
    """Seed Python's and NumPy's global generators, and put their states back afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _kernel(sizes, kernel_list, kernel_prob, sigma, betag, betap, sinc_prob, pad_to: int) -> np.ndarray:
    deg = import_basicsr("basicsr.data.degradations")
    kernel_size = random.choice(sizes)
    if np.random.uniform() < sinc_prob:
        # the sinc cut-off range Real-ESRGAN uses for kernels of 7..21 taps
        omega_c = np.random.uniform(np.pi / 3, np.pi) if kernel_size < 13 else np.random.uniform(np.pi / 5, np.pi)
        kernel = deg.circular_lowpass_kernel(omega_c, kernel_size, pad_to=False)
    else:
        kernel = deg.random_mixed_kernels(
            list(kernel_list),
            list(kernel_prob),
            kernel_size,
            sigma,
            sigma,
            [-math.pi, math.pi],
            betag,
            betap,
            noise_range=None,
        )
    pad = (pad_to - kernel_size) // 2
    return np.pad(kernel, ((pad, pad), (pad, pad))).astype(np.float32)


def _resize(prob, rng_range) -> float:
    updown = random.choices(["up", "down", "keep"], prob)[0]
    if updown == "up":
        return float(np.random.uniform(1, rng_range[1]))
    if updown == "down":
        return float(np.random.uniform(rng_range[0], 1))
    return 1.0


def _noise(gaussian_prob, sigma_range, poisson_range, gray_prob) -> NoiseParams:
    if np.random.uniform() < gaussian_prob:
        kind, level = "gaussian", np.random.uniform(*sigma_range)
    else:
        kind, level = "poisson", np.random.uniform(*poisson_range)
    gray = bool(np.random.uniform() < gray_prob)
    seed = int(np.random.randint(0, 2**62, dtype=np.int64))
    # levels are float32 on the device: round them once here so every path uses the same value
    return NoiseParams(kind, float(np.float32(level)), gray, seed)


def sample_params(cfg: DegradationConfig, seed: int) -> SampleParams:
    """All random choices of one sample, a function of ``(cfg, seed)`` only."""
    lo, hi = cfg.kernel_size_range
    sizes = list(range(lo, hi + 1, 2))
    K = cfg.max_kernel_size
    with seeded_global_rng(int(seed)):
        # kernels, in the order of Real-ESRGAN's dataset
        kernel1 = _kernel(
            sizes, cfg.kernel_list, cfg.kernel_prob, cfg.blur_sigma, cfg.betag_range, cfg.betap_range, cfg.sinc_prob, K
        )
        kernel2 = _kernel(
            sizes,
            cfg.kernel_list2,
            cfg.kernel_prob2,
            cfg.blur_sigma2,
            cfg.betag_range2,
            cfg.betap_range2,
            cfg.sinc_prob2,
            K,
        )
        final_sinc = bool(np.random.uniform() < cfg.final_sinc_prob)
        if final_sinc:
            deg = import_basicsr("basicsr.data.degradations")
            kernel_size = random.choice(sizes)
            omega_c = np.random.uniform(np.pi / 3, np.pi)
            sinc = deg.circular_lowpass_kernel(omega_c, kernel_size, pad_to=K).astype(np.float32)
        else:
            sinc = np.zeros((K, K), np.float32)  # a pulse: no filtering
            sinc[K // 2, K // 2] = 1
        # the first degradation (Real-ESRGAN's feed_data)
        resize1 = _resize(cfg.resize_prob, cfg.resize_range)
        mode1 = random.choice(cfg.resize_modes)
        noise1 = _noise(cfg.gaussian_noise_prob, cfg.noise_range, cfg.poisson_scale_range, cfg.gray_noise_prob)
        jpeg1 = float(np.float32(np.random.uniform(*cfg.jpeg_range)))
        # the second degradation
        blur2 = bool(np.random.uniform() < cfg.second_blur_prob)
        resize2 = _resize(cfg.resize_prob2, cfg.resize_range2)
        mode2 = random.choice(cfg.resize_modes)
        noise2 = _noise(cfg.gaussian_noise_prob2, cfg.noise_range2, cfg.poisson_scale_range2, cfg.gray_noise_prob2)
        jpeg2 = float(np.float32(np.random.uniform(*cfg.jpeg_range2)))
        sinc_first = bool(np.random.uniform() < 0.5)
        final_mode = random.choice(cfg.resize_modes)
    return SampleParams(
        seed=int(seed),
        kernel1=kernel1,
        resize1=resize1,
        mode1=mode1,
        noise1=noise1,
        jpeg1=jpeg1,
        blur2=blur2,
        kernel2=kernel2,
        resize2=resize2,
        mode2=mode2,
        noise2=noise2,
        jpeg2=jpeg2,
        sinc_first=sinc_first,
        final_mode=final_mode,
        final_sinc=final_sinc,
        sinc_kernel=sinc,
    )
