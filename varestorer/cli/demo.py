"""``varestorer demo``: the whole pipeline on the tiny preset, on a CPU, in about a minute.

Runs ``recipes/tiny.yaml`` (random tiny Infinity, scikit-image photos, the real degradations,
teacher + student + losses, checkpoints, validation grids), exports the result with its model
card, and restores degraded sample photos with it in one forward pass, then lists what it wrote.
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
    from ..hub import CARD_FILE, render_card
    from ..inference import VARestorerPipeline
    from ..inference.compare import write_samples

    out = Path(args.output_dir)
    recipe = load_recipe("tiny", [f"train.output_dir={out}", f"train.max_steps={args.steps}", "train.report_to=tensorboard"])
    logs = train(recipe)
    print("\nlast step: " + ", ".join(f"{k} {v:.4g}" for k, v in logs.items()))
    final = out / "final"  # the export form; `varestorer export` copies it with samples and a card
    pipe = VARestorerPipeline.from_pretrained(final)
    samples = write_samples(pipe, final, count=4)
    render_card(final, "USER/varestorer-tiny-demo").save(final / CARD_FILE)
    print(f"wrote {out}/:")
    for path in sorted(out.rglob("*")):
        if path.is_file() and "logs" not in path.parts:
            print(f"  {path.relative_to(out)}")
    print(f"look at {out}/validation/ (LQ | student | teacher-forced | HQ), {out}/losses.png and "
          f"{samples[0].parent}/ (LQ | one-step restoration | HQ); tensorboard --logdir {out}/logs")
    print(f"restore your own images: varestorer restore PHOTOS -o restored/ --model {final} --no-prompt")
    return 0
