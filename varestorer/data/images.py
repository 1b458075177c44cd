"""Reading any photo a folder may hold into an 8-bit RGB array, or saying why not.

:func:`read_rgb` applies the EXIF orientation, converts every mode (CMYK, grayscale, palette,
with or without transparency, 16-bit and float) to 8-bit sRGB RGB, and raises
:class:`ImageSkip` with a short, countable ``reason`` for what cannot be used (empty files,
non-images, truncated or corrupt files, decompression bombs). :func:`to_tensor` is the one
conversion of any image input into a float tensor. Nothing here writes anything.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ConfigError

#: File name endings taken as images by the folder walk (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

#: The reasons :class:`ImageSkip` gives (the skip report counts them).
REASONS = (
    "empty file",
    "not an image",
    "truncated or corrupt",
    "too large",
    "too small",
    "unreadable",
    "unsupported mode",
)


class ImageSkip(Exception):
    """An image that cannot be used: ``reason`` is one of :data:`REASONS`, ``detail`` says more."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}: add it to REASONS (the skip report counts them)")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def is_image_path(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def _to_srgb(im: Image.Image) -> Image.Image:
    """Convert images carrying a non-sRGB ICC profile (wide gamut RGB, CMYK) to sRGB."""
    icc = im.info.get("icc_profile")
    if not icc or im.mode not in ("RGB", "CMYK"):
        return im
    try:
        from PIL import ImageCms

        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if im.mode == "RGB" and "srgb" in ImageCms.getProfileDescription(src).lower().replace(" ", ""):
            return im
        return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except Exception:  # a broken profile: fall back to the plain conversion
        return im


def _high_bit_depth_to_8bit(im: Image.Image) -> np.ndarray:
    """Modes I;16*, I (16/32-bit integers) and F (float) -> uint8 gray, scaled, not clipped."""
    a = np.asarray(im)
    if im.mode == "F":
        a = a.astype(np.float64)
        a = np.nan_to_num(a)
        a = a * 255.0 if a.max(initial=0) <= 1.0 else a
        return np.clip(np.round(a), 0, 255).astype(np.uint8)
    a = a.astype(np.float64)
    if im.mode.startswith("I;16") or a.max(initial=0) > 255:
        a = a / 257.0 if a.max(initial=0) <= 65535 else a / (a.max() / 255.0)
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def to_rgb(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Any PIL image (already loaded and oriented) -> (H, W, 3) uint8 RGB.

    Transparency is composited over ``background``; 16-bit and float images are scaled to
    8 bits (not clipped); CMYK and wide-gamut RGB go through their ICC profile when they have one.
    """
    mode = im.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        gray = _high_bit_depth_to_8bit(im)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        base = Image.new("RGBA", im.size, background + (255,))
        return np.asarray(Image.alpha_composite(base, im).convert("RGB"))
    if mode in ("CMYK", "RGB"):
        im = _to_srgb(im)
    if mode in ("1", "L", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGB"):
        return np.asarray(im.convert("RGB"))
    try:
        return np.asarray(im.convert("RGB"))
    except (ValueError, OSError) as exc:
        raise ImageSkip("unsupported mode", f"{mode}: {exc}") from None


def open_image(path: str | Path, check_size=None) -> Image.Image:
    """Open, fully decode and EXIF-orient an image; :class:`ImageSkip` if it cannot be used.

    ``check_size(width, height)``, if given, is called with the size the file's header declares,
    before any pixel is decoded: an error it raises skips the image as ``too large`` (a 20 kB PNG
    may declare 13000 x 13000 pixels)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageSkip("empty file", "0 bytes")
        with warnings.catch_warnings():
            # above Pillow's limit (89 MP) it warns, above twice that it refuses: keep the former
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
            if check_size is not None:
                try:
                    check_size(*im.size)
                except (ConfigError, ValueError) as exc:
                    raise ImageSkip("too large", f"{im.width}x{im.height} declared by the file: {exc}") from None
            im.load()
    except ImageSkip:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageSkip("too large", str(exc)) from None
    except UnidentifiedImageError:
        raise ImageSkip("not an image", "not a format Pillow can read") from None
    except (PermissionError, IsADirectoryError, FileNotFoundError) as exc:
        raise ImageSkip("unreadable", str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated data, bad chunks, CRC errors
        raise ImageSkip("truncated or corrupt", str(exc)) from None
    except Exception as exc:  # a decoder bug must not stop an 85k-image job
        raise ImageSkip("truncated or corrupt", f"{type(exc).__name__}: {exc}") from None
    try:
        oriented = ImageOps.exif_transpose(im)
        if oriented is not None:
            oriented.info.setdefault("icc_profile", im.info.get("icc_profile"))
            im = oriented
    except Exception:  # a broken EXIF block: keep the pixels as stored
        pass
    return im


def read_rgb(path: str | Path, check_size=None) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, EXIF-oriented; :class:`ImageSkip` if unusable
    (``check_size``: see :func:`open_image`)."""
    im = open_image(path, check_size)
    try:
        return to_rgb(im)
    except ImageSkip:
        raise
    except Exception as exc:
        raise ImageSkip("unsupported mode", f"{im.mode}: {exc}") from None


def encode(array: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """Encode an (H, W, 3) uint8 array (png: lossless; jpeg/webp at ``quality``)."""
    buf = io.BytesIO()
    im = Image.fromarray(array)
    if fmt == "png":
        im.save(buf, format="PNG", compress_level=1)
    elif fmt in ("jpeg", "jpg"):
        im.save(buf, format="JPEG", quality=quality, subsampling=0)
    elif fmt == "webp":
        im.save(buf, format="WEBP", quality=quality)
    else:
        raise ValueError(f"unknown image format {fmt!r}; png, jpeg or webp")
    return buf.getvalue()


def to_tensor(image) -> torch.Tensor:  # noqa: C901
    """A path, PIL image, ``(H, W[, C])`` array (uint8, uint16 or float in [0, 1]) or ``(3, H, W)``
    tensor in [0, 1] -> float32 ``(3, H, W)`` in [0, 1]: the one image conversion of the package
    (training data, the pipeline, the commands). Grayscale, palette, RGBA (over white), CMYK and
    16-bit images are converted as ``varestorer prepare`` converts them."""
    if isinstance(image, (str, Path)):
        try:
            image = read_rgb(image)
        except ImageSkip as exc:
            raise ConfigError(f"cannot restore {image}: {exc}") from None
    if isinstance(image, Image.Image):
        image = to_rgb(image)
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        if a.ndim != 3 or a.shape[-1] not in (3, 4):
            raise ConfigError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4); got {a.shape}")
        full = 65535.0 if a.dtype == np.uint16 else 255.0 if a.dtype == np.uint8 else 1.0
        a = a.astype(np.float32) / full
        if a.shape[-1] == 4:  # straight alpha over white
            a = a[..., :3] * a[..., 3:] + (1 - a[..., 3:])
        image = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)
    if not isinstance(image, torch.Tensor):
        raise ConfigError(f"cannot restore a {type(image).__name__}: pass paths, PIL images, arrays or tensors")
    x = image.detach().float().cpu()
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ConfigError(f"an image tensor must be (3, H, W) or (1, H, W) in [0, 1]; got {tuple(image.shape)}")
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    if not torch.isfinite(x).all():
        raise ConfigError("the image holds NaN or infinite values")
    return x.clamp(0, 1).contiguous()


def to_uint8(x) -> np.ndarray:
    """``(3, H, W)`` in [0, 1] -> ``(H, W, 3)`` uint8."""
    return (x.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
