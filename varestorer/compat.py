"""The one compatibility shim of the toolkit.

basicsr 1.4.2 imports ``torchvision.transforms.functional_tensor``, a module that
torchvision removed in 0.17. Import basicsr through :func:`import_basicsr` (or call
:func:`install_basicsr_shim` first) and it finds the functions where they live now.
"""

from __future__ import annotations

import importlib
import sys
import types


def install_basicsr_shim() -> None:
    """Register ``torchvision.transforms.functional_tensor`` if torchvision lacks it."""
    name = "torchvision.transforms.functional_tensor"
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
        return
    except ModuleNotFoundError:
        pass
    from torchvision.transforms import functional as F

    shim = types.ModuleType(name)
    shim.rgb_to_grayscale = F.rgb_to_grayscale
    sys.modules[name] = shim


def import_basicsr(module: str = "basicsr"):
    """Import a basicsr module (e.g. ``"basicsr.data.degradations"``) with the shim in place."""
    install_basicsr_shim()
    return importlib.import_module(module)
