"""Learning-rate schedules of a recipe (``optim.lr_scheduler``).

diffusers' schedules by name, and ``lin0``: Infinity's ``lr_wd_annealing`` (``sche=lin0``), which the
released VARestorer trainer uses. At step ``k`` (from 0) of ``total``, with ``w`` warm-up steps:

    k < w:   start + (1 - start) * k / w                                    (Infinity's wp0 = start)
    else:    p = (k - w) / (total - 1 - w);  1 while p < 0.05, then end + (1 - end) * (1 - p) / 0.95

times ``optim.lr`` (``end`` is Infinity's wpe). The release sets its warm-up to 1e-8 epochs (0 steps)
and wpe=1: a constant learning rate, 2.5e-5 at a global batch of 64.
"""

from __future__ import annotations

import torch


def lin0(step: int, warmup: int, total: int, start: float = 0.005, end: float = 0.3) -> float:
    """Infinity's ``lin0`` factor of the peak learning rate at ``step`` (module docstring)."""
    if step < warmup:
        return start + (1 - start) * step / warmup
    passed = (step - warmup) / max(1, total - 1 - warmup)
    if passed < 0.05:
        return 1.0
    return end + (1 - end) * (1 - passed) / 0.95


def build_scheduler(recipe, optimizer: torch.optim.Optimizer, num_processes: int = 1):
    """The recipe's schedule. accelerate steps a prepared scheduler once per process per step,
    so a schedule counts ``num_processes`` calls a step (diffusers' convention in its scripts)."""
    o, t = recipe.optim, recipe.train
    if o.lr_scheduler == "lin0":
        n = max(1, num_processes)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda k: lin0(k // n, o.lr_warmup_steps, t.max_steps, o.lr_warmup_start, o.lr_end)
        )
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        o.lr_scheduler,
        optimizer,
        num_warmup_steps=o.lr_warmup_steps * num_processes,
        num_training_steps=t.max_steps * num_processes,
    )
