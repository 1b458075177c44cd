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
import os
from pathlib import Path

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


def collect_inputs(inputs: list[str]) -> list[tuple[Path, Path]]:
    """``(path, output relative path)`` of every image; folders keep their structure."""
    from ..data.images import is_image_path
    from ..errors import ConfigError

    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and is_image_path(p))
            found += [(p, p.relative_to(path)) for p in files]
        elif path.is_file():
            found.append((path, Path(path.name)))
        else:
            raise ConfigError(f"input {item} does not exist")
    if not found:
        from ..data.images import IMAGE_SUFFIXES

        raise ConfigError(f"no images in {' '.join(inputs)} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return found


def check_output_outside_inputs(inputs: list[str], out: Path) -> None:
    """Input folders are searched recursively: an output folder in one would be read back as
    input by the next run."""
    from ..errors import ConfigError

    here = out.expanduser().resolve()
    for item in inputs:
        folder = Path(item).expanduser().resolve()
        if folder.is_dir() and (here == folder or folder in here.parents):
            raise ConfigError(
                f"the output folder {out} is {'the' if here == folder else 'inside the'} input folder "
                f"{item}, which is searched recursively: a later run would restore the restored images "
                f"too; choose an -o folder outside it"
            )


def plan_outputs(found: list[tuple[Path, Path]], out: Path, ext: str) -> list[tuple[Path, Path, Path]]:
    """``(input, its relative path, output)``: one output per input, named by
    :func:`~varestorer.outputs.output_names` (the same on every run), never an input's path. A
    file given twice is restored once."""
    from ..errors import ConfigError
    from ..outputs import output_names

    unique, inputs = [], set()
    for path, rel in found:
        if path.resolve() not in inputs:
            inputs.add(path.resolve())
            unique.append((path, rel))
    plan = []
    for (path, rel), name in zip(unique, output_names([rel for _, rel in unique], ext, out, [p for p, _ in unique])):
        target = out / name
        if target.resolve() in inputs:
            raise ConfigError(f"restoring {path} would write over the input {target}; choose another -o folder")
        plan.append((path, rel, target))
    return plan


#: The EXIF tag (ImageDescription) where an output records the input it was restored from.
SOURCE_TAG = 0x010E


def _source(path: Path, rel: Path, args) -> dict:
    """What an output records of how it was made: its input (relative path and size), the method
    and the model."""
    model = args.model
    if model is not None and Path(model).expanduser().is_dir():
        model = str(Path(model).expanduser().resolve())
    return {"restored_from": rel.as_posix(), "bytes": path.stat().st_size, "method": args.method, "model": model}


def _recorded_source(output: Path) -> dict | None:
    """The source an existing output records (:func:`_source`); ``{}`` when it records none (written
    by another program or an older version); ``None`` when it is not a readable image."""
    import json

    from PIL import Image

    try:
        with Image.open(output) as im:
            text = im.getexif().get(SOURCE_TAG)
    except Exception:  # noqa: BLE001 - PIL raises many kinds for a file that is not an image
        return None
    try:
        found = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {}
    return found if isinstance(found, dict) and "restored_from" in found else {}


def _same_input(a: dict, b: dict) -> bool:
    return (a.get("restored_from"), a.get("bytes")) == (b.get("restored_from"), b.get("bytes"))


def resume_plan(plan: list[tuple[Path, Path, Path]], args) -> tuple[list, int, list[str]]:
    """``(to do, kept, notes)``: an existing output of the same input is kept (resume), unless
    ``--overwrite``. An existing output of another input is never kept for this one: when its own
    input is in this run under a new name (``photo.jpg``'s ``photo.png`` once ``photo.png`` is
    added beside it), it is moved to that name; otherwise the run is refused before any work."""
    from ..errors import ConfigError

    todo, kept, moves, foreign, other_method = [], 0, [], [], 0
    sources = {id(p): _source(p[0], p[1], args) for p in plan}
    by_input = {(s["restored_from"], s["bytes"]): p for p in plan for s in [sources[id(p)]]}
    for item in plan:
        src, _, dst = item
        if dst.is_dir():
            raise ConfigError(
                f"{dst} is a folder where the restoration of {src} goes; move it away or choose another -o"
            )
        recorded = None if args.overwrite or not dst.exists() else _recorded_source(dst)
        if recorded is None:  # nothing there (or not an image, or --overwrite): restore it
            todo.append(item)
        elif not recorded or _same_input(recorded, sources[id(item)]):
            kept += 1
            other_method += bool(recorded) and (recorded.get("method"), recorded.get("model")) != (
                args.method,
                sources[id(item)]["model"],
            )
        else:
            owner = by_input.get((recorded["restored_from"], recorded["bytes"]))
            if owner is not None and owner[2] != dst and not owner[2].exists() and owner[2] not in dict(moves).values():
                moves.append((dst, owner[2]))
                todo.append(item)
            else:
                foreign.append(
                    f"{dst} (restored from {recorded['restored_from']}, {recorded['bytes']} bytes; not {src})"
                )
    if foreign:
        raise ConfigError(
            f"{len(foreign)} output(s) in {args.output} were restored from other inputs, and their names are now "
            f"these inputs': {'; '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}. Pass --overwrite to "
            f"restore over them, or choose another -o folder"
        )
    notes = []
    for old, new in moves:  # only once nothing is refused
        os.replace(old, new)
        if _compare_path(old).exists():
            os.replace(_compare_path(old), _compare_path(new))
        # the moved output is its input's: kept, not restored again
        todo = [t for t in todo if t[2] != new]
        kept += 1
        notes.append(f"moved {old.name} to {new.name} (its input's name now that another input shares its stem)")
    if other_method:
        notes.append(f"{other_method} of the kept outputs were made with another --method or --model")
    return todo, kept, notes


def _compare_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}_compare.png")


def run(args: argparse.Namespace) -> int:
    from .processes import processes

    group = processes()
    try:
        return _run(args, group)
    finally:
        group.close()


def _plan(args: argparse.Namespace, out: Path) -> tuple[list, int, list[str]]:
    """What to restore (:func:`resume_plan`), with its side effects (moves): the main process's."""
    from ..errors import ConfigError
    from ..outputs import check_output_folder

    check_output_folder(args.output, "-o")
    check_output_outside_inputs(args.inputs, out)
    plan = plan_outputs(collect_inputs(args.inputs), out, args.ext)
    if args.compare:
        names = {dst for _, _, dst in plan}
        clash = next((dst for _, _, dst in plan if _compare_path(dst) in names), None)
        if clash is not None:
            raise ConfigError(
                f"--compare would write {_compare_path(clash)}, the output of another input; rename that input "
                f"or leave out --compare"
            )
    if args.batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    return resume_plan(plan, args)


def _shared_plan(args: argparse.Namespace, out: Path, group) -> tuple | None:
    """The main process plans; every process gets its plan, or ``None`` when it was refused: the
    main process raises (and reports) the error and fails the launch; the others end quietly
    (:data:`QUIET`)."""
    planned = None
    if group.is_main:
        try:
            planned = _plan(args, out)
        except Exception:
            group.share(None)
            raise
    return group.share(planned)


#: The exit code of a process other than the main one when the main one refuses the run: 0, as a
#: process that failed first would have the launcher stop the main one before it says why.
QUIET = 0


def _run(args: argparse.Namespace, group) -> int:  # noqa: C901
    from tqdm.auto import tqdm

    from ..data.images import ImageSkip, read_rgb, to_tensor
    from ..errors import ConfigError, VARestorerError
    from ..inference.pipeline import output_size
    from ..outputs import REPORTED_ERRNOS, os_error_message
    from .processes import whole_batches

    out = Path(args.output).expanduser()
    try:
        device = group.device(args.device)
    except ConfigError:
        if group.is_main:
            raise
        return QUIET  # the same refusal, reported by the main process
    planned = _shared_plan(args, out, group)
    if planned is None:
        return QUIET
    todo, kept, notes = planned
    try:
        pipe = load_pipeline(args, device, (args.method,))
    except KeyboardInterrupt:
        if group.is_main:
            print(f"\ninterrupted while loading the model, before any image was restored into {out}")
        return 130
    batches = whole_batches(len(todo), args.batch_size, group.rank, group.world)
    skipped: list[tuple[int, Path, str]] = []  # (index in todo, input, why)
    done = 0
    desc = f"restore ({args.method})" + (f" [process 1 of {group.world}]" if group.world > 1 else "")
    mine = sum(len(todo[part]) for _, part in batches)
    bar = tqdm(total=mine, desc=desc, unit="image", disable=not group.is_main)
    kwargs = _call_kwargs(args)
    try:
        for index, part in batches:
            chunk, images = [], []
            for i, (src, rel, dst) in enumerate(todo[part], start=part.start):
                try:
                    scale = args.upscale or pipe.upscale  # the size the header declares, before decoding:
                    image = to_tensor(read_rgb(src, lambda w, h: output_size((h, w), scale)))
                    output_size(tuple(image.shape[-2:]), args.upscale or pipe.upscale)  # too large: say which, go on
                except (ImageSkip, ConfigError) as exc:
                    skipped.append((i, src, str(exc)))
                    bar.update(1)
                    continue
                images.append(image)
                chunk.append((src, rel, dst))
            if not chunk:
                continue
            prompts = prompts_for(args, [src for src, _, _ in chunk])
            restored = pipe(images, prompt=prompts, **_batch_draws(kwargs, args, index)).images
            for (src, rel, dst), im, res in zip(chunk, images, restored):
                dst.parent.mkdir(parents=True, exist_ok=True)
                if args.compare:  # first: an output that exists is a finished image
                    _save_compare(im, res, _compare_path(dst), args.method)
                _save(res, dst, _source(src, rel, args))
                done += 1
            bar.update(len(chunk))
    except KeyboardInterrupt:
        bar.close()
        if not group.is_main:
            return 130
        _write_skipped(out, [(p, why) for _, p, why in skipped])
        by = f" by process 1 of {group.world} (the others' are there too)" if group.world > 1 else ""
        print(
            f"\ninterrupted: {done} image(s) restored into {out}{by}, the one(s) in progress dropped; run the same "
            f"command again to resume"
        )
        return 130
    except OSError as exc:
        bar.close()
        if exc.errno not in REPORTED_ERRNOS:
            raise
        finished = f"the {done + kept} image(s)" if group.world == 1 else "the image(s)"
        raise VARestorerError(
            f"{os_error_message(exc)}: it resumes after {finished} finished in {out} (nothing half-written was left)"
        ) from exc
    bar.close()
    reports = group.gather((done, skipped))  # every process's: waits for the last one
    counts = [n for n, _ in reports]
    skipped = sorted(s for _, part in reports for s in part)
    if group.is_main:
        _summary(out, counts, kept, notes, [(p, why) for _, p, why in skipped])
    return 1 if sum(counts) == 0 and todo and not kept else 0


def _batch_draws(kwargs: dict, args: argparse.Namespace, index: int) -> dict:
    """The call's settings with batch ``index``'s own random draws (:func:`~.processes.batch_seed`:
    ``--seed`` for the first batch), the same whichever process restores it."""
    import torch

    from .processes import batch_seed

    seed = batch_seed(args.seed, index)
    if "generator" in kwargs:  # onestep: --decode gumbel
        return {**kwargs, "generator": torch.Generator().manual_seed(seed)}
    if "seed" in kwargs:  # the sampling methods
        return {**kwargs, "seed": seed}
    return kwargs


def _summary(out: Path, counts: list[int], kept: int, notes: list[str], skipped: list[tuple[Path, str]]) -> None:
    """What the run did: ``counts``: the images each process restored."""
    by = f" ({len(counts)} processes: {' + '.join(map(str, counts))})" if len(counts) > 1 else ""
    print(
        f"restored {sum(counts)} image(s) into {out}{by}"
        + (f"; kept {kept} existing (--overwrite replaces them)" if kept else "")
    )
    for note in notes:
        print(f"  {note}")
    _write_skipped(out, skipped)
    if skipped:
        print(f"skipped {len(skipped)} file(s), listed in {out / 'skipped.tsv'}:")
        for p, why in skipped[:10]:
            print(f"  {p}: {why}")


def _write_skipped(out: Path, skipped: list[tuple[Path, str]]) -> None:
    from ..outputs import write_text

    if skipped:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "skipped.tsv", "".join(f"{p}\t{why}\n" for p, why in skipped))
    elif (out / "skipped.tsv").is_file():  # an earlier run's: nothing is skipped now
        (out / "skipped.tsv").unlink()


def _call_kwargs(args) -> dict:
    return dict(
        method=args.method,
        upscale=args.upscale,
        mode=args.mode,
        tile_overlap=args.tile_overlap,
        batch_size=args.batch_size,
        tile_batch_size=args.tile_batch_size,
        output_type="pil",
        **method_kwargs(args, args.method),
    )


def _save(image, path: Path, source: dict | None = None) -> None:
    """Under a temporary name, renamed when complete: a crash, a full disk or Ctrl-C never leaves a
    half-written output under the final name. ``source`` (:func:`_source`) goes into its EXIF."""
    import json

    from PIL import Image

    from ..outputs import save_image

    fmt = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[path.suffix[1:]]
    exif = Image.Exif()
    if source is not None:
        exif[SOURCE_TAG] = json.dumps(source)
    save_image(image, path, format=fmt, exif=exif, **({"quality": 95} if fmt != "PNG" else {}))


def _save_compare(lq, restored, path: Path, method: str) -> None:
    import numpy as np
    import torch

    from ..inference.compare import comparison_strip
    from ..outputs import save_image

    res = torch.from_numpy(np.array(restored)).permute(2, 0, 1).float() / 255
    save_image(comparison_strip([lq, res], ["input", method]), path, format="PNG")


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
