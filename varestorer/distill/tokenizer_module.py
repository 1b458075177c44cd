"""Training the BSQ-VAE itself: the trainer's ``tokenizer`` mode.

``TokenizerModel(batch)`` encodes HQ crops, quantizes the latent over the resolution's scale
schedule (the multi-scale residual BSQ the transformer reads), decodes the accumulated codes and
returns, with the weights of the recipe's ``tokenizer`` section:

- reconstruction: ``l1 * |x - x_hat|`` + ``mse * (x - x_hat)^2`` + ``lpips * LPIPS(x, x_hat)``
  (images in [-1, 1]; LPIPS only where its pretrained weights are present, as for distillation);
- ``commitment * mean_k ||z_k - sg(q_k)||^2``: each scale's quantizer input ``z_k`` (the residual,
  resized and L2-normalised) pulled towards its code ``q_k = +-1/sqrt(d)`` (BSQ; Infinity's
  quantizer weighs it 0.25);
- ``entropy * mean_k (H_sample_k - gamma * H_codebook_k)``: BSQ's factorised entropy penalty
  (Infinity's ``soft_entropy_loss``, weight 0.1). Bit ``i`` of a token is 1 with probability
  ``sigmoid(4 * inv_temperature * z_i / sqrt(d))`` (the softmax over the two codes of the
  negative squared distance); ``H_sample`` is the mean over tokens of the summed per-bit
  entropies (low: confident bits), ``H_codebook`` the summed entropies of the per-bit mean
  probabilities (high: every code used).

The gradient reaches the encoder through the quantizer's straight-through codes at every scale.
Logged besides: the batch's reconstruction PSNR (dB, images in [0, 1]).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ConfigError
from ..evaluation.metrics import build_lpips, psnr_db
from ..export import write_tokenizer_export
from ..presets import get_preset
from ..tokenizer.loading import build_vae, load_vae
from .heldout import tokenizer_quality
from .module import TrainingModule


def _entropy(p: Tensor) -> Tensor:
    """Entropy (nats) of Bernoulli(p), elementwise."""
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def bsq_entropy(z: Tensor, inv_temperature: float = 100.0, gamma: float = 1.0) -> Tensor:
    """BSQ's entropy penalty of normalised quantizer inputs ``z`` ``(B, d, h, w)`` (see the module doc)."""
    d = z.shape[1]
    p = torch.sigmoid(4 * inv_temperature * z.float() / math.sqrt(d)).permute(0, 2, 3, 1).reshape(-1, d)
    per_sample = _entropy(p).sum(-1).mean()
    codebook = _entropy(p.mean(0)).sum()
    return per_sample - gamma * codebook


def commitment(z: Tensor, codes: Tensor) -> Tensor:
    """``mean ||z - sg(q)||^2`` over tokens (summed over ``d``)."""
    return (z.float() - codes.detach().float()).pow(2).sum(1).mean()


class TokenizerModel(TrainingModule):
    """The BSQ-VAE under training, with the trainer's interface (see the module doc)."""

    validation_columns = ("hq", "reconstruction")

    def __init__(self, recipe, vae, lpips=None):
        super().__init__()
        self.recipe = recipe
        self.mode = "tokenizer"
        self.schedule = vae.schedule(recipe.model.resolution)
        self.vae = vae.train().requires_grad_(False)
        t = recipe.tokenizer
        self.vae.encoder.requires_grad_(t.train_encoder)
        self.vae.decoder.requires_grad_(t.train_decoder)
        self.lpips = lpips

    @classmethod
    def from_recipe(cls, recipe, device="cpu") -> TokenizerModel:

        m = recipe.model
        preset = get_preset(m.preset)
        vae = build_vae(preset) if m.random_init and m.vae is None else load_vae(preset, m.vae)
        lpips = None
        if recipe.tokenizer.lpips > 0:
            lpips = build_lpips(recipe.loss.lpips_net, pretrained=recipe.loss.lpips_pretrained)
        return cls(recipe, vae, lpips)

    def frozen_modules(self):
        return (self.lpips,)  # frozen, and it has dropout

    # ------------------------------------------------------------------ the trainer's interface
    def enable_gradient_checkpointing(self) -> None:

        raise ConfigError("the tokenizer has no gradient checkpointing: set train.gradient_checkpointing=false")

    def compile_trained_network(self) -> None:
        """``torch.compile`` the VAE in place: its parameter names (checkpoints, export) stay."""
        self.vae.compile()

    # ------------------------------------------------------------------ the step
    def reconstruct(self, x: Tensor):
        tokens = self.vae.quantizer(self.vae.encode_latent(x), self.schedule)
        return self.vae.decoder(tokens.quantized), tokens

    def forward(self, batch: dict) -> dict[str, Tensor]:
        t = self.recipe.tokenizer
        x = batch["pixel_values"].to(next(self.vae.parameters()).device, torch.float32) * 2 - 1
        x_hat, tokens = self.reconstruct(x)
        zero = torch.zeros((), device=x.device)
        l1 = (x_hat - x).abs().mean()
        mse = (x_hat - x).pow(2).mean()
        lp = self.lpips(x_hat.clamp(-1, 1), x).mean() if self.lpips is not None else zero
        commit = torch.stack([commitment(z, c) for z, c in zip(tokens.inputs, tokens.codes)]).mean()
        ent = torch.stack([bsq_entropy(z, t.inv_temperature, t.codebook_entropy_weight) for z in tokens.inputs]).mean()
        loss = t.l1 * l1 + t.mse * mse + t.lpips * lp + t.commitment * commit + t.entropy * ent
        return {
            "loss": loss,
            "l1": l1.detach(),
            "mse": mse.detach(),
            "lpips": lp.detach(),
            "commitment": commit.detach(),
            "entropy": ent.detach(),
            "psnr": psnr_db(x_hat.clamp(-1, 1), x).detach(),
        }

    @torch.no_grad()
    def validation_images(self, batch: dict) -> dict[str, Tensor]:
        was = self.training
        self.eval()
        x = batch["pixel_values"].to(next(self.vae.parameters()).device, torch.float32) * 2 - 1
        x_hat, _ = self.reconstruct(x)
        self.train(was)
        return {"hq": (x + 1) / 2, "reconstruction": (x_hat.clamp(-1, 1) + 1) / 2}

    @torch.no_grad()
    def validation_metrics(self) -> dict[str, float]:
        """``heldout_psnr``: reconstruction PSNR (dB) on the held-out photos, when training on the
        shipped collection (``data.dataset: photos``; other datasets have no held-out split here)."""
        if self.recipe.data.dataset != "photos":
            return {}

        was = self.training
        self.eval()
        psnr = tokenizer_quality(self.vae, self.recipe.model.resolution)["psnr_db"]
        self.train(was)
        return {"heldout_psnr": psnr}

    # ------------------------------------------------------------------ saving
    def export_state(self) -> dict[str, Tensor]:
        """The whole VAE (its frozen parts too): what the tokenizer's export is written from."""
        return {f"vae.{k}": v for k, v in self.vae.state_dict(keep_vars=True).items()}  # ZeRO-3: see full_state

    def save_export(self, out: Path, state: dict[str, Tensor] | None = None) -> None:
        """The tokenizer's export form (:func:`varestorer.export.write_tokenizer_export`), written
        from ``state`` (:meth:`export_state`, gathered when training is sharded)."""
        state = self.export_state() if state is None else state
        vae_state = {k[len("vae.") :]: v for k, v in state.items() if k.startswith("vae.")}
        write_tokenizer_export(out, vae=self.vae, recipe=self.recipe, schedule=self.schedule, vae_state=vae_state)
