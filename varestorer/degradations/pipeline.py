"""The Real-ESRGAN second-order degradation pipeline, batched on the training device.

    pipeline = DegradationPipeline.from_preset("realesrgan-x4", device="cuda")
    out = pipeline(hq, seeds)      # hq (B, 3, H, W) in [0, 1]; seeds: B ints
    out.lq       # (B, 3, H/4, W/4) in [0, 1], 8-bit levels: what a camera would have given
    out.lq_up    # (B, 3, H, W): the LQ resized back to the HQ size (the student's input)
    out.gt       # (B, 3, H, W): the training target (USM-sharpened HQ if the preset says so)
    out.params   # the per-sample random choices (kernels, factors, noise, JPEG qualities)

Sample ``i``'s LQ is a function of ``(preset, seeds[i], hq[i])`` alone: the same whatever the
other samples of the batch are, whatever ran before (see :mod:`.params` and :mod:`.ops`). The
steps are Real-ESRGAN's (``RealESRGANModel.feed_data``) built on basicsr's primitives:

    USM-sharpen GT -> blur (random mixed kernel / sinc) -> random resize -> Gaussian or Poisson
    noise -> DiffJPEG -> [blur] -> random resize -> noise -> {resize to H/4 + sinc filter, JPEG}
    in random order -> round to 8 bits

Differences from Real-ESRGAN's training code, on purpose: every random choice is per sample
(Real-ESRGAN draws one resize factor and mode per batch and compensates with a 180-image
shuffling queue, which is not needed here), the random crop after degradation is not done (the
HQ is already the crop), and the USM blur runs as two 1-D passes.

The pipeline is not an ``nn.Module`` on purpose: basicsr's DiffJPEG keeps its quantisation
tables as trainable ``nn.Parameter`` s, which must never reach an optimizer or a checkpoint.
It follows the device of its input (``pipeline.to(device)`` moves it ahead of time).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..compat import import_basicsr
from . import ops
from .params import SampleParams, sample_params
from .presets import DegradationConfig, load_preset


@dataclass
class DegradationOutput:
    lq: Tensor  # (B, 3, H/scale, W/scale) in [0, 1]
    lq_up: Tensor  # (B, 3, H, W) in [0, 1]: lq resized back to the HQ size
    gt: Tensor  # (B, 3, H, W) in [0, 1]: the target (USM-sharpened if the preset says so)
    params: list[SampleParams]


def _fp32_context(device: torch.device):
    """No autocast, no TF32: the degradations are computed in full float32 on every device."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.no_grad())
    stack.enter_context(torch.autocast(device_type=device.type, enabled=False))
    if device.type == "cuda":
        prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

        def restore():
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev

        stack.callback(restore)
    return stack


def make_jpeger():
    """basicsr's DiffJPEG (non-differentiable rounding) with its own, frozen tables.

    basicsr shares two module-level tables between all DiffJPEG instances; a deep copy gives
    this instance its own, so moving it to a device does not move anyone else's."""
    diffjpeg = import_basicsr("basicsr.utils.diffjpeg")
    return copy.deepcopy(diffjpeg.DiffJPEG(differentiable=False)).requires_grad_(False).eval()


def make_usm_kernel(radius: int) -> Tensor:
    """The 1-D factor of basicsr ``USMSharp(radius)``'s Gaussian kernel."""
    usm = import_basicsr("basicsr.utils.img_process_util").USMSharp(radius=radius)
    return usm.kernel[0].sum(0).clone()  # kernel = outer(k, k) and sum(k) = 1


class DegradationPipeline:
    """Real-ESRGAN's second-order degradations for a batch, seeded per sample (module docstring)."""

    def __init__(self, config: DegradationConfig, device: str | torch.device | None = None):
        self.config = config
        self.device = torch.device("cpu")
        self.jpeger = make_jpeger()
        self.usm_kernel = make_usm_kernel(config.usm_radius)
        if device is not None:
            self.to(device)

    @classmethod
    def from_preset(
        cls,
        name_or_path: str | Path | DegradationConfig = "realesrgan-x4",
        device: str | torch.device | None = None,
        scale: int | None = None,
        **overrides,
    ) -> DegradationPipeline:
        """A preset by name (``degradations/NAME.yaml``) or path; ``scale`` and any preset key
        given as a keyword override the file (and are validated like it). A ``first_order`` preset
        gives a :class:`~.first_order.FirstOrderPipeline`."""
        cfg = load_preset(name_or_path)
        if scale is not None:
            overrides["scale"] = scale
        if overrides:
            cfg = cfg.replace(**overrides)
        if cls is DegradationPipeline:
            cls = PIPELINES[cfg.pipeline]
        return cls(cfg, device=device)

    @property
    def scale(self) -> int:
        return self.config.scale

    def to(self, device: str | torch.device) -> DegradationPipeline:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.jpeger.to(device)
        self.usm_kernel = self.usm_kernel.to(device)
        self.device = device
        return self

    def __repr__(self) -> str:
        return f"DegradationPipeline(preset={self.config.name or 'custom'!r}, scale={self.scale}, device={self.device})"

    def sample_params(self, seeds) -> list[SampleParams]:
        return [sample_params(self.config, int(s)) for s in seeds]

    def _kernels(self, arrays: list[np.ndarray]) -> Tensor:
        return torch.from_numpy(np.stack(arrays)).to(self.device, non_blocking=True)

    def _jpeg(self, x: Tensor, qualities: list[float]) -> Tensor:
        # DiffJPEG scales its tables by 200 - 2q: 0 at quality 100, which it divides by (NaN);
        # libjpeg clamps each step to at least 1 there: 99 is as near as DiffJPEG gets
        q = torch.tensor(qualities, dtype=torch.float32, device=x.device).clamp(max=99.0)
        return self.jpeger(torch.clamp(x, 0, 1), quality=q)

    def usm(self, x: Tensor) -> Tensor:
        c = self.config
        return ops.separable_usm(x, self.usm_kernel, c.usm_weight, c.usm_threshold)

    def __call__(self, hq: Tensor, seeds, params: list[SampleParams] | None = None) -> DegradationOutput:
        """Degrade ``hq`` (B, 3, H, W) in [0, 1] with one seed per sample (ints or a tensor)."""
        if hq.ndim != 4 or hq.shape[1] != 3:
            raise ValueError(f"hq must be (B, 3, H, W), got {tuple(hq.shape)}")
        if torch.is_tensor(seeds):
            seeds = seeds.tolist()
        seeds = [int(s) for s in seeds]
        if len(seeds) != hq.shape[0]:
            raise ValueError(f"{hq.shape[0]} images but {len(seeds)} seeds")
        dev = hq.device
        if dev != self.device:
            self.to(dev)
        params = params if params is not None else self.sample_params(seeds)
        with _fp32_context(dev):
            return self._run(hq.float().clamp(0, 1), params)

    def _run(self, hq: Tensor, params: list[SampleParams]) -> DegradationOutput:
        c = self.config
        B, C, H, W = hq.shape
        dev = hq.device
        gt = self.usm(hq) if c.usm_sharpen_gt else hq

        # ------------------------------------- the first degradation, then the second up to its resize
        out = ops.filter2d(gt, self._kernels([p.kernel1 for p in params]))
        targets = [(max(1, int(H / c.scale * p.resize2)), max(1, int(W / c.scale * p.resize2))) for p in params]
        mid = out.new_zeros(B, C, max(h for h, _ in targets), max(w for _, w in targets))
        stage1 = [
            (
                ops.resize_matrix(H, p.mode1, scale=p.resize1).shape[0],
                ops.resize_matrix(W, p.mode1, scale=p.resize1).shape[0],
            )
            for p in params
        ]
        for group in ops.size_buckets(stage1):
            # samples of similar size run together: little zero padding (the random resize
            # factors span 0.15x to 1.5x; one padded batch would mostly compute zeros)
            idx = torch.tensor(group, device=dev)
            gp = [params[i] for i in group]
            x, sizes = ops.resize(
                out[idx], [(H, W)] * len(group), [p.mode1 for p in gp], scales=[p.resize1 for p in gp]
            )
            x = ops.add_noise(x, sizes, [p.noise1 for p in gp])
            x = self._jpeg(x, [p.jpeg1 for p in gp])
            x = x * ops.valid_mask(sizes, *x.shape[-2:], dev)
            blur = [j for j, p in enumerate(gp) if p.blur2]
            if blur:
                bidx = torch.tensor(blur, device=dev)
                sub = ops.filter2d_ragged(
                    x[bidx], [sizes[j] for j in blur], self._kernels([gp[j].kernel2 for j in blur])
                )
                x = x.index_copy(0, bidx, sub)
            x, _ = ops.resize(x, sizes, [p.mode2 for p in gp], out_sizes=[targets[i] for i in group])
            mid[idx, :, : x.shape[-2], : x.shape[-1]] = x
        out, sizes = mid, targets
        out = ops.add_noise(out, sizes, [p.noise2 for p in params])

        # ------------------------- [resize back + sinc] and JPEG, in a random order per sample
        lq_size = (H // c.scale, W // c.scale)
        lq = out.new_zeros(B, C, *lq_size)
        for sinc_first in (True, False):
            group = [i for i, p in enumerate(params) if p.sinc_first == sinc_first]
            if not group:
                continue
            idx = torch.tensor(group, device=dev)
            x, gsizes = out[idx], [sizes[i] for i in group]
            gparams = [params[i] for i in group]
            if not sinc_first:
                x = self._jpeg(x, [p.jpeg2 for p in gparams])
                x = x * ops.valid_mask(gsizes, *x.shape[-2:], dev)
            x, _ = ops.resize(x, gsizes, [p.final_mode for p in gparams], out_sizes=[lq_size] * len(group))
            x = ops.filter2d(x, self._kernels([p.sinc_kernel for p in gparams]))
            if sinc_first:
                x = self._jpeg(x, [p.jpeg2 for p in gparams])
            lq = lq.index_copy(0, idx, x)

        lq = torch.clamp((lq * 255.0).round(), 0, 255) / 255.0
        return DegradationOutput(lq=lq, lq_up=self.upsample(lq, (H, W)), gt=gt, params=params)

    def upsample(self, lq: Tensor, size: tuple[int, int]) -> Tensor:
        """The LQ resized back to ``size`` with the preset's ``lq_up_mode`` (the student's input)."""
        mode = self.config.lq_up_mode
        kwargs = {} if mode in ("nearest", "area") else {"align_corners": False}
        return F.interpolate(lq, size=size, mode=mode, **kwargs).clamp(0, 1)


#: The class of each preset ``pipeline`` kind; ``first_order`` registers itself (:mod:`.first_order`,
#: imported with the package).
PIPELINES: dict[str, type[DegradationPipeline]] = {"realesrgan": DegradationPipeline}
