"""Files from users are data, never code: no loader unpickles a crafted pickle, export / restore /
publish never read a checkpoint's pickles, and the Hub token is never written anywhere."""

import shutil
from pathlib import Path

import pytest
import torch

from varestorer.cli import main
from varestorer.distill.recipe import load_recipe
from varestorer.errors import VARestorerError

MARKER_TOKEN = "hf_MARKERtokenNEVERwrittenANYWHERE0000"


class Payload:
    """Unpickling it would create ``marker``: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def crafted(path: Path, marker: Path) -> Path:
    torch.save({"weight": torch.zeros(2), "payload": Payload(marker)}, path)
    return path


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step tiny training run with HF_TOKEN set to a marker, its export and a publish dry run."""
    from varestorer.distill.trainer import train

    root = tmp_path_factory.mktemp("untrusted")
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_TOKEN", MARKER_TOKEN)
    try:
        _reset_accelerate()
        train(
            load_recipe(
                "tiny",
                [
                    f"train.output_dir={root / 'run'}",
                    "train.report_to=tensorboard",
                    "train.max_steps=2",
                    "train.checkpointing_steps=1",
                    "train.validation_steps=1",
                ],
            )
        )
        assert main(["export", str(root / "run"), str(root / "exported"), "--samples", "1"]) == 0
        assert main(["publish", str(root / "exported"), "--repo-id", "someone/tiny", "--dry-run"]) == 0
    finally:
        mp.undo()
    return root


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin"])
def test_no_loader_unpickles_a_crafted_checkpoint(tmp_path, suffix):
    from varestorer.export.folder import load_encoder
    from varestorer.presets import get_preset
    from varestorer.tokenizer.loading import build_vae, load_vae
    from varestorer.transformer.loading import load_transformer

    marker = tmp_path / "pwned"
    path = crafted(tmp_path / f"evil{suffix}", marker)
    tiny = get_preset("tiny")
    vae = build_vae(tiny)
    for load in (
        lambda: load_vae(tiny, path),
        lambda: load_transformer(tiny, path),
        lambda: load_encoder(vae.encoder, path),
    ):
        with pytest.raises(VARestorerError, match="cannot read checkpoint") as refused:
            load()
        assert not marker.exists()
        said = str(refused.value)  # what it is, that it was not run, and never torch's unsafe advice
        assert "holds pickled code" in said and "nothing in it ran" in said and "weights_only=False" not in said


def test_a_t5_folder_with_a_crafted_pytorch_model_bin_is_refused_unread(tmp_path):
    from transformers import T5Config, T5EncoderModel

    from varestorer.transformer.text import TextEncoder

    folder = tmp_path / "t5"
    T5EncoderModel(T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)).save_pretrained(
        folder
    )
    for f in folder.glob("*.safetensors"):  # the weights only as the legacy pickle
        f.unlink()
    marker = tmp_path / "pwned"
    crafted(folder / "pytorch_model.bin", marker)
    with pytest.raises(Exception, match="[Ww]eights only load failed"):  # transformers: weights_only=True
        TextEncoder.from_pretrained(folder)
    assert not marker.exists()


def test_export_restore_and_publish_never_read_a_checkpoints_pickles(run, tmp_path):
    ckpt = tmp_path / "checkpoint-2"
    shutil.copytree(run / "run" / "checkpoint-2", ckpt)
    marker = tmp_path / "pwned"
    pickles = [p for p in ckpt.iterdir() if p.suffix in (".bin", ".pkl")]
    assert {p.name for p in pickles} >= {"optimizer.bin", "scheduler.bin", "random_states_0.pkl"}
    for p in pickles:
        crafted(p, marker)
    image = tmp_path / "lq.png"
    from PIL import Image

    Image.new("RGB", (16, 16), (90, 120, 60)).save(image)
    assert main(["export", str(ckpt), str(tmp_path / "out")]) == 0
    assert (
        main(
            [
                "restore",
                str(image),
                "-o",
                str(tmp_path / "restored"),
                "--model",
                str(ckpt / "export"),
                "--caption",
                "none",
            ]
        )
        == 0
    )
    assert main(["publish", str(ckpt), "--repo-id", "someone/tiny", "--dry-run"]) == 0
    assert not marker.exists()
    # and the export form itself holds no pickle at all
    assert not [p for p in (tmp_path / "out").rglob("*") if p.suffix in (".bin", ".pkl", ".pt", ".pth")]


def test_the_hub_token_is_never_written_by_training_export_or_publish(run):
    written = [p for p in run.rglob("*") if p.is_file()]
    assert len(written) > 20  # checkpoints, logs, export, samples
    leaked = [p for p in written if MARKER_TOKEN.encode() in p.read_bytes()]
    assert leaked == []
