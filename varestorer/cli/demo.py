"""``varestorer demo``: the method, proven on the ``small`` base shipped with the package, on a CPU.

1. distils the pre-trained ``small`` base on the training photos shipped with the package
   (``recipes/small.yaml`` through the same trainer as ``accelerate launch distill.py``;
   Real-ESRGAN degradations drawn on the fly);
2. the run's ``final/`` folder is the exported adapter (LoRA, encoder, config);
3. degrades the held-out photos (never seen by the base nor here) with a fixed seed and restores
   them with every method: bicubic, zero-shot, multi-step teacher, one-step student (and the
   paper's guided sampling with ``--methods``);
   scores them like ``varestorer evaluate`` (PSNR/SSIM on Y, the detail kept (``sharpness``: the
   restoration's gradient energy over the photo's), LPIPS and the others where their weights are
   present), on the path a user gets: no prompt (``--caption none``), as no user has hand-written
   captions of their photos (``--with-captions`` scores with the held-out photos' own, to compare);
4. writes ``report.md`` (the table, seconds per image, what the numbers mean), ``grid.png``
   (LQ | bicubic | restorer | zero-shot | multi-step | one-step | HQ) and the loss curves.

Same seed, same numbers. ``--recipe tiny`` runs the same flow on the random toy model in a minute
(it restores nothing: a smoke test of the machinery).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .options import SEED, number

#: The methods the demo can compare, in the grid's order (varsr needs a model trained in varsr mode).
DEMO_METHODS = ("bicubic", "restorer", "zeroshot", "multistep", "guided", "onestep")
#: Those it runs by default: guided costs about five multi-step passes; add it with --methods.
DEFAULT_METHODS = ("bicubic", "restorer", "zeroshot", "multistep", "onestep")
#: Full-reference metrics first; NIQE needs 192 px crops, FID many more images than the held-out set.
DEMO_METRICS = "psnr,ssim,sharpness,lpips,dists,musiq,clipiqa"


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="distil the shipped small base, restore held-out photos with every method, report",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--output-dir", default="outputs/demo", help="where to write (default: outputs/demo)")
    p.add_argument("--recipe", default="small", help="the distillation recipe (default: small)")
    p.add_argument("--steps", type=number(int, 1), default=None, help="training steps (default: the recipe's)")
    p.add_argument(
        "--images", type=number(int, 1), default=None, help="score only the first N held-out images (default: all)"
    )
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated restoration methods out of {','.join(DEMO_METHODS)} "
        f"(default: {','.join(DEFAULT_METHODS)})",
    )
    p.add_argument("--seed", type=SEED, default=0, help="seed of the held-out degradations and the samplers")
    p.add_argument(
        "--with-captions",
        action="store_true",
        help="restore with the held-out photos' hand-written captions (default: none, what a user has)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..degradations.folder import write_heldout
    from ..distill.recipe import load_recipe
    from ..distill.trainer import train
    from ..errors import ConfigError
    from ..evaluation.report import write_demo_report
    from ..inference.compare import method_grid

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in DEMO_METHODS]
    if unknown or not methods:
        what = f"unknown {unknown[0]!r}" if unknown else "no method"
        raise ConfigError(f"--methods: {what}; choose from {', '.join(DEMO_METHODS)}")
    out = Path(args.output_dir)
    from ..outputs import check_output_folder

    check_output_folder(out, "--output-dir")  # before the training
    started = time.perf_counter()
    overrides = [f"train.output_dir={out / 'train'}", "train.report_to=tensorboard"]
    if args.steps is not None:
        overrides.append(f"train.max_steps={args.steps}")
    recipe = load_recipe(args.recipe, overrides)
    if "restorer" in methods and recipe.model.restorer is None:
        if args.methods != ",".join(DEFAULT_METHODS):
            raise ConfigError(
                f"--methods restorer: the recipe {args.recipe} names no stage-1 restorer (model.restorer)"
            )
        methods.remove("restorer")  # the default list, on a recipe without one (tiny)
    logs = train(recipe, overwrite=True)  # a demo run again replaces its own training (moved aside)
    trained = time.perf_counter() - started
    print("\nlast step: " + ", ".join(f"{k} {v:.4g}" for k, v in logs.items()))
    model = out / "train" / "final"  # the export form (adapter, encoder, config)

    heldout = write_heldout(
        out / "heldout",
        recipe.model.resolution,
        recipe.degradation.preset,
        recipe.degradation.scale,
        seed=args.seed,
        limit=args.images,
    )
    evaluation = _evaluate(model, heldout, methods, out / "evaluation", args)
    grid = method_grid(heldout["lq"], heldout["hq"], evaluation.out, methods, out / "grid.png")
    total = time.perf_counter() - started
    report = write_demo_report(
        out, recipe, evaluation, grid, trained_seconds=trained, total_seconds=total, captions=args.with_captions
    )
    print(f"\ndemo done in {total / 60:.1f} min (training {trained / 60:.1f} min). Look at:")
    for path in (
        report,
        grid,
        out / "train" / "losses.png",
        out / "train" / "validation",
        evaluation.out / "results.md",
    ):
        print(f"  {path}")
    print(f"restore your own images: varestorer restore PHOTOS -o restored/ --model {model} --caption none")
    return 0


def _evaluate(model: Path, heldout: dict, methods: list[str], out: Path, args):
    """The trained model and the baselines restoring the held-out crops, scored (the library's
    ``evaluate``, as ``varestorer evaluate --caption none --crop-border 4 --device cpu`` runs it)."""
    import torch

    from ..data.captions import CaptionFile
    from ..evaluation.run import evaluate, load_pairs
    from ..inference import VARestorerPipeline
    from ..methods import METHODS

    data = load_pairs(heldout["hq"], lq=heldout["lq"], crop_border=4)
    pipe = VARestorerPipeline.from_pretrained(model).to("cpu")
    generator = torch.Generator().manual_seed(args.seed)  # the one-step draws: one generator for the run

    report = evaluate(
        data,
        pipe,
        methods=methods,
        out=out,
        metrics=DEMO_METRICS.split(","),
        device="cpu",
        prompts=CaptionFile(heldout["captions"]).prompts_for if args.with_captions else "",
        settings=lambda method: METHODS[method].draws(args.seed, generator),
        describe={"gt": str(heldout["hq"]), "lq": str(heldout["lq"]), "pred": None, "model": str(model)},
    )
    report.write()
    print((out / "results.md").read_text())
    return report
