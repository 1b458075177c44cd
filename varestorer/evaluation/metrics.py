"""Image-quality metrics, computed the way the SR literature (basicsr, pyiqa) computes them.

Full-reference, always available:

- **PSNR** on the Y channel: ``Y = 16 + (65.481 R + 128.553 G + 24.966 B)`` for RGB in [0, 1]
  (ITU-R BT.601, Y in [16, 235], basicsr's ``bgr2ycbcr(y_only=True)`` / pyiqa's ``to_y_channel``),
  ``crop_border`` pixels cut from each side, float64, ``10 log10(255^2 / MSE)``; identical
  images give ``inf``.
- **SSIM** on the same Y: an 11 x 11 Gaussian window (sigma 1.5), ``C1 = (0.01 * 255)^2``,
  ``C2 = (0.03 * 255)^2``, statistics over the valid positions only (no padding), the mean of
  the SSIM map (Wang et al. 2004). Two conventions differ by ~1e-3 on real pairs:
  ``"pyiqa"`` (default; pyiqa's ``ssim`` with ``test_y_channel=True``, which recent SR papers
  use for their tables): Y rounded to integers first, as MATLAB's ``rgb2ycbcr`` of a uint8
  image, and the contrast-structure term clamped at 0; ``"basicsr"`` (basicsr's
  ``calculate_ssim``): Y unrounded, no clamp. PSNR is the same in both tools.

Not in the papers, offline: **sharpness** (the detail kept: gradient energy over the photo's) and
**color_error** (the colour shift: mean CIELAB Delta E of 16 x 16 block means, what ``--color-fix``
corrects).

Through packages, where they and their weights are present (otherwise "unavailable" with the
reason and the way to get them, never left out silently): **LPIPS** (the ``lpips`` package, AlexNet
as in the papers' tables; ImageNet backbone weights needed), **NIQE** (basicsr's, whose model
parameters ship inside basicsr: works offline), and pyiqa's **DISTS**, **MUSIQ**, **MANIQA**,
**CLIPIQA**, **LIQE**, **Q-Align** and **FID** (between the folder of restorations and the ground-truth folder,
one value per method) (``pip install 'varestorer[metrics]'``; pyiqa downloads each metric's
weights into ``~/.cache/torch/hub/pyiqa`` at first use).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..compat import import_basicsr
from ..errors import ConfigError

Y_WEIGHTS = (65.481, 128.553, 24.966)  # R, G, B (BT.601, studio swing)
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


# ------------------------------------------------------------------------------- PSNR / SSIM
def build_lpips(net: str = "vgg", pretrained: bool = True):
    """A frozen LPIPS metric on images in [-1, 1] (a training loss too).

    ``pretrained=True`` (what training uses) needs torchvision's ImageNet weights of the
    backbone. Without network access they must already be in the torch hub cache.
    """
    import lpips

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # lpips prints its set-up
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=not pretrained, verbose=False)
    except Exception as exc:  # a download that cannot happen offline
        raise ConfigError(
            f"LPIPS needs torchvision's ImageNet {net} weights and could not get them ({type(exc).__name__}: {exc}). "
            f"Run once with network access (python -c \"import lpips; lpips.LPIPS(net='{net}')\") or copy the "
            f"file into $TORCH_HOME/hub/checkpoints/ (default ~/.cache/torch/hub/checkpoints). "
            f"Only for offline smoke tests: set loss.lpips_pretrained=false."
        ) from exc
    return model.eval().requires_grad_(False)


def as_uint8_rgb(image) -> np.ndarray:
    """``(H, W, 3)`` uint8, or a float array/tensor in [0, 1] (``(H, W, 3)`` or ``(3, H, W)``) -> uint8 RGB."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float()
        image = image.permute(1, 2, 0) if image.ndim == 3 and image.shape[0] == 3 else image
        image = image.numpy()
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {a.shape}")
    return a


def y_channel(image) -> np.ndarray:
    """RGB -> the BT.601 luma ``Y`` in [16, 235] (float64 ``(H, W)``)."""
    rgb = as_uint8_rgb(image).astype(np.float64) / 255.0
    return rgb @ np.array(Y_WEIGHTS) + 16.0


def _crop(a: np.ndarray, border: int) -> np.ndarray:
    return a[border:-border, border:-border] if border > 0 else a


def _pair(pred, gt, crop_border: int) -> tuple[np.ndarray, np.ndarray]:
    p, g = y_channel(pred), y_channel(gt)
    if p.shape != g.shape:
        raise ValueError(f"image sizes differ: {p.shape[::-1]} vs {g.shape[::-1]}")
    return _crop(p, crop_border), _crop(g, crop_border)


def psnr(pred, gt, crop_border: int = 0) -> float:
    """PSNR (dB) on Y (see the module doc); ``inf`` for identical images."""
    p, g = _pair(pred, gt, crop_border)
    mse = np.mean((p - g) ** 2)
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def sharpness(pred, gt, crop_border: int = 0) -> float:
    """Detail kept: the restoration's gradient energy on Y over the HQ photo's (finite differences,
    both directions). 1: as much high-frequency energy as the photo; below 1: blurrier (bicubic
    upsampling of a 4x LQ: about 0.2-0.3); above 1: more than the photo (noise, invented texture). A
    realism measure that needs no download, beside PSNR/SSIM, which rank blur first."""
    p, g = _pair(pred, gt, crop_border)

    def energy(a):
        return float(np.mean(np.diff(a, axis=0) ** 2) + np.mean(np.diff(a, axis=1) ** 2))

    return energy(p) / max(energy(g), 1e-12)


#: ``color_error`` compares colour at this scale: each image averaged over 16 x 16 pixel blocks.
COLOR_BLOCK = 16


def color_error(pred, gt, crop_border: int = 0) -> float:
    """Colour shift: the mean CIELAB distance (CIE76 Delta E; ~2.3 is a just-noticeable difference)
    between the restoration and the HQ photo, both averaged over 16 x 16 blocks first, so that it
    measures colour (what ``--color-fix`` corrects), not the detail PSNR and SSIM already score."""
    from skimage.color import rgb2lab

    p, g = (_crop(as_uint8_rgb(a).astype(np.float64) / 255, crop_border) for a in (pred, gt))
    if p.shape != g.shape:
        raise ValueError(f"image sizes differ: {p.shape[1::-1]} vs {g.shape[1::-1]}")
    return float(np.linalg.norm(rgb2lab(_block_means(p)) - rgb2lab(_block_means(g)), axis=-1).mean())


def _block_means(a: np.ndarray, k: int = COLOR_BLOCK) -> np.ndarray:
    """(H, W, 3) -> the means of its k x k blocks (the whole image's mean when smaller than a block)."""
    h, w = a.shape[0] // k * k, a.shape[1] // k * k
    if not h or not w:
        return a.mean((0, 1), keepdims=True)
    return a[:h, :w].reshape(h // k, k, w // k, k, 3).mean((1, 3))


def psnr_db(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean PSNR (dB, RGB) of image batches in [-1, 1], computed in [0, 1], differentiable: what
    tokenizer training logs (the tables' PSNR is :func:`psnr`, on Y)."""
    mse = ((x.float() - y.float()) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(1 / mse)).mean()


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The normalised 2-D Gaussian window of SSIM (the outer product of two 1-D ones)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()
    return np.outer(g, g)


SSIM_CONVENTIONS = ("pyiqa", "basicsr")


def ssim(pred, gt, crop_border: int = 0, convention: str = "pyiqa") -> float:
    """SSIM on Y (see the module doc for the two conventions); 1 for identical images."""
    if convention not in SSIM_CONVENTIONS:
        raise ValueError(f"SSIM convention must be one of {SSIM_CONVENTIONS}, got {convention!r}")
    p, g = _pair(pred, gt, crop_border)
    if convention == "pyiqa":
        p, g = p.round(), g.round()
    if min(p.shape) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} after the border crop")
    window = torch.from_numpy(gaussian_window())[None, None]

    def filt(a: np.ndarray) -> torch.Tensor:  # valid positions only
        return F.conv2d(torch.from_numpy(a)[None, None], window)[0, 0]

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_p, mu_g = filt(p), filt(g)
    var_p, var_g, cov = filt(p * p) - mu_p**2, filt(g * g) - mu_g**2, filt(p * g) - mu_p * mu_g
    cs = (2 * cov + c2) / (var_p + var_g + c2)
    cs = cs.clamp_min(0) if convention == "pyiqa" else cs
    ssim_map = (2 * mu_p * mu_g + c1) / (mu_p**2 + mu_g**2 + c1) * cs
    return float(ssim_map.mean())


# ------------------------------------------------------------------------------- the registry
class Unavailable(Exception):
    """A metric that cannot run here; the message says why and how to get it."""


@dataclass(frozen=True)
class Metric:
    """``name``: the column; ``higher_is_better`` gives the arrow; ``reference``: needs the HQ image."""

    name: str
    higher_is_better: bool
    reference: bool
    build: Callable[[str], Callable]  # device -> fn(pred uint8, gt uint8 or None) -> float
    per_set: bool = False  # a distance between two folders (FID): fn(pred_dir, gt_dir) -> float

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


def _lpips(device: str):

    try:
        model = build_lpips("alex", pretrained=True).to(device)
    except ConfigError:
        raise Unavailable(
            "LPIPS needs torchvision's ImageNet AlexNet weights (alexnet-owt-7be5be79.pth): run once "
            "with network access (python -c \"import lpips; lpips.LPIPS(net='alex')\") or copy the file "
            "into $TORCH_HOME/hub/checkpoints/ (default ~/.cache/torch/hub/checkpoints)"
        ) from None

    def fn(pred, gt):
        x, y = (
            torch.from_numpy(as_uint8_rgb(a)).permute(2, 0, 1)[None].float().to(device) / 127.5 - 1 for a in (pred, gt)
        )
        with torch.no_grad():
            return float(model(x, y).mean())

    return fn


def _niqe(device: str):

    niqe = import_basicsr("basicsr.metrics.niqe")

    def fn(pred, gt=None):
        bgr = as_uint8_rgb(pred)[..., ::-1].astype(np.float64)
        if min(bgr.shape[:2]) < 192:  # basicsr's NIQE: 96 px blocks, at least two per side
            raise ValueError(f"NIQE needs at least 192x192 pixels, the image is {bgr.shape[1]}x{bgr.shape[0]}")
        return float(niqe.calculate_niqe(bgr, crop_border=0, input_order="HWC", convert_to="y"))

    return fn


def _pyiqa(name: str) -> Callable[[str], Callable]:
    def build(device: str):
        try:
            import pyiqa
        except ImportError:
            raise Unavailable(f"{name} needs pyiqa: pip install 'varestorer[metrics]'") from None
        try:
            model = pyiqa.create_metric(name, device=torch.device(device), as_loss=False)
        except ModuleNotFoundError as exc:  # CLIPIQA, LIQE: openai-clip imports pkg_resources
            fix = "pip install 'setuptools<81'" if exc.name == "pkg_resources" else f"pip install {exc.name}"
            raise Unavailable(f"pyiqa's {name} imports the missing module {exc.name!r}: {fix}") from None
        except Exception as exc:  # its weights download at first use
            raise Unavailable(
                f"pyiqa could not build {name} ({type(exc).__name__}: {str(exc)[:160]}); run once with "
                f"network access so its weights reach ~/.cache/torch/hub/pyiqa (some in the Hugging "
                f"Face cache), or copy them there"
            ) from None

        if METRICS[name].per_set:
            return lambda pred_dir, gt_dir: float(model(str(pred_dir), str(gt_dir)))

        def fn(pred, gt=None):
            x = torch.from_numpy(as_uint8_rgb(pred)).permute(2, 0, 1)[None].float().div(255).to(device)
            args = (
                (x,)
                if gt is None
                else (x, torch.from_numpy(as_uint8_rgb(gt)).permute(2, 0, 1)[None].float().div(255).to(device))
            )
            with torch.no_grad():
                return float(model(*args))

        return fn

    return build


def _always(fn):
    return lambda device: fn


#: Every metric ``evaluate`` knows, in the column order of the papers' Table 1.
METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("psnr", True, True, _always(psnr)),
        Metric("ssim", True, True, _always(ssim)),
        Metric("lpips", False, True, _lpips),
        Metric("dists", False, True, _pyiqa("dists")),
        Metric("maniqa", True, False, _pyiqa("maniqa")),
        Metric("musiq", True, False, _pyiqa("musiq")),
        Metric("niqe", False, False, _niqe),
        Metric("clipiqa", True, False, _pyiqa("clipiqa")),
        Metric("liqe", True, False, _pyiqa("liqe")),
        Metric("qalign", True, False, _pyiqa("qalign")),
        Metric("sharpness", True, True, _always(sharpness)),  # not in the papers: the detail kept, offline
        Metric("color_error", False, True, _always(color_error)),  # not in the papers: colour shift, offline
        Metric("fid", False, True, _pyiqa("fid"), per_set=True),
    ]
}
DEFAULT_METRICS = tuple(METRICS)


def build_metrics(names, device: str = "cpu") -> tuple[dict[str, Callable], dict[str, str]]:
    """``({name: fn}, {name: why unavailable})`` for ``names``; unknown names are an error."""

    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metrics {unknown}; choose among {', '.join(METRICS)}")
    ready, missing = {}, {}
    for n in names:
        try:
            ready[n] = METRICS[n].build(device)
        except Unavailable as exc:
            missing[n] = str(exc)
    return ready, missing


def score(
    fns: dict[str, Callable],
    pred,
    gt,
    crop_border: int = 0,
    problems: dict | None = None,
    ssim_convention: str = "pyiqa",
) -> dict[str, float]:
    """Each ready metric of one restored image (``gt`` for the full-reference ones). A metric that
    fails on this image (NIQE needs at least 192 x 192 pixels) gives ``None`` and, in ``problems``,
    its reason."""
    out = {}
    for name, fn in fns.items():
        if METRICS[name].per_set:
            continue
        try:
            if name == "psnr":
                out[name] = fn(pred, gt, crop_border)
            elif name == "ssim":
                out[name] = fn(pred, gt, crop_border, ssim_convention)
            elif METRICS[name].reference:
                out[name] = fn(_crop(as_uint8_rgb(pred), crop_border), _crop(as_uint8_rgb(gt), crop_border))
            else:
                out[name] = fn(_crop(as_uint8_rgb(pred), crop_border), None)
        except Exception as exc:  # one image a metric cannot take does not stop the run
            out[name] = None
            if problems is not None:
                problems.setdefault(name, f"{type(exc).__name__}: {exc}")
    return out
