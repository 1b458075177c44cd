"""``varestorer train --recipe NAME [section.key=value ...]`` (what ``distill.py`` runs)."""

from __future__ import annotations

import argparse

from .options import meta_device_name, number


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="run a training recipe (distillation, teacher fine-tuning, the VARSR baseline or the tokenizer)",
        description="Run a recipe from recipes/ (or a YAML path). Launch it with accelerate for several "
        "processes: accelerate launch --config_file launch/8gpu.yaml distill.py --recipe NAME",
        epilog="Overrides: section.key=value, e.g. optim.lr=1e-5 train.max_steps=100 "
        "train.resume_from_checkpoint=latest",
    )
    p.add_argument("--recipe", required=True, help="recipe name in recipes/ or a path to a YAML file")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="recipe overrides")
    p.add_argument("--print-recipe", action="store_true", help="print the resolved recipe and exit")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start again in a train.output_dir that holds another run: its checkpoints, final/ and logs "
        "are moved aside into OUTPUT_DIR/replaced-DATE-TIME/ (not deleted). Without it such a folder is "
        "refused unless train.resume_from_checkpoint resumes it",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..distill.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.print_recipe:
        import yaml

        print(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        return 0
    from ..distill.trainer import train
    from ..outputs import check_output_folder

    check_output_folder(recipe.train.output_dir, "train.output_dir")  # before the model is built
    train(recipe, overwrite=args.overwrite)
    return 0


# ---------------------------------------------------------------------- varestorer bench train
def register_bench(sub) -> None:
    p = sub.add_parser(
        "train",
        help="seconds/step, images/s, peak memory (and MFU on a GPU) of the real training step",
        description="Time the real training step (degradation, teacher, student, losses, backward, AdamW) "
        "with random weights of a preset.",
    )
    p.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    p.add_argument("--resolution", type=number(int, 1), default=None, help="image size (default: the preset's)")
    p.add_argument("--batch", type=number(int, 1), default=4, help="images per step (default: 4)")
    p.add_argument("--steps", type=number(int, 1), default=5, help="timed steps (default: 5)")
    p.add_argument("--warmup", type=number(int, 0), default=2, help="untimed steps first (default: 2)")
    p.add_argument("--mode", default="distill", choices=("distill", "teacher", "varsr"))
    p.add_argument(
        "--recipe",
        default=None,
        help="time a recipe's step (its objective, student, degradation, restorer) with random weights at "
        "--preset/--resolution/--batch, e.g. varestorer-2b-512 or varestorer-2b-512-release-trainer",
    )
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument(
        "--mixed-precision",
        choices=("no", "bf16"),
        default=None,
        help="bf16 autocast over float32 weights, as accelerate trains (default: bf16 on a GPU, no on a CPU; "
        "a CPU with bfloat16 kernels runs bf16 too)",
    )
    p.add_argument(
        "--frozen-dtype",
        choices=("float32", "bf16"),
        default="float32",
        help="train.frozen_dtype: bf16 holds the frozen weights (the blocks, T5) in bf16 (needs --mixed-precision "
        "bf16; the 2B: 4.4 GB less)",
    )
    p.add_argument(
        "--no-flop-count",
        dest="count_flops",
        action="store_false",
        help="skip the extra step under torch's FLOP counter (on a CPU it costs a step's time)",
    )
    p.add_argument(
        "--device",
        type=meta_device_name,
        default=None,
        help="device (default: cuda if available); meta: estimate the GPU memory of the step "
        "(no GPU, no weights, nothing timed)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    import json

    from ..distill.bench import bench_train, format_result
    from ..presets import get_preset

    resolution = args.resolution or get_preset(args.preset).resolution
    if args.device == "meta":
        from ..distill.memory import estimate_train_memory, format_estimate
        from ..errors import ConfigError

        if args.mode != "distill" or args.recipe:
            raise ConfigError("--device meta estimates the default distillation step only (no --mode, no --recipe)")
        r = estimate_train_memory(args.preset, resolution, args.batch, args.gradient_checkpointing)
        print(json.dumps(r, indent=2) if args.json else format_estimate(r))
        return 0
    r = bench_train(
        args.preset,
        resolution,
        args.batch,
        steps=args.steps,
        warmup=args.warmup,
        device=args.device,
        mode=args.mode,
        gradient_checkpointing=args.gradient_checkpointing,
        recipe=args.recipe,
        mixed_precision=args.mixed_precision,
        count_flops=args.count_flops,
        frozen_dtype=args.frozen_dtype,
    )
    print(json.dumps(r, indent=2) if args.json else format_result(r))
    return 0
