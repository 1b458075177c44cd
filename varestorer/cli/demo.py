"""``varestorer demo``: the whole pipeline on the tiny preset, on a CPU, in about a minute.

Runs ``recipes/tiny.yaml`` (random tiny Infinity, scikit-image photos, the real degradations,
teacher + student + losses, checkpoints, validation grids) and lists what it wrote.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the tiny end-to-end demo on this machine (CPU is enough)",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("--output-dir", default="outputs/demo", help="where to write (default: outputs/demo)")
    p.add_argument("--steps", type=int, default=30, help="training steps (default: 30)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..distill.recipe import load_recipe
    from ..distill.trainer import train

    out = Path(args.output_dir)
    recipe = load_recipe("tiny", [f"train.output_dir={out}", f"train.max_steps={args.steps}", "train.report_to=tensorboard"])
    logs = train(recipe)
    print("\nlast step: " + ", ".join(f"{k} {v:.4g}" for k, v in logs.items()))
    print(f"wrote {out}/:")
    for path in sorted(out.rglob("*")):
        if path.is_file() and "logs" not in path.parts:
            print(f"  {path.relative_to(out)}")
    print(f"look at {out}/validation/ (LQ | student | teacher-forced | HQ) and {out}/losses.png; "
          f"tensorboard --logdir {out}/logs")
    return 0
