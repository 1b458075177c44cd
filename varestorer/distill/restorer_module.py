"""Training the stage-1 restorer: the trainer's ``restorer`` mode.

``RestorerModel(batch)`` degrades HQ crops on the device with the recipe's Real-ESRGAN pipeline
(the same data loader, seeds and LQ as distillation), runs DiffBIR's SwinIR architecture on the LQ
image resized back to the HQ size, and returns ``l1 * |y - x| + mse * (y - x)^2`` (images in
[0, 1], as SwinIR takes them). The architecture is a preset of :data:`varestorer.restorer.ARCHITECTURES`
(``restorer.architecture``: the release's, the ``small`` preset's, ``tiny``); ``model.restorer``
starts from a checkpoint instead of random weights (DiffBIR's ``general_swinir_v1.ckpt`` loads).

Its export (``final/``) is ``restorer.safetensors`` (the config in its metadata) and
``restorer_config.json``: a distillation recipe names the folder as ``model.restorer``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from ..degradations import DegradationPipeline
from ..errors import ConfigError
from ..evaluation.metrics import psnr_db
from ..outputs import write_text
from ..restorer import ARCHITECTURES, RESTORER_FILE, SwinIR, save_restorer
from .heldout import heldout_restorer_psnr
from .model import recipe_restorer
from .module import TrainingModule

RESTORER_CONFIG_FILE = "restorer_config.json"


class RestorerModel(TrainingModule):
    """The stage-1 restorer under training, with the trainer's interface (see the module doc)."""

    validation_columns = ("lq", "restored", "hq")

    def __init__(self, recipe, swinir: SwinIR, degradation: DegradationPipeline):
        super().__init__()
        self.recipe = recipe
        self.mode = "restorer"
        self.swinir = swinir.train().requires_grad_(True)
        self.degradation = degradation

    @classmethod
    def from_recipe(cls, recipe, device="cpu") -> RestorerModel:
        r = recipe.restorer
        swinir = recipe_restorer(recipe)
        if swinir is None:
            swinir = SwinIR(**ARCHITECTURES[r.architecture])
        degradation = DegradationPipeline.from_preset(recipe.degradation.preset, scale=recipe.degradation.scale)
        return cls(recipe, swinir, degradation)

    def frozen_modules(self):
        return ()

    def enable_gradient_checkpointing(self) -> None:
        raise ConfigError("the restorer has no gradient checkpointing: set train.gradient_checkpointing=false")

    def compile_trained_network(self) -> None:
        """``torch.compile`` SwinIR in place (its parameter names stay)."""
        self.swinir.compile()

    # ------------------------------------------------------------------ the step
    def degrade(self, batch: dict) -> tuple[Tensor, Tensor]:
        hq = batch["pixel_values"].to(next(self.swinir.parameters()).device, torch.float32)
        out = self.degradation(hq, batch["seed"].tolist())
        return out.gt, out.lq_up

    def forward(self, batch: dict) -> dict[str, Tensor]:
        r = self.recipe.restorer
        hq, lq = self.degrade(batch)
        y = self.swinir(lq)
        l1 = (y - hq).abs().mean()
        mse = (y - hq).pow(2).mean()
        loss = r.l1 * l1 + r.mse * mse
        return {"loss": loss, "l1": l1.detach(), "mse": mse.detach(), "psnr": psnr_db(y.clamp(0, 1), hq).detach()}

    @torch.no_grad()
    def validation_images(self, batch: dict) -> dict[str, Tensor]:
        was = self.training
        self.eval()
        hq, lq = self.degrade(batch)
        restored = self.swinir(lq).clamp(0, 1)
        self.train(was)
        return {"lq": lq, "restored": restored, "hq": hq}

    @torch.no_grad()
    def validation_metrics(self) -> dict[str, float]:
        """``heldout_psnr`` (and the resized LQ's, ``heldout_lq_psnr``) on the held-out photos, degraded
        with fixed seeds, when training on the shipped collection (``data.dataset: photos``)."""
        if self.recipe.data.dataset != "photos":
            return {}
        was = self.training
        self.eval()
        scores = heldout_restorer_psnr(self.swinir, self.degradation, self.recipe.model.resolution)
        self.train(was)
        return scores

    # ------------------------------------------------------------------ saving
    def export_state(self) -> dict[str, Tensor]:
        return {f"swinir.{k}": v for k, v in self.swinir.state_dict(keep_vars=True).items()}

    def save_export(self, out: Path, state: dict[str, Tensor] | None = None) -> None:
        """``restorer.safetensors`` and ``restorer_config.json`` (architecture, recipe), written
        from ``state`` (:meth:`export_state`, gathered when training is sharded)."""
        state = self.export_state() if state is None else state
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_restorer(self.swinir, out / RESTORER_FILE, {k[len("swinir.") :]: v for k, v in state.items()})
        config = {
            "format": "varestorer-restorer",
            "format_version": 1,
            "architecture": {k: v for k, v in self.swinir.config.items() if not k.startswith("_")},
            "resolution": self.recipe.model.resolution,
            "recipe": self.recipe.to_dict(),
        }
        write_text(out / RESTORER_CONFIG_FILE, json.dumps(config, indent=2, default=list))
