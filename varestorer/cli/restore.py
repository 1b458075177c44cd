"""``varestorer restore INPUT... -o OUT --model DIR_OR_HUB_ID``: restore images in one forward pass.

INPUT: image files or folders (walked recursively). Every image, whatever its size and mode
(grayscale, palette, RGBA, CMYK, 16-bit), is restored at ``--upscale`` times its size (default:
the scale the model was trained for): outputs up to the model's resolution go through one pass
at that resolution (the paper), larger ones are tiled with overlap and blended. Prompts: BLIP
captions of the model's own first restoration (default; ``--caption-from input`` captions the LQ
input), one ``--prompt`` for all, or none at all with ``--no-prompt`` (the paper's "w/o prompt"
ablation, Table A). Outputs keep the inputs' relative
paths under OUT, as PNG (``photo.jpg`` -> ``photo.png``; when two inputs share a stem, each but
the one already ending in ``.png`` keeps its suffix: ``photo.jpg.png``), the same names on every
run. Each output records its input (EXIF ImageDescription): an existing output of the same input
is kept unless ``--overwrite`` (run the same command again to resume, also after Ctrl-C), one of
another input never is; an input is never written over. Files that cannot be read are skipped and
listed in ``OUT/skipped.tsv``.

``--method`` compares like with like through the same resizing and tiling: ``onestep``
(VARestorer), ``bicubic`` (no model needed), and the base model sampling scale by scale:
``zeroshot`` (the LQ tokens given at the first ``--num-given`` scales, the paper's Fig. 2a),
``multistep`` (from the prompt alone: conventional VAR inference), ``guided`` (training-free
measurement guidance: LQ tokens below scale ``--gamma``, gradient-guided logits above), and
``varsr`` for a model trained with ``recipes/ablation-no-distill.yaml`` (its LoRA samples scale by
scale with the LQ image as prefix tokens).

Many GPUs: ``accelerate launch --multi_gpu --num_processes N -m varestorer restore ...`` (or
``torchrun --nproc_per_node N -m varestorer restore ...``) deals the one-process run's batches out
whole to the processes, each on its own GPU: every image restored once, the outputs identical to
one process's, one ``OUT/skipped.tsv``, the same resuming. Random draws (``--decode gumbel``, the
sampling methods) come from one generator per batch (``--seed`` for the first), whichever process
runs it.
"""

from __future__ import annotations

import argparse

from .options import (
    METHOD_CHOICES,
    add_method_options,
    add_prompt_options,
    add_running_options,
    device_name,
    load_pipeline,
    meta_device_name,
    method_kwargs,
    number,
    prompts_for,
)

#: ``--ext`` values (varestorer.inference.files.OUTPUT_FORMATS, without importing torch here).
OUTPUT_FORMATS = ("png", "jpg", "webp")


def register(sub) -> None:
    p = sub.add_parser(
        "restore",
        help="restore images with a trained model (one forward pass)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--model", help="export folder or Hub repo id (not needed for --method bicubic)")
    p.add_argument("--method", default="onestep", choices=METHOD_CHOICES)
    add_prompt_options(p)
    g = p.add_argument_group("size")
    g.add_argument(
        "--upscale",
        type=number(float, 0, lo_open=True),
        default=None,
        help="output size / input size (default: the model's)",
    )
    g.add_argument(
        "--mode",
        default="auto",
        choices=("auto", "resize", "tile"),
        help="auto: one pass when the output fits the model's resolution, tiles otherwise",
    )
    g.add_argument(
        "--tile-overlap", type=number(int, 0), default=None, help="tile overlap in pixels (default: 1/4 tile)"
    )
    add_running_options(p)
    g = p.add_argument_group("output")
    g.add_argument("--compare", action="store_true", help="also write NAME_compare.png: input | restored")
    g.add_argument("--ext", default="png", choices=OUTPUT_FORMATS)
    g.add_argument("--overwrite", action="store_true", help="replace outputs that exist")
    add_method_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inference.processes import processes

    group = processes()
    try:
        return _run(args, group)
    finally:
        group.close()


def _plan(args: argparse.Namespace):
    """What to restore (:func:`~varestorer.inference.files.plan_files`, with its moves): the main process's."""
    from ..errors import ConfigError
    from ..inference.files import plan_files

    if args.batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    return plan_files(
        args.inputs,
        args.output,
        method=args.method,
        model=args.model,
        ext=args.ext,
        compare=args.compare,
        overwrite=args.overwrite,
    )


def _shared_plan(args: argparse.Namespace, group):
    """The main process plans; every process gets its plan, or ``None`` when it was refused: the
    main process raises (and reports) the error and fails the launch; the others end quietly
    (:data:`QUIET`)."""
    planned = None
    if group.is_main:
        try:
            planned = _plan(args)
        except Exception:
            group.share(None)
            raise
    return group.share(planned)


#: The exit code of a process other than the main one when the main one refuses the run: 0, as a
#: process that failed first would have the launcher stop the main one before it says why.
QUIET = 0


def _run(args: argparse.Namespace, group) -> int:
    from ..errors import ConfigError
    from ..inference.files import RestoreInterrupted, restore_files

    try:
        device = group.device(args.device)
    except ConfigError:
        if group.is_main:
            raise
        return QUIET  # the same refusal, reported by the main process
    plan = _shared_plan(args, group)
    if plan is None:
        return QUIET
    try:
        pipe = load_pipeline(args, device, (args.method,))
    except KeyboardInterrupt:
        if group.is_main:
            print(f"\ninterrupted while loading the model, before any image was restored into {plan.out}")
        return 130
    try:
        report = restore_files(
            pipe,
            plan,
            method=args.method,
            prompts=lambda paths: prompts_for(args, paths),
            model=args.model,
            seed=args.seed,
            compare=args.compare,
            group=group,
            **_call_kwargs(args),
        )
    except RestoreInterrupted as stop:
        if group.is_main:
            by = f" by process 1 of {group.world} (the others' are there too)" if group.world > 1 else ""
            print(
                f"\ninterrupted: {sum(stop.report.restored)} image(s) restored into {plan.out}{by}, the one(s) in "
                f"progress dropped; run the same command again to resume"
            )
        return 130
    if group.is_main:
        _summary(report)
    return 1 if report.failed else 0


def _summary(report) -> None:
    """What the run did (a :class:`~varestorer.inference.files.FilesReport`)."""
    out, counts, skipped = report.out, report.restored, report.skipped
    by = f" ({len(counts)} processes: {' + '.join(map(str, counts))})" if len(counts) > 1 else ""
    print(
        f"restored {sum(counts)} image(s) into {out}{by}"
        + (f"; kept {report.kept} existing (--overwrite replaces them)" if report.kept else "")
    )
    for note in report.notes:
        print(f"  {note}")
    if skipped:
        print(f"skipped {len(skipped)} file(s), listed in {out / 'skipped.tsv'}:")
        for p, why in skipped[:10]:
            print(f"  {p}: {why}")


def _call_kwargs(args) -> dict:
    """The pipeline call's settings from the options (the method is given apart)."""
    settings = method_kwargs(args, args.method)
    for drawn in ("seed", "generator"):  # restore_files draws each batch's own (--seed for the first)
        settings.pop(drawn, None)
    return dict(
        upscale=args.upscale,
        mode=args.mode,
        tile_overlap=args.tile_overlap,
        batch_size=args.batch_size,
        tile_batch_size=args.tile_batch_size,
        **settings,
    )


SDPA_BACKENDS = ("default", "math", "flash", "efficient", "cudnn")


def register_bench(sub) -> None:
    p = sub.add_parser(
        "latency",
        help="seconds per image of onestep vs the multi-step methods, on the same weights",
        description="Time every restoration method side by side on random weights of a preset: the one-step "
        "pass vs scale-by-scale sampling (multistep with CFG, zeroshot, guided, varsr).",
    )
    _add_bench_options(p, device_name)
    p.add_argument("--resolution", type=number(int, 1), default=None, help="image size (default: the preset's)")
    p.add_argument("--repeats", type=number(int, 1), default=3, help="timed calls per method (default: 3)")
    p.add_argument("--warmup", type=number(int, 0), default=1, help="untimed calls first (default: 1)")
    p.add_argument("--methods", default=None, help="comma-separated subset (default: all)")
    p.add_argument(
        "--sdpa",
        default="default",
        choices=SDPA_BACKENDS,
        help="the attention kernel torch may use (default: its own choice; flash and efficient need a GPU)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer first (its time: warm-up)")
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="hold the convolutional models (VAE, LQ encoder, stage-1 restorer) in channels-last memory format",
    )
    p.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="CPU: then time onestep again with the block Linears in int8 (row ...+int8, with its PSNR "
        "against onestep's output)",
    )
    p.add_argument(
        "--attention-kernel",
        choices=("sdpa", "matmul"),
        default="sdpa",
        help="matmul: then time onestep again with self-attention as two matrix products and a softmax "
        "(row onestep+matmul; before --quantize's row)",
    )
    p.set_defaults(func=run_bench)


def _add_bench_options(p, device_type) -> None:
    """What the restoration benchmarks share: the preset, batch, device, precision and JSON output."""
    p.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    p.add_argument("--batch", type=number(int, 1), default=1, help="images per call (default: 1)")
    p.add_argument("--device", type=device_type, default=None, help="device (default: cuda if available)")
    p.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16", "float16"),
        help="precision (default: bfloat16, float32 on a CPU)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def _methods(text: str | None, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """``--methods`` of a benchmark: a comma-separated subset of ``allowed`` (all when not given)."""
    from ..errors import ConfigError

    methods = allowed if text is None else tuple(m.strip() for m in text.split(",") if m.strip())
    if not methods or set(methods) - set(allowed):
        raise ConfigError(f"--methods {text!r}: choose among {', '.join(allowed)}")
    return methods


def run_bench(args: argparse.Namespace) -> int:
    import json

    from ..inference.bench import TIMED, bench_latency, format_latency

    methods = _methods(args.methods, TIMED)
    r = bench_latency(
        args.preset,
        args.resolution,
        batch=args.batch,
        warmup=args.warmup,
        repeats=args.repeats,
        device=args.device,
        dtype=args.dtype,
        methods=methods,
        sdpa=args.sdpa,
        compile=args.compile,
        channels_last=args.channels_last,
        quantize=args.quantize,
        attention_kernel=args.attention_kernel,
    )
    print(json.dumps(r, indent=2) if args.json else format_latency(r))
    return 0


def register_bench_memory(sub) -> None:
    p = sub.add_parser(
        "memory",
        help="peak memory of a restoration per method and resolution, with and without CPU offload",
        description="Peak memory of one restoration (caption + restore) on random weights of a preset, with "
        "every model a real one holds (T5, BLIP-large, the stage-1 restorer, the VAE): on a GPU "
        "torch.cuda.max_memory_allocated, on the CPU the peak resident set, on --device meta an estimate "
        "(weights + live tensors) with no GPU and no weights; with and without --offload "
        "(enable_model_cpu_offload).",
    )
    _add_bench_options(p, meta_device_name)
    p.add_argument("--resolutions", default=None, help="comma-separated image sizes (default: the preset's resolution)")
    p.add_argument("--methods", default="onestep", help="comma-separated methods (default: onestep)")
    p.set_defaults(func=run_bench_memory)


def run_bench_memory(args: argparse.Namespace) -> int:
    import json

    from ..errors import ConfigError
    from ..inference.memory import MEASURED, bench_memory, format_memory

    methods = _methods(args.methods, MEASURED)
    try:
        sizes = tuple(int(s) for s in (args.resolutions or "").split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--resolutions {args.resolutions!r}: comma-separated integers, e.g. 512,1024") from None
    if any(s < 16 for s in sizes):
        raise ConfigError(f"--resolutions {args.resolutions!r}: every size must be at least 16 pixels")
    r = bench_memory(args.preset, sizes, methods, batch=args.batch, device=args.device, dtype=args.dtype)
    print(json.dumps(r, indent=2) if args.json else format_memory(r))
    return 0
