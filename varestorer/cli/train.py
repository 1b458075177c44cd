"""``varestorer train --recipe NAME [section.key=value ...]`` (what ``distill.py`` runs)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="run a training recipe (distillation or teacher fine-tuning)",
        description="Run a recipe from recipes/ (or a YAML path). Launch it with accelerate for several "
                    "processes: accelerate launch --config_file launch/8gpu.yaml distill.py --recipe NAME",
        epilog="Overrides: section.key=value, e.g. optim.lr=1e-5 train.max_steps=100 "
               "train.resume_from_checkpoint=latest",
    )
    p.add_argument("--recipe", required=True, help="recipe name in recipes/ or a path to a YAML file")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="recipe overrides")
    p.add_argument("--print-recipe", action="store_true", help="print the resolved recipe and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..distill.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.print_recipe:
        import yaml

        print(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        return 0
    from ..distill.trainer import train

    train(recipe)
    return 0
