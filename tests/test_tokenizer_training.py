"""Training the BSQ-VAE (the trainer's tokenizer mode) on the tiny preset."""

import json
import math

import torch

from varestorer.distill.recipe import load_recipe
from varestorer.distill.tokenizer_module import TokenizerModel, bsq_entropy, commitment


def test_the_entropy_penalty_rewards_confident_bits_and_using_every_code():
    d = 4
    same = torch.full((2, d, 3, 3), 0.5)  # every token the same code, confidently
    assert abs(bsq_entropy(same).item()) < 1e-3  # nothing uncertain, but only one code used
    mixed = torch.cat([same, -same])  # half the tokens one code, half its opposite
    torch.testing.assert_close(bsq_entropy(mixed), torch.tensor(-d * math.log(2)), atol=1e-3, rtol=0)
    unsure = torch.zeros(2, d, 3, 3)  # every bit a coin flip: H_sample = H_codebook = d ln 2
    torch.testing.assert_close(bsq_entropy(unsure), torch.tensor(0.0), atol=1e-5, rtol=0)
    assert bsq_entropy(unsure, gamma=0.0).item() > bsq_entropy(mixed, gamma=0.0).item()  # sample term alone
    q = torch.sign(torch.randn(2, d, 3, 3)) / d**0.5
    assert commitment(q, q).item() == 0 and commitment(q * 0.5, q).item() > 0


def test_tokenizer_mode_trains_the_vae_and_exports_what_load_vae_reads(tmp_path):
    from varestorer.distill.trainer import train
    from varestorer.tokenizer.loading import load_vae

    out = tmp_path / "run"
    recipe = load_recipe(
        "tiny",
        [
            f"train.output_dir={out}",
            "train.report_to=none",
            "mode=tokenizer",
            "tokenizer.lpips=0",
            "train.max_steps=12",
            "train.checkpointing_steps=12",
            "train.validation_steps=12",
            "optim.lr=2e-3",
            "data.random_crop=false",
        ],
    )
    logs = train(recipe)
    history = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    assert {"l1", "commitment", "entropy", "psnr"} <= set(history[0])
    first, last = history[0], history[-1]
    assert last["l1"] < 0.9 * first["l1"] and last["psnr"] > first["psnr"], (first, last)
    assert logs["psnr"] == last["psnr"]
    assert (out / "validation" / "step-000012.png").is_file()
    vae = load_vae("tiny", out / "final" / "vae.safetensors")
    config = json.loads((out / "final" / "tokenizer_config.json").read_text())
    assert config["base_preset"] == "tiny" and config["scale_schedule"][-1] == [8, 8]
    model = TokenizerModel.from_recipe(recipe)
    model.vae.load_state_dict(vae.state_dict())
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model.reconstruct(x)[0].clamp(-1, 1), vae(x))  # the same tokenizer


def test_ln_before_quant_puts_every_latent_at_unit_norm_so_each_scale_quantizes_what_is_left():
    from varestorer.tokenizer import BSQVAE

    vae = BSQVAE(ch=32, ch_mult=(1, 2), num_res_blocks=1, codebook_dim=16, norm_groups=8, ln_before_quant=True)
    assert {"quantizer.layernorm.weight", "quantizer.layernorm.bias"} <= set(vae.state_dict())
    assert not any("layernorm" in k for k in BSQVAE(ch=32, ch_mult=(1, 2), codebook_dim=16).state_dict())
    latent = torch.randn(2, 16, 4, 4) * 12  # the norm a VAE trained without it drifted to
    normed = vae.quantizer.layernorm(latent)
    torch.testing.assert_close(normed.norm(dim=1), torch.ones(2, 4, 4), atol=1e-4, rtol=0)
    schedule = [(1, 1), (2, 2), (4, 4)]
    with_ln = vae.quantizer(latent, schedule)
    vae.quantizer.layernorm = None
    without = vae.quantizer(latent, schedule)

    # without it, the finest scale repeats the coarser scales' signs far more often
    def agreement(tokens):
        coarse = torch.nn.functional.interpolate(tokens.codes[1], size=(4, 4), mode="nearest")
        return (coarse.sign() == tokens.codes[2].sign()).float().mean().item()

    assert agreement(without) > agreement(with_ln) + 0.1
