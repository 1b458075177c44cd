"""What the trainer needs of a training module, once for all modes.

:class:`TrainingModule` is the base of :class:`~varestorer.distill.model.VARestorerModel`
(distill, teacher, varsr) and :class:`~varestorer.tokenizer.training.TokenizerModel`: its
frozen parts stay in eval mode whatever ``train()`` says (LPIPS has dropout; a validation pass
must not change the next step), and accelerate's ``save_state``/``load_state`` keep only the
trainable weights (``trainable.safetensors``) and the export form (``export/``), never a frozen base.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

TRAINABLE_FILE = "trainable.safetensors"


class TrainingModule(nn.Module):
    """Subclasses define ``forward(batch) -> losses``, ``validation_images``, ``save_export`` and
    :meth:`frozen_modules`."""

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

    def register_checkpoint_hooks(self, accelerator) -> None:
        """``save_state`` writes the trainable weights and the export form; ``load_state`` refuses
        the trainable weights of another recipe."""
        from safetensors.torch import load_file

        from ..export import save_weights

        cls = type(self)

        def save_hook(models, weights, output_dir):
            for model in models:
                core = accelerator.unwrap_model(model)
                if isinstance(core, cls) and accelerator.is_main_process:
                    save_weights(core.trainable_state_dict(), Path(output_dir) / TRAINABLE_FILE)
                    core.save_export(Path(output_dir) / "export")
            weights.clear()

        def load_hook(models, input_dir):
            while models:
                core = accelerator.unwrap_model(models.pop())
                state = load_file(str(Path(input_dir) / TRAINABLE_FILE))
                expected = core.trainable_state_dict()
                from ..errors import CheckpointError

                if set(state) != set(expected):
                    raise CheckpointError(f"{input_dir} holds trainable weights of another recipe "
                                          f"({len(state)} tensors, this recipe trains {len(expected)})")
                wrong = [k for k, v in expected.items() if state[k].shape != v.shape]
                if wrong:
                    raise CheckpointError(f"{input_dir} holds trainable weights of another preset or LoRA rank "
                                          f"({wrong[0]}: {tuple(state[wrong[0]].shape)} there, "
                                          f"{tuple(expected[wrong[0]].shape)} here); resume it with its own recipe")
                with torch.no_grad():
                    for k, v in expected.items():
                        v.copy_(state[k])

        accelerator.register_save_state_pre_hook(save_hook)
        accelerator.register_load_state_pre_hook(load_hook)
