"""Real-world degradations: the Real-ESRGAN second-order pipeline and DiffBIR's first-order one,
batched on the training device.

    from varestorer.degradations import DegradationPipeline
    pipeline = DegradationPipeline.from_preset("realesrgan-x4", device="cuda")
    out = pipeline(hq, seeds)   # out.lq (B,3,H/4,W/4), out.lq_up (B,3,H,W), out.gt (B,3,H,W)

Presets are the YAML files in ``degradations/`` (``realesrgan-x4``, ``light``, ``heavy``; ``diffbir``:
the released VARestorer trainer's, a :class:`FirstOrderPipeline`).
"""

from .first_order import FirstOrderPipeline
from .pipeline import DegradationOutput, DegradationPipeline
from .presets import DegradationConfig, load_preset, preset_names

__all__ = [
    "DegradationConfig",
    "DegradationOutput",
    "DegradationPipeline",
    "FirstOrderPipeline",
    "load_preset",
    "preset_names",
]
