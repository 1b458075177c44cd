"""``--model EvanEternal/VARestorer``: the release's files fetched from their Hub repos, imported once
into the cache keyed by the files' hashes, reused (offline too); a cut download or an interrupted
import leaves nothing a later run would take for complete. The Hub is a local stand-in."""

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from test_release import RANK, release  # noqa: F401  (the release's files in their layouts, tiny)

from varestorer.errors import CheckpointError
from varestorer.export import export_dir, release_hub
from varestorer.export.release_hub import RELEASE_FILES, release_export
from varestorer.inference.pipeline import VARestorerPipeline


class StandInHub:
    """``hf_hub_download`` over a local folder: each file copied into a blob cache under its
    sha256 and returned as a link named as the file, as the Hub client stores it; ``offline`` serves the cache only; ``cut`` fails the next
    download of that file half-way (nothing lands in the cache)."""

    def __init__(self, root: Path, files: dict[tuple[str, str], Path]):
        self.root, self.files, self.offline, self.cut, self.calls = root, files, False, set(), []

    def __call__(self, repo: str, filename: str, revision=None) -> Path:
        self.calls.append((repo, filename))
        src = self.files.get((repo, filename))
        if src is None:
            raise LocalEntryNotFoundError(f"{repo}/{filename} not found")
        blob = self.root / "blobs" / hashlib.sha256(src.read_bytes()).hexdigest()
        if not blob.exists():
            if self.offline:
                raise LocalEntryNotFoundError("offline and not in the cache (HF_HUB_OFFLINE=1)")
            if (repo, filename) in self.cut:
                self.cut.discard((repo, filename))
                raise ConnectionError("the connection was cut at 48%")
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, blob.with_suffix(".incomplete"))
            blob.with_suffix(".incomplete").rename(blob)
        link = self.root / "snapshots" / repo / filename  # the Hub client's: a link named as the file
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(blob)
        return link


@pytest.fixture
def hub(tmp_path, monkeypatch, release):  # noqa: F811
    _, root, _ = release
    from safetensors.torch import load_file

    torch.save({"vae": load_file(root / "vae.safetensors")}, tmp_path / "vae.pth")  # the official layout
    files = {
        RELEASE_FILES["checkpoint"]: root / "varestorer.pth",
        RELEASE_FILES["vae"]: tmp_path / "vae.pth",
        RELEASE_FILES["restorer"]: root / "swinir.ckpt",
    }
    stand_in = StandInHub(tmp_path / "hub", files)
    monkeypatch.setattr(release_hub, "_download", stand_in)
    monkeypatch.setenv("VARESTORER_CACHE", str(tmp_path / "cache"))
    return stand_in


def tiny_release(revision=None):
    return release_export(RELEASE_FILES["checkpoint"][0], revision, preset="tiny", rank=RANK)


def test_the_release_is_downloaded_from_its_three_repos_imported_once_and_reused_offline(hub, monkeypatch, release):  # noqa: F811
    _, _, imported = release
    calls = []
    real = release_hub.import_release
    monkeypatch.setattr(release_hub, "import_release", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = tiny_release()
    assert sorted(hub.calls) == sorted(RELEASE_FILES.values()) and len(calls) == 1
    assert first.parent == Path(hub.root).parent / "cache" / "imports"
    again = tiny_release()
    assert again == first and len(calls) == 1  # the cached import
    hub.offline = True
    assert tiny_release() == first and len(calls) == 1
    # the same model as importing the files by hand
    x = torch.rand(3, 24, 20)
    ours = VARestorerPipeline.from_pretrained(first)(
        x, prompt="", output_type="pt", generator=torch.Generator().manual_seed(0)
    )
    theirs = VARestorerPipeline.from_pretrained(imported)(
        x, prompt="", output_type="pt", generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(ours.images[0], theirs.images[0])


def test_a_cut_download_or_an_interrupted_import_leaves_nothing_half_done(hub, monkeypatch):
    hub.cut.add(RELEASE_FILES["checkpoint"])
    with pytest.raises(CheckpointError, match="the released VARestorer needs weights/varestorer.pth"):
        tiny_release()
    imports = Path(hub.root).parent / "cache" / "imports"
    assert not imports.exists() or not any(imports.iterdir())
    real = release_hub.import_release

    def interrupted(checkpoint, out, **kw):
        def boom(*a, **k):
            raise KeyboardInterrupt

        with pytest.MonkeyPatch.context() as mp:  # Ctrl-C while the import writes its last file
            mp.setattr("varestorer.export.release.save_restorer", boom)
            return real(checkpoint, out, **kw)

    monkeypatch.setattr(release_hub, "import_release", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny_release()
    assert not any(p.name.startswith("tiny-") for p in imports.iterdir())  # no folder under the final name
    monkeypatch.setattr(release_hub, "import_release", real)
    assert (tiny_release() / "varestorer_config.json").is_file()


def test_offline_with_nothing_cached_says_where_to_get_the_files(hub):
    hub.offline = True
    with pytest.raises(CheckpointError) as e:
        tiny_release()
    assert "huggingface-cli download EvanEternal/VARestorer weights/varestorer.pth" in str(e.value)
    assert "varestorer import-release" in str(e.value)


def test_the_model_option_takes_the_release_repo_id(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr("varestorer.export.loading.release_export", lambda repo, rev: seen.append(repo) or tmp_path)
    assert export_dir("EvanEternal/VARestorer") == tmp_path and seen == ["EvanEternal/VARestorer"]
