"""The data folders that ship beside the package: ``recipes/``, ``degradations/``, ``model_cards/``.

In a source checkout (``pip install -e .``) they are read from the repository root; an
installed wheel carries them under ``<prefix>/share/varestorer/`` (``data_files`` in setup.cfg).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import ConfigError

_KINDS = ("recipes", "degradations", "model_cards")


def resource_dir(kind: str) -> Path:
    if kind not in _KINDS:
        raise ValueError(f"unknown resource kind {kind!r}; one of {_KINDS}")
    for root in (Path(__file__).resolve().parent.parent, Path(sys.prefix) / "share" / "varestorer"):
        if (root / kind).is_dir():
            return root / kind
    raise ConfigError(f"the {kind}/ folder of varestorer is not installed; reinstall the package")


def find_resource(kind: str, name_or_path: str, suffix: str = ".yaml") -> Path:
    """A file given by path, or by name from the shipped ``kind`` folder (error lists the names)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    folder = resource_dir(kind)
    candidate = folder / (name_or_path if name_or_path.endswith(suffix) else name_or_path + suffix)
    if candidate.is_file():
        return candidate
    names = sorted(p.stem for p in folder.glob(f"*{suffix}"))
    raise ConfigError(f"no {kind[:-1].replace('_', ' ')} {name_or_path!r}: pass a file path or one of {', '.join(names)}")
