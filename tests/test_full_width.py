"""Infinity-2B's full width in CI: a transformer of the 2B preset's block shapes (width 2048, 16 heads
of 128, MLP 8192, T5 channels 2048) with 2 blocks, on real random weights, through what a user does
with the release: import (the release's layout, bfloat16) -> restore -> one training step of the
authors' trainer -> export -> reload. The tokenizer is the tiny preset's (64 px): the transformer's
shapes and dtypes are the 2B's, the run takes seconds."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from varestorer.distill.checkpointing import TRAINABLE_FILE
from varestorer.distill.recipe import load_recipe
from varestorer.distill.trainer import train
from varestorer.export import import_release, save_weights
from varestorer.inference.pipeline import VARestorerPipeline
from varestorer.presets import get_preset
from varestorer.tokenizer.loading import build_vae
from varestorer.transformer.loading import build_transformer
from varestorer.transformer.lora import DEFAULT_TARGETS

pytestmark = pytest.mark.slow

WIDE = {**get_preset("infinity-2b").transformer, "depth": 2, "num_block_chunks": 2, "codebook_dim": 16}


def release_checkpoint(path, rank=32):
    """The release's varestorer.pth layout (BInfinity + cloneofsimo LoRA keys) at the 2B width, bf16."""
    torch.manual_seed(0)
    model = build_transformer(dataclasses.replace(get_preset("tiny"), transformer=WIDE))
    state = {}
    for k, v in model.state_dict().items():
        module, _, kind = k.rpartition(".")
        if module.startswith("block_chunks.") and module.endswith(DEFAULT_TARGETS):
            state[f"{module}.linear.{kind}"] = v.bfloat16()
            if kind == "weight":
                state[f"{module}.lora_down.weight"] = (torch.randn(rank, v.shape[1]) * 0.01).bfloat16()
                state[f"{module}.lora_up.weight"] = (torch.randn(v.shape[0], rank) * 0.01).bfloat16()
        else:
            state[k] = v.bfloat16() if v.is_floating_point() and not k.endswith("zero_k_bias") else v
    torch.save(state, path)
    return model


def test_a_2b_wide_release_imports_restores_trains_a_step_exports_and_reloads(tmp_path):
    model = release_checkpoint(tmp_path / "varestorer.pth")
    assert (model.config.embed_dim, model.config.num_heads, model.config.text_channels) == (2048, 16, 2048)
    save_weights(build_vae("tiny").state_dict(), tmp_path / "vae.safetensors")
    imported = import_release(
        tmp_path / "varestorer.pth", tmp_path / "imported", vae=tmp_path / "vae.safetensors", preset="tiny", rank=32
    )
    image = torch.rand(3, 16, 16)
    pipe = VARestorerPipeline.from_pretrained(imported)
    before = pipe(image, prompt="", decode="argmax", output_type="pt").images[0]
    assert before.shape == (3, 64, 64) and torch.isfinite(before).all()

    recipe = load_recipe(
        "tiny-release-trainer",
        [
            f"model.init_from={imported}",
            "student.lora_rank=32",
            "student.lora_alpha=32",
            "train.max_steps=1",
            "train.global_batch_size=1",
            "train.validation_steps=1",
            "train.num_validation_images=1",
            f"train.output_dir={tmp_path / 'run'}",
            "train.report_to=none",
        ],
    )
    train(recipe)
    trained = load_file(str(tmp_path / "run" / "checkpoint-1" / TRAINABLE_FILE))
    assert trained and all(torch.isfinite(v).all() for v in trained.values())
    reloaded = VARestorerPipeline.from_pretrained(tmp_path / "run" / "final")
    assert reloaded.transformer.config.embed_dim == 2048
    after = reloaded(image, prompt="", decode="argmax", output_type="pt").images[0]
    again = reloaded(image, prompt="", decode="argmax", output_type="pt").images[0]
    assert torch.equal(after, again) and not torch.equal(after, before)  # the step moved the adapter
    lora = {k: v for k, v in reloaded.transformer.state_dict().items() if "lora_" in k}
    moved = [k for k in trained if "lora_" in k]
    assert moved and all(any(torch.equal(trained[k].float(), v.float()) for v in lora.values()) for k in moved[:4])
