import os

import pytest
import torch

# Tests never reach the network: everything is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


def move_lora(model, std: float = 0.05):
    """Give ``model``'s LoRA up-projections random values (they start at zero), so that a student
    differs from its base: what the export and pipeline tests compare. Returns ``model``."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)
    return model


def spread_lora(model, seed: int = 1):
    """A student far from its base: random LoRA up-projections (std 0.5) and a head of full size
    (the random base starts at p = 1/2 for every bit), so every loss term and bit differs. Returns
    ``model``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.transformer.head.weight.mul_(50)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def exported_student(root, *overrides: str):
    """A tiny student (seed 0, recipe ``tiny`` with ``overrides``), its LoRA moved (:func:`move_lora`),
    in eval mode and exported to ``root/export``: ``(model, export folder)``."""
    from varestorer.distill.model import VARestorerModel
    from varestorer.distill.recipe import load_recipe

    torch.manual_seed(0)
    recipe = load_recipe("tiny", [f"train.output_dir={root}", "train.report_to=none", *overrides])
    model = move_lora(VARestorerModel.from_recipe(recipe)).eval()
    model.save_export(root / "export")
    return model, root / "export"


@pytest.fixture
def seed():
    torch.manual_seed(0)
    return 0


def launch_processes(n: int, script, *args: str, cwd, env: dict | None = None, check: bool = True):
    """``script`` in ``n`` CPU processes over gloo, as a user launches them (``ACCELERATE_USE_CPU=true
    torchrun``: ``accelerate launch --cpu --num_processes n`` starts a single process), with this
    checkout's package and ``env`` added to the environment. Returns the finished process (which
    must have succeeded, with ``check``)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(repo), **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", str(script)]
    res = subprocess.run([*cmd, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 or not check, res.stderr[-3000:]
    return res


@pytest.fixture
def cpu_processes(tmp_path):
    """``run(n, script, *args)``: :func:`launch_processes` in ``tmp_path``."""

    def run(n: int, script, *args: str):
        return launch_processes(n, script, *args, cwd=tmp_path)

    return run


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests skip where no CUDA device is (``-m 'not slow'`` deselects the long multi-process ones)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
