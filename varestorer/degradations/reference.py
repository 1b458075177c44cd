"""The same degradations, one image at a time, with basicsr's calls exactly as Real-ESRGAN
makes them (``RealESRGANDataset`` draws the kernels per image, ``RealESRGANModel.feed_data``
runs ``filter2D``, ``F.interpolate``, ``add_*_noise_pt``, ``DiffJPEG``, ``USMSharp``).

It is the yardstick of the batched pipeline: the benchmark times it next to
:class:`~.pipeline.DegradationPipeline`, and the tests check that both give the same LQ for the
same ``(seed, image)``. basicsr's ``filter2D`` needs images larger than half a kernel (use
HQ sizes of 96 px and more here).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..compat import import_basicsr
from .params import SampleParams, sample_params
from .pipeline import make_jpeger
from .presets import DegradationConfig, load_preset


class ReferenceDegrader:
    """Real-ESRGAN's per-image degradation with basicsr's own calls (module docstring)."""

    def __init__(self, config: DegradationConfig | str = "realesrgan-x4", device: str | torch.device = "cpu"):
        self.config = load_preset(config)
        self.device = torch.device(device)
        self.jpeger = make_jpeger().to(self.device)
        usm = import_basicsr("basicsr.utils.img_process_util").USMSharp
        self.usm = usm(radius=self.config.usm_radius).to(self.device)
        self.deg = import_basicsr("basicsr.data.degradations")
        self.filter2D = import_basicsr("basicsr.utils.img_process_util").filter2D

    def _noise(self, img: Tensor, n) -> Tensor:
        dev = img.device
        level = torch.tensor([n.level], dtype=torch.float32, device=dev)
        gray = torch.tensor([float(n.gray)], dtype=torch.float32, device=dev)
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(n.seed)
            if n.kind == "gaussian":
                return self.deg.add_gaussian_noise_pt(img, sigma=level, gray_noise=gray, clip=True, rounds=False)
            return self.deg.add_poisson_noise_pt(img, scale=level, gray_noise=gray, clip=True, rounds=False)

    def _jpeg(self, img: Tensor, quality: float) -> Tensor:
        return self.jpeger(torch.clamp(img, 0, 1), quality=img.new_tensor([quality]))

    @torch.no_grad()
    def __call__(self, hq: Tensor, seed: int, params: SampleParams | None = None) -> tuple[Tensor, Tensor]:
        """``hq`` (3, H, W) or (1, 3, H, W) in [0, 1] -> ``(lq, gt)``, each (1, 3, h, w)."""
        c = self.config
        p = params if params is not None else sample_params(c, seed)  # kernels drawn per image, as the dataset does
        gt = (hq if hq.ndim == 4 else hq[None]).to(self.device, torch.float32)
        if c.usm_sharpen_gt:
            gt = self.usm(gt, weight=c.usm_weight, threshold=c.usm_threshold)
        ori_h, ori_w = gt.shape[-2:]
        k = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None].to(self.device)  # noqa: E731

        out = self.filter2D(gt, k(p.kernel1))
        out = F.interpolate(out, scale_factor=p.resize1, mode=p.mode1)
        out = self._noise(out, p.noise1)
        out = self._jpeg(out, p.jpeg1)

        if p.blur2:
            out = self.filter2D(out, k(p.kernel2))
        out = F.interpolate(
            out, size=(int(ori_h / c.scale * p.resize2), int(ori_w / c.scale * p.resize2)), mode=p.mode2
        )
        out = self._noise(out, p.noise2)
        if p.sinc_first:
            out = F.interpolate(out, size=(ori_h // c.scale, ori_w // c.scale), mode=p.final_mode)
            out = self.filter2D(out, k(p.sinc_kernel))
            out = self._jpeg(out, p.jpeg2)
        else:
            out = self._jpeg(out, p.jpeg2)
            out = F.interpolate(out, size=(ori_h // c.scale, ori_w // c.scale), mode=p.final_mode)
            out = self.filter2D(out, k(p.sinc_kernel))
        lq = torch.clamp((out * 255.0).round(), 0, 255) / 255.0
        return lq, gt
