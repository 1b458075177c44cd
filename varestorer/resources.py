"""The data that ships with the package: ``recipes/``, ``degradations/`` (presets) and
``model_cards/`` (templates), found with :mod:`importlib.resources` as package data.

In the repository they are the top-level folders (what a user of a checkout edits and passes by
path); ``varestorer/shipped/`` links to them, so a wheel carries them inside the package and they
are found the same way however it was installed (``pip install``, ``--user``, a virtual
environment, ``-e .``).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from .errors import ConfigError

_KINDS = ("recipes", "degradations", "model_cards")


def resource_dir(kind: str) -> Path:
    """The shipped folder of ``kind`` (a real folder: the package is installed unzipped)."""
    if kind not in _KINDS:
        raise ValueError(f"unknown resource kind {kind!r}; one of {_KINDS}")
    folder = Path(str(files("varestorer").joinpath("shipped", kind)))
    if not folder.is_dir():
        raise ConfigError(
            f"the {kind}/ folder of varestorer is not installed ({folder} is missing); reinstall the "
            f"package (from a checkout: pip install -e .)"
        )
    return folder


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
    raise ConfigError(
        f"no {kind[:-1].replace('_', ' ')} {name_or_path!r}: pass a file path or one of {', '.join(names)}"
    )
