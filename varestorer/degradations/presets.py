"""Degradation presets: the YAML files in ``degradations/``, read into a validated
:class:`DegradationConfig`.

Every key of a preset is a field of :class:`DegradationConfig` (the defaults are the published
Real-ESRGAN x4 values, so a preset may give only what it changes). ``pipeline`` picks the model:
``realesrgan`` (Real-ESRGAN's second-order pipeline, :mod:`.pipeline`) or ``first_order`` (the
one-pass blur -> downsample -> noise -> JPEG -> upsample of DiffBIR/CodeFormer, which the released
VARestorer trainer uses; :mod:`.first_order`: it reads ``kernel_list``, ``kernel_prob``,
``blur_sigma``, ``blur_kernel_size``, ``downsample_range``, ``noise_range``, ``jpeg_range`` and
``lq_up_mode``). An unknown key, a wrong type,
a range whose low end is above its high end or probabilities that do not sum to one are
:class:`~varestorer.errors.ConfigError` s whose message names the file, the key and what is valid.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..resources import find_resource, resource_dir
from ..safe_yaml import read_text, safe_load

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
UP_MODES = ("bicubic", "bilinear", "area", "nearest")
PIPELINES = ("realesrgan", "first_order")
_ALL_KERNELS = ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"]
_KERNEL_PROB = [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]


@dataclass(frozen=True)
class DegradationConfig:
    """The parameters of the Real-ESRGAN second-order pipeline (names as in Real-ESRGAN's options)."""

    description: str = ""
    # realesrgan: the second-order pipeline; first_order: DiffBIR's one pass (module docstring)
    pipeline: str = "realesrgan"
    # the final downscale: LQ is (H/scale, W/scale). first_order draws its factor from
    # downsample_range instead and gives the LQ at the HQ size; scale is then the factor the
    # exported model restores at by default
    scale: int = 4
    # unsharp masking of the GT
    usm_sharpen_gt: bool = True
    usm_weight: float = 0.5
    usm_radius: int = 50
    usm_threshold: float = 10.0
    # kernels
    kernel_size_range: tuple = (7, 21)  # odd sizes in [lo, hi]; every kernel is padded to hi
    resize_modes: tuple = RESIZE_MODES
    # first degradation
    kernel_list: tuple = tuple(_ALL_KERNELS)
    kernel_prob: tuple = tuple(_KERNEL_PROB)
    sinc_prob: float = 0.1
    blur_sigma: tuple = (0.2, 3.0)
    betag_range: tuple = (0.5, 4.0)
    betap_range: tuple = (1.0, 2.0)
    resize_prob: tuple = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple = (1.0, 30.0)
    poisson_scale_range: tuple = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple = (30.0, 95.0)
    # second degradation
    second_blur_prob: float = 0.8
    kernel_list2: tuple = tuple(_ALL_KERNELS)
    kernel_prob2: tuple = tuple(_KERNEL_PROB)
    sinc_prob2: float = 0.1
    blur_sigma2: tuple = (0.2, 1.5)
    betag_range2: tuple = (0.5, 4.0)
    betap_range2: tuple = (1.0, 2.0)
    resize_prob2: tuple = (0.3, 0.4, 0.3)
    resize_range2: tuple = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple = (1.0, 25.0)
    poisson_scale_range2: tuple = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: tuple = (30.0, 95.0)
    # final step
    final_sinc_prob: float = 0.8
    lq_up_mode: str = "bicubic"  # LQ resized back to the HQ size with this mode (the student's input)
    # first_order only: the blur kernel's size (DiffBIR: 41) and the downsampling factor's range
    blur_kernel_size: int = 41
    downsample_range: tuple = (1.0, 12.0)
    name: str = field(default="", compare=False)  # the preset's name (file stem), not a YAML key

    @property
    def max_kernel_size(self) -> int:
        return int(self.kernel_size_range[1])

    def replace(self, **changes) -> DegradationConfig:
        return validate(dict(self.to_dict(), **changes), source=self.name or "preset", name=self.name)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "name"}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


VALID_KEYS = tuple(f.name for f in dataclasses.fields(DegradationConfig) if f.name != "name")

_PROBS = (
    "sinc_prob",
    "gaussian_noise_prob",
    "gray_noise_prob",
    "second_blur_prob",
    "sinc_prob2",
    "gaussian_noise_prob2",
    "gray_noise_prob2",
    "final_sinc_prob",
)
_RANGES = (
    "blur_sigma",
    "betag_range",
    "betap_range",
    "resize_range",
    "noise_range",
    "poisson_scale_range",
    "jpeg_range",
    "blur_sigma2",
    "betag_range2",
    "betap_range2",
    "resize_range2",
    "noise_range2",
    "poisson_scale_range2",
    "jpeg_range2",
    "downsample_range",
)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate(data: dict, source: str = "preset", name: str = "") -> DegradationConfig:  # noqa: C901
    """Check every key and value of a preset mapping and build its :class:`DegradationConfig`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a degradation preset is a mapping of keys to values, got {type(data).__name__}")
    unknown = sorted(set(data) - set(VALID_KEYS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(VALID_KEYS)}"
        )

    def err(key, msg):
        return ConfigError(f"{source}: {key}: {msg} (got {data[key]!r})")

    out: dict = {}
    for key, value in data.items():
        if key in _PROBS:
            if not _num(value) or not 0 <= value <= 1:
                raise err(key, "a probability between 0 and 1")
            out[key] = float(value)
        elif key in _RANGES:
            if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(_num(v) for v in value):
                raise err(key, "a range [low, high] of two numbers")
            lo, hi = float(value[0]), float(value[1])
            if lo > hi or lo < 0:
                raise err(key, "low must be >= 0 and <= high")
            if key.startswith("jpeg_range") and not (1 <= lo and hi <= 100):
                raise err(key, "JPEG qualities lie in [1, 100]")
            if key.startswith("resize_range") and not (0 < lo <= 1 <= hi):
                raise err(key, "resize factors [down, up] with 0 < down <= 1 <= up")
            if key == "downsample_range" and lo < 1:
                raise err(key, "downsampling factors [low, high] with 1 <= low <= high")
            out[key] = (lo, hi)
        elif key in ("resize_prob", "resize_prob2"):
            if (
                not isinstance(value, (list, tuple))
                or len(value) != 3
                or not all(_num(v) and v >= 0 for v in value)
                or abs(sum(value) - 1) > 1e-6
            ):
                raise err(key, "three probabilities [up, down, keep] summing to 1")
            out[key] = tuple(float(v) for v in value)
        elif key in ("kernel_list", "kernel_list2"):
            if not isinstance(value, (list, tuple)) or not value or any(v not in KERNEL_TYPES for v in value):
                raise err(key, f"a non-empty list of kernel types from {', '.join(KERNEL_TYPES)}")
            out[key] = tuple(value)
        elif key in ("kernel_prob", "kernel_prob2"):
            if (
                not isinstance(value, (list, tuple))
                or not value
                or not all(_num(v) and v >= 0 for v in value)
                or abs(sum(value) - 1) > 1e-6
            ):
                raise err(key, "a list of non-negative probabilities summing to 1")
            out[key] = tuple(float(v) for v in value)
        elif key == "kernel_size_range":
            if (
                not isinstance(value, (list, tuple))
                or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v % 2 == 1 and v >= 3 for v in value)
                or value[0] > value[1]
            ):
                raise err(key, "[low, high], two odd integers >= 3 with low <= high")
            out[key] = (int(value[0]), int(value[1]))
        elif key == "resize_modes":
            if not isinstance(value, (list, tuple)) or not value or any(v not in RESIZE_MODES for v in value):
                raise err(key, f"a non-empty list from {', '.join(RESIZE_MODES)}")
            out[key] = tuple(value)
        elif key == "pipeline":
            if value not in PIPELINES:
                raise err(key, f"one of {', '.join(PIPELINES)}")
            out[key] = value
        elif key == "blur_kernel_size":
            if not isinstance(value, int) or isinstance(value, bool) or value < 3 or value % 2 != 1:
                raise err(key, "an odd integer >= 3")
            out[key] = value
        elif key == "lq_up_mode":
            if value not in UP_MODES:
                raise err(key, f"one of {', '.join(UP_MODES)}")
            out[key] = value
        elif key == "scale":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise err(key, "a positive integer")
            out[key] = value
        elif key == "usm_sharpen_gt":
            if not isinstance(value, bool):
                raise err(key, "true or false")
            out[key] = value
        elif key == "usm_radius":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise err(key, "a positive integer")
            out[key] = value
        elif key in ("usm_weight", "usm_threshold"):
            if not _num(value) or value < 0:
                raise err(key, "a non-negative number")
            out[key] = float(value)
        elif key == "description":
            if not isinstance(value, str):
                raise err(key, "a string")
            out[key] = value
    cfg = DegradationConfig(**out, name=name)
    for a, b in (("kernel_list", "kernel_prob"), ("kernel_list2", "kernel_prob2")):
        if len(getattr(cfg, a)) != len(getattr(cfg, b)):
            raise ConfigError(
                f"{source}: {a} has {len(getattr(cfg, a))} kernel types but {b} has "
                f"{len(getattr(cfg, b))} probabilities; give one probability per type"
            )
    return cfg


def load_preset(name_or_path: str | Path | DegradationConfig) -> DegradationConfig:
    """A preset by name (``realesrgan-x4``, ``light``, ``heavy``: the files in ``degradations/``)
    or by path to a YAML file."""
    if isinstance(name_or_path, DegradationConfig):
        return name_or_path
    import yaml

    path = find_resource("degradations", str(name_or_path))
    try:
        data = safe_load(read_text(path, "degradation preset"), str(path), "a degradation preset") or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return validate(data, source=str(path), name=path.stem)


def preset_names() -> list[str]:

    return sorted(p.stem for p in resource_dir("degradations").glob("*.yaml"))
