"""Batched operations on "ragged" batches: every sample has its own valid size.

After the first random resize the samples of a batch no longer share a size. They are kept in
one zero-padded tensor ``(B, C, Hmax, Wmax)`` with a list of valid sizes, and each operation
below gives, on every sample's valid region, what the corresponding basicsr / PyTorch call gives
on that sample alone:

- :func:`resize`: ``F.interpolate`` (area, bilinear, bicubic; by size or scale factor) is
  separable and linear, so each sample's resize is ``A_h @ x @ A_w^T`` with 1-D resampling
  matrices obtained by applying ``F.interpolate`` itself to an identity; the padded matrices of
  the batch run as one batched matmul.
- :func:`filter2d_ragged`: basicsr's ``filter2D`` (reflect padding, per-sample kernel, grouped
  conv), with the reflection taken inside each sample's valid region.
- :func:`add_noise`: basicsr's Gaussian / Poisson noise formulas with each sample's own
  ``torch.Generator`` (so the noise does not depend on the other samples).
- DiffJPEG is block-local; a zero-padded sample compresses as it would alone (DiffJPEG itself
  pads with zeros), so it runs on the padded batch directly (see the pipeline).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Size = tuple[int, int]


# ---------------------------------------------------------------------------------------- resize
@functools.lru_cache(maxsize=4096)
def _resize_matrix_cpu(n_in: int, mode: str, size: int | None, scale: float | None) -> Tensor:
    eye = torch.eye(n_in, dtype=torch.float32).view(n_in, 1, n_in, 1)
    if size is not None:
        out = F.interpolate(eye, size=(size, 1), mode=mode)
    else:
        # the 2-D call uses the same factor on both axes; the width-1 axis at factor 1 is the identity
        out = F.interpolate(eye, scale_factor=(scale, 1.0), mode=mode)
    return out[:, 0, :, 0].t().contiguous()  # (n_out, n_in)


def resize_matrix(n_in: int, mode: str, size: int | None = None, scale: float | None = None) -> Tensor:
    """The (n_out, n_in) matrix of ``F.interpolate`` along one axis (``size`` or ``scale`` given)."""
    if (size is None) == (scale is None):
        raise ValueError("give exactly one of size and scale")
    return _resize_matrix_cpu(
        int(n_in), mode, None if size is None else int(size), None if scale is None else float(scale)
    )


def resize(
    x: Tensor,
    sizes: list[Size],
    modes: list[str],
    out_sizes: list[Size] | None = None,
    scales: list[float] | None = None,
) -> tuple[Tensor, list[Size]]:
    """Resize each sample's valid region (``out_sizes`` or ``scales`` per sample); zero-padded output."""
    mats_h, mats_w = [], []
    for i, ((h, w), mode) in enumerate(zip(sizes, modes)):
        if out_sizes is not None:
            mats_h.append(resize_matrix(h, mode, size=out_sizes[i][0]))
            mats_w.append(resize_matrix(w, mode, size=out_sizes[i][1]))
        else:
            mats_h.append(resize_matrix(h, mode, scale=scales[i]))
            mats_w.append(resize_matrix(w, mode, scale=scales[i]))
    new_sizes = [(a.shape[0], b.shape[0]) for a, b in zip(mats_h, mats_w)]
    B = x.shape[0]
    h_in, w_in = max(h for h, _ in sizes), max(w for _, w in sizes)
    h_out, w_out = max(h for h, _ in new_sizes), max(w for _, w in new_sizes)
    A = torch.zeros(B, h_out, h_in)
    Bw = torch.zeros(B, w_out, w_in)
    for i, (a, b) in enumerate(zip(mats_h, mats_w)):
        A[i, : a.shape[0], : a.shape[1]] = a
        Bw[i, : b.shape[0], : b.shape[1]] = b
    A = A.to(x.device, non_blocking=True)
    Bw = Bw.to(x.device, non_blocking=True)
    x = x[:, :, :h_in, :w_in]
    out = torch.matmul(torch.matmul(A[:, None], x), Bw[:, None].transpose(-1, -2))
    return out, new_sizes


def size_buckets(sizes: list[Size], min_fill: float = 0.5) -> list[list[int]]:
    """Group sample indices so that, in each group, every sample's area is at least ``min_fill``
    of the group's largest (bounding the work spent on zero padding)."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i][0] * sizes[i][1])
    groups: list[list[int]] = []
    for i in order:
        if groups:
            h0, w0 = sizes[groups[-1][0]]
            if sizes[i][0] * sizes[i][1] >= min_fill * h0 * w0:
                groups[-1].append(i)
                continue
        groups.append([i])
    return [sorted(g) for g in groups]


# ------------------------------------------------------------------------------- padding, masks
def valid_mask(sizes: list[Size], height: int, width: int, device) -> Tensor:
    """(B, 1, height, width) 1 inside each sample's valid region, 0 outside."""
    hs = torch.tensor([h for h, _ in sizes], device=device)
    ws = torch.tensor([w for _, w in sizes], device=device)
    rows = torch.arange(height, device=device)[None, :, None] < hs[:, None, None]
    cols = torch.arange(width, device=device)[None, None, :] < ws[:, None, None]
    return (rows & cols)[:, None].to(torch.float32)


def _reflect_index(n_valid: int, total: int, pad: int) -> Tensor:
    i = torch.arange(-pad, total + pad)
    if n_valid == 1:
        return torch.zeros_like(i)
    period = 2 * (n_valid - 1)
    j = torch.remainder(i, period)
    return torch.where(j >= n_valid, period - j, j)


def reflect_pad_ragged(x: Tensor, sizes: list[Size], pad: int) -> Tensor:
    """Pad every sample by ``pad`` with the reflection of its own valid region (``F.pad`` reflect
    semantics, repeated when the region is smaller than ``pad``). Output (B, C, H+2p, W+2p)."""
    B, C, H, W = x.shape
    rows = torch.stack([_reflect_index(h, H, pad) for h, _ in sizes]).to(x.device)
    cols = torch.stack([_reflect_index(w, W, pad) for _, w in sizes]).to(x.device)
    x = x.gather(2, rows[:, None, :, None].expand(B, C, H + 2 * pad, W))
    return x.gather(3, cols[:, None, None, :].expand(B, C, H + 2 * pad, W + 2 * pad))


def reflect_pad(x: Tensor, pad: int) -> Tensor:
    """``F.pad(x, (pad,)*4, mode="reflect")``, also for images not larger than ``pad``."""
    H, W = x.shape[-2:]
    if pad < H and pad < W:
        return F.pad(x, (pad, pad, pad, pad), mode="reflect")
    return reflect_pad_ragged(x, [(H, W)] * x.shape[0], pad)


# ------------------------------------------------------------------------------------- filtering
def conv_per_sample(padded: Tensor, kernels: Tensor) -> Tensor:
    """basicsr ``filter2D``'s grouped convolution of an already padded batch: sample ``b`` with
    ``kernels[b]`` (B, k, k) on every channel. Output loses ``k - 1`` pixels per axis."""
    B, C, ph, pw = padded.shape
    k = kernels.shape[-1]
    weight = kernels.to(padded.dtype).view(B, 1, k, k).repeat(1, C, 1, 1).view(B * C, 1, k, k)
    out = F.conv2d(padded.reshape(1, B * C, ph, pw), weight, groups=B * C)
    return out.view(B, C, ph - k + 1, pw - k + 1)


def filter2d(x: Tensor, kernels: Tensor) -> Tensor:
    """basicsr ``filter2D`` (reflect padding, one kernel per sample) for a batch of one size;
    unlike ``filter2D`` it also works for images not larger than half the kernel."""
    k = kernels.shape[-1]
    if k % 2 != 1:
        raise ValueError("kernel sizes must be odd")
    return conv_per_sample(reflect_pad(x, k // 2), kernels)


def filter2d_ragged(x: Tensor, sizes: list[Size], kernels: Tensor) -> Tensor:
    """basicsr ``filter2D`` on each sample's valid region; zero outside it."""
    k = kernels.shape[-1]
    out = conv_per_sample(reflect_pad_ragged(x, sizes, k // 2), kernels)
    return out * valid_mask(sizes, x.shape[-2], x.shape[-1], x.device)


@functools.lru_cache(maxsize=64)
def _blur_matrix_cpu(n: int, kernel: tuple) -> Tensor:
    k = torch.tensor(kernel, dtype=torch.float64)
    r = k.numel() // 2
    idx = _reflect_index(n, n, r)  # the reflect-padded row j + r comes from row idx[j + r]
    M = torch.zeros(n, n, dtype=torch.float64)
    for t in range(k.numel()):  # output row i = sum_t k[t] * padded[i + t]
        M.index_put_((torch.arange(n), idx[t : t + n]), k[t].expand(n), accumulate=True)
    return M.to(torch.float32)


def blur_matrix(n: int, kernel_1d: Tensor, device) -> Tensor:
    """(n, n) matrix of a 1-D filter with reflect padding folded in: ``M @ x`` filters the rows."""
    return _blur_matrix_cpu(int(n), tuple(kernel_1d.detach().cpu().double().tolist())).to(device)


def separable_usm(x: Tensor, kernel_1d: Tensor, weight: float, threshold: float) -> Tensor:
    """basicsr ``USMSharp.forward`` with its Gaussian kernel (``outer(k, k)``) applied as two 1-D
    filters, each a matmul with the reflect padding folded into the matrix: the same result, at a
    small fraction of the cost of the 51x51 convolution."""
    H, W = x.shape[-2:]
    mh, mw = blur_matrix(H, kernel_1d, x.device), blur_matrix(W, kernel_1d, x.device)

    def blur(img):
        return torch.matmul(torch.matmul(mh, img), mw.t())

    residual = x - blur(x)
    mask = (torch.abs(residual) * 255 > threshold).to(x.dtype)
    soft_mask = blur(mask)
    sharp = torch.clip(x + weight * residual, 0, 1)
    return soft_mask * sharp + (1 - soft_mask) * x


# ----------------------------------------------------------------------------------------- noise
def _generator(seed: int, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


def gaussian_noise(img: Tensor, sigma: float, gray: bool, seed: int) -> Tensor:
    """basicsr ``generate_gaussian_noise_pt`` for one image (1, C, h, w) with its own generator:
    the same numbers basicsr draws after ``torch.manual_seed(seed)``."""
    g = _generator(seed, img.device)
    _, c, h, w = img.shape
    s = torch.tensor(sigma, dtype=img.dtype, device=img.device)
    if gray:
        return (torch.randn(h, w, generator=g, dtype=img.dtype, device=img.device) * s / 255.0).expand(1, c, h, w)
    return torch.randn(1, c, h, w, generator=g, dtype=img.dtype, device=img.device) * s / 255.0


def _poisson(img: Tensor, g: torch.Generator) -> Tensor:
    img = torch.clamp((img * 255.0).round(), 0, 255) / 255.0
    vals = 2 ** np.ceil(np.log2(len(torch.unique(img))))
    vals = img.new_tensor(vals)
    return torch.poisson(img * vals, generator=g) / vals - img


def poisson_noise(img: Tensor, scale: float, gray: bool, seed: int) -> Tensor:
    """basicsr ``generate_poisson_noise_pt`` for one image (1, C, h, w) with its own generator."""
    from torchvision.transforms.functional import rgb_to_grayscale

    g = _generator(seed, img.device)
    s = torch.tensor(scale, dtype=img.dtype, device=img.device)
    if gray:
        noise = _poisson(rgb_to_grayscale(img, num_output_channels=1), g).expand_as(img)
    else:
        noise = _poisson(img, g)
    return noise * s


def add_noise(x: Tensor, sizes: list[Size], noises: list) -> Tensor:
    """Each sample gets its own noise (``NoiseParams``) on its valid region; clipped to [0, 1]."""
    noise = torch.zeros_like(x)
    for i, ((h, w), n) in enumerate(zip(sizes, noises)):
        region = x[i : i + 1, :, :h, :w]
        fn = gaussian_noise if n.kind == "gaussian" else poisson_noise
        noise[i : i + 1, :, :h, :w] = fn(region, n.level, n.gray, n.seed)
    return torch.clamp(x + noise, 0, 1)
