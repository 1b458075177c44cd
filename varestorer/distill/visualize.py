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


def running_mean(values: list[float], window: int) -> list[float]:
    """The mean of each value and the ``window - 1`` before it (fewer at the start)."""
    cumsum = [0.0]
    for v in values:
        cumsum.append(cumsum[-1] + v)
    return [(cumsum[i + 1] - cumsum[max(0, i + 1 - window)]) / min(i + 1, window) for i in range(len(values))]


def save_loss_plot(history: list[dict], path: Path) -> None:
    """Each logged loss term against the step, one panel per term; a long noisy series (a small
    batch's loss) gets its running mean over a twentieth of the run drawn over it."""
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
        steps, values = [p[0] for p in points], [p[1] for p in points]
        window = len(values) // 20
        if window >= 5:
            ax.plot(steps, values, alpha=0.3, linewidth=0.8)
            ax.plot(steps, running_mean(values, window), color="C0", linewidth=1.6, label=f"mean of {window}")
            ax.legend(fontsize=7, frameon=False)
        else:
            ax.plot(steps, values, marker="o" if sparse else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
