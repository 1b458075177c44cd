"""Images people look at during training: validation grids and the loss curves."""

from __future__ import annotations

from pathlib import Path

import torch


@torch.no_grad()
def validation_grid(model, batch: dict) -> torch.Tensor:
    """One row per sample, the model's ``validation_columns`` (default LQ | student | teacher-forced
    reconstruction | HQ; the tokenizer: HQ | reconstruction): the grid (3, H, W) in [0, 1]."""
    from torchvision.utils import make_grid

    images = model.validation_images(batch)  # dict of (B, 3, R, R) in [0, 1]
    keys = getattr(model, "validation_columns", ("lq", "student", "teacher", "hq"))
    columns = [images[k] for k in keys]
    rows = torch.stack(columns, dim=1).flatten(0, 1).float().cpu().clamp(0, 1)
    return make_grid(rows, nrow=len(columns), padding=2, pad_value=1.0)


def save_image(grid: torch.Tensor, path: Path) -> None:
    from torchvision.utils import save_image as write

    path.parent.mkdir(parents=True, exist_ok=True)
    write(grid, path)


def save_loss_plot(history: list[dict], path: Path) -> None:
    """Each logged loss term against the step, one panel per term."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(k for h in history for k in h if k not in ("step", "lr")))
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(h["step"], h[key]) for h in history if key in h]  # validation metrics: some steps only
        sparse = len(points) < len(history)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if sparse else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
