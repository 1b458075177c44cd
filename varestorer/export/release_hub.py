"""The released VARestorer straight from the Hub: ``--model EvanEternal/VARestorer``.

The authors' Hub repo holds their checkpoint (``weights/varestorer.pth``), not an export folder.
:func:`release_export` downloads what the release restores with, each from its own repo
(``huggingface_hub.hf_hub_download``: its progress bars, cache, token and ``HF_HUB_OFFLINE`` apply)

- the checkpoint: ``EvanEternal/VARestorer`` ``weights/varestorer.pth``;
- the public VAE: ``FoundationVision/Infinity`` ``infinity_vae_d32reg.pth``;
- the stage-1 restorer: ``lxq007/DiffBIR`` ``general_swinir_v1.ckpt``;

(flan-t5-xl comes from the Hub when the model loads, as for any export), imports them once with
:func:`~.release.import_release` into ``$VARESTORER_CACHE/imports/<key>`` (default
``~/.cache/varestorer``), the key made of the three files' content hashes (the names of their blobs
in the Hub cache), and reuses that import afterwards, offline too. Downloads are the Hub client's
(a cut one is resumed, never used half-written) and the import is written beside its folder and
swapped in, so an interrupted first run leaves nothing that a second run would take for complete.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..checkpoints import hub_failure
from ..errors import CheckpointError
from .config import CONFIG_FILE
from .release import RELEASE_RANK, RELEASE_WEIGHTS, import_release

#: The files the release restores with: role -> (Hub repo, file in it).
RELEASE_FILES: dict[str, tuple[str, str]] = {
    "checkpoint": (RELEASE_WEIGHTS, "weights/varestorer.pth"),
    "vae": ("FoundationVision/Infinity", "infinity_vae_d32reg.pth"),
    "restorer": ("lxq007/DiffBIR", "general_swinir_v1.ckpt"),
}


def cache_root() -> Path:
    """Where imports are kept: ``$VARESTORER_CACHE`` or ``~/.cache/varestorer``."""
    return Path(os.environ.get("VARESTORER_CACHE", Path.home() / ".cache" / "varestorer")).expanduser()


def _download(repo: str, filename: str, revision: str | None = None) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo, filename, revision=revision))


def is_release_repo(repo_id: str, revision: str | None = None) -> bool:
    """Whether ``repo_id`` is the authors' release (their checkpoint, no export config): the
    known repo, or any repo whose ``weights/varestorer.pth`` the Hub (or its cache) has."""
    if repo_id == RELEASE_WEIGHTS:
        return True
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, RELEASE_FILES["checkpoint"][1], revision=revision), str)


def import_key(files: dict[str, Path]) -> str:
    """The import's cache key: a hash of the files' content hashes (their Hub blob names, which are
    the files' sha256 for large files), in role order."""
    h = hashlib.sha256()
    for role in sorted(files):
        h.update(f"{role}={Path(files[role]).resolve().name}\n".encode())
    return h.hexdigest()[:20]


def release_export(
    repo_id: str = RELEASE_WEIGHTS,
    revision: str | None = None,
    *,
    preset: str = "infinity-2b",
    rank: int | None = RELEASE_RANK,
) -> Path:
    """The export folder of the release in ``repo_id``: downloaded and imported the first time,
    the cached import afterwards (module docstring). ``preset`` and ``rank`` as
    :func:`~.release.import_release` takes them (the release's: Infinity-2B, rank 32)."""
    files = {}
    for role, (repo, filename) in RELEASE_FILES.items():
        repo = repo_id if role == "checkpoint" else repo
        try:
            files[role] = _download(repo, filename, revision if role == "checkpoint" else None)
        except Exception as exc:
            raise CheckpointError(
                f"the released VARestorer needs {filename} from the Hub repo {repo}: {hub_failure(exc)}. "
                f"Where there is network access: huggingface-cli download {repo} {filename}; or download the "
                f"files yourself and run varestorer import-release varestorer.pth -o DIR --vae VAE --restorer "
                f"SWINIR, then pass --model DIR"
            ) from exc
    out = cache_root() / "imports" / f"{preset}-{import_key(files)}"
    if not (out / CONFIG_FILE).is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        import_release(
            files["checkpoint"],
            out,
            vae=files["vae"],
            restorer=files["restorer"],
            preset=preset,
            rank=rank,
            overwrite=True,
        )
    return out
