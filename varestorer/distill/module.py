"""What the trainer needs of a training module, once for all modes.

:class:`TrainingModule` is the base of :class:`~varestorer.distill.model.VARestorerModel`
(distill, teacher, varsr) and :class:`~varestorer.distill.tokenizer_module.TokenizerModel`: its
frozen parts stay in eval mode whatever ``train()`` says (LPIPS has dropout; a validation pass
must not change the next step), and it says which weights train (what a checkpoint keeps: the
trainer's save/load hooks in :mod:`~varestorer.distill.checkpointing` write them and the export form).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn


class TrainingModule(nn.Module):
    """Subclasses define ``forward(batch) -> losses`` and the methods below that raise
    ``NotImplementedError``: what the trainer calls (``distill/trainer.py``), declared once."""

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the trained network's activations in the backward pass (``train.gradient_checkpointing``)."""
        raise NotImplementedError(f"{type(self).__name__}.enable_gradient_checkpointing")

    def compile_trained_network(self) -> None:
        """``torch.compile`` the network this module trains, in place (``nn.Module.compile``), so
        that its parameter names (checkpoints, export) stay (``train.compile``)."""
        raise NotImplementedError(f"{type(self).__name__}.compile_trained_network")

    def validation_images(self, batch: dict) -> dict[str, Tensor]:
        """The named image rows of a validation grid, each ``(N, 3, H, W)`` in [0, 1]."""
        raise NotImplementedError(f"{type(self).__name__}.validation_images")

    def save_export(self, out: Path, state: dict[str, Tensor] | None = None) -> None:
        """Write the export form into ``out`` (``state``: :meth:`export_state`, gathered on every
        process first)."""
        raise NotImplementedError(f"{type(self).__name__}.save_export")

    def hold_outside(self, **parts: nn.Module | None) -> None:
        """Keep frozen ``parts`` (the VAE, T5, LPIPS) as attributes outside the module tree:
        ``parameters()`` and ``state_dict()`` leave them out, so DDP, FSDP and DeepSpeed wrap, shard,
        broadcast and checkpoint only the modules that train (with the frozen weights inside them,
        such as a LoRA's base). ``to()``, ``float()`` and every other ``_apply`` still reach them."""
        for name, part in parts.items():
            object.__setattr__(self, name, part)  # nn.Module.__setattr__ would register it
        object.__setattr__(self, "_held_outside", (*getattr(self, "_held_outside", ()), *parts))

    def held_outside(self) -> list[nn.Module]:
        """The parts :meth:`hold_outside` keeps (``None`` ones left out)."""
        parts = (getattr(self, name) for name in getattr(self, "_held_outside", ()))
        return [p for p in parts if isinstance(p, nn.Module)]

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for part in self.held_outside():
            part._apply(fn, recurse)
        return self

    def frozen_modules(self) -> tuple[nn.Module | None, ...]:
        """The submodules kept in eval mode (``None`` entries are skipped)."""
        return ()

    def train(self, mode: bool = True):
        super().train(mode)
        for frozen in self.frozen_modules():
            if isinstance(frozen, nn.Module):
                frozen.eval()
        return self

    def validation_metrics(self) -> dict[str, float]:
        """Numbers measured at each validation step besides the grid (logged; none by default)."""
        return {}

    def param_groups(self, lr: float, encoder_lr: float | None = None) -> list[dict]:
        """The optimizer's parameter groups: one at ``lr`` (subclasses with an encoder split it
        off at ``encoder_lr``)."""
        return [{"params": self.trainable_parameters(), "lr": lr}]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        names = {id(p) for p in self.trainable_parameters()}
        return {k: v for k, v in self.named_parameters() if id(v) in names}

    def export_state(self) -> dict[str, Tensor]:
        """The tensors ``save_export(out, state)`` writes from, named as in this module: the
        trainable weights by default. The trainer gathers them on every process first (sharded
        training), then the main process writes."""
        return self.trainable_state_dict()
