"""``varestorer restore INPUT... -o OUT --model DIR_OR_HUB_ID``: restore images in one forward pass.

INPUT: image files or folders (walked recursively). Every image, whatever its size and mode
(grayscale, palette, RGBA, CMYK, 16-bit), is restored at ``--upscale`` times its size (default:
the scale the model was trained for): outputs up to the model's resolution go through one pass
at that resolution (the paper), larger ones are tiled with overlap and blended. Prompts: BLIP
captions of the model's own first restoration (default; ``--caption-from input`` captions the LQ
input), one ``--prompt`` for all, or none at all with ``--no-prompt`` (the paper's "w/o prompt"
ablation, Table A). Outputs keep the inputs' relative
paths under OUT, as PNG; an existing output is kept unless ``--overwrite``; an input is never
written over. Files that cannot be read are skipped and listed in ``OUT/skipped.tsv``.

``--method`` compares like with like through the same resizing and tiling: ``onestep``
(VARestorer), ``bicubic`` (no model needed), and the base model sampling scale by scale:
``zeroshot`` (the LQ tokens given at the first ``--num-given`` scales, the paper's Fig. 2a),
``multistep`` (from the prompt alone: conventional VAR inference), ``guided`` (training-free
measurement guidance: LQ tokens below scale ``--gamma``, gradient-guided logits above), and
``varsr`` for a model trained with ``recipes/ablation-no-distill.yaml`` (its LoRA samples scale by
scale with the LQ image as prefix tokens).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import (
    METHOD_CHOICES,
    add_method_options,
    add_prompt_options,
    add_running_options,
    load_pipeline,
    method_kwargs,
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
    g.add_argument("--upscale", type=float, default=None, help="output size / input size (default: the model's)")
    g.add_argument(
        "--mode",
        default="auto",
        choices=("auto", "resize", "tile"),
        help="auto: one pass when the output fits the model's resolution, tiles otherwise",
    )
    g.add_argument("--tile-overlap", type=int, default=None, help="tile overlap in pixels (default: 1/4 tile)")
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


def plan_outputs(found: list[tuple[Path, Path]], out: Path, ext: str) -> list[tuple[Path, Path]]:
    """``(input, output)`` pairs: unique output names, never an input's path."""
    from ..errors import ConfigError

    inputs = {p.resolve() for p, _ in found}
    used: set[Path] = set()
    pairs = []
    for path, rel in found:
        target = out / rel.with_suffix(f".{ext}")
        k = 1
        while target in used:
            target = out / rel.with_name(f"{rel.stem}-{k}.{ext}")
            k += 1
        used.add(target)
        if target.resolve() in inputs:
            raise ConfigError(f"restoring {path} would write over the input {target}; choose another -o folder")
        pairs.append((path, target))
    return pairs


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from ..data.images import ImageSkip, read_rgb, to_tensor
    from ..errors import ConfigError
    from ..inference.pipeline import output_size

    out = Path(args.output).expanduser()
    check_output_outside_inputs(args.inputs, out)
    pairs = plan_outputs(collect_inputs(args.inputs), out, args.ext)
    todo = [(i, o) for i, o in pairs if args.overwrite or not o.exists()]
    kept = len(pairs) - len(todo)
    if args.batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(args, device, (args.method,))
    skipped: list[tuple[Path, str]] = []
    bar = tqdm(total=len(todo), desc=f"restore ({args.method})", unit="image")
    for start in range(0, len(todo), args.batch_size):
        chunk, images = [], []
        for src, dst in todo[start : start + args.batch_size]:
            try:
                image = to_tensor(read_rgb(src))
                output_size(tuple(image.shape[-2:]), args.upscale or pipe.upscale)  # too large: say which, go on
            except (ImageSkip, ConfigError) as exc:
                skipped.append((src, str(exc)))
                bar.update(1)
                continue
            images.append(image)
            chunk.append((src, dst))
        if not chunk:
            continue
        restored = pipe(images, prompt=prompts_for(args, [src for src, _ in chunk]), **_call_kwargs(args)).images
        for (src, dst), im, res in zip(chunk, images, restored):
            dst.parent.mkdir(parents=True, exist_ok=True)
            _save(res, dst)
            if args.compare:
                _save_compare(im, res, dst.with_name(f"{dst.stem}_compare.png"), args.method)
        bar.update(len(chunk))
    bar.close()
    done = len(todo) - len(skipped)
    print(
        f"restored {done} image(s) into {out}" + (f"; kept {kept} existing (--overwrite replaces them)" if kept else "")
    )
    if skipped:
        out.mkdir(parents=True, exist_ok=True)
        (out / "skipped.tsv").write_text("".join(f"{p}\t{why}\n" for p, why in skipped))
        print(f"skipped {len(skipped)} file(s), listed in {out / 'skipped.tsv'}:")
        for p, why in skipped[:10]:
            print(f"  {p}: {why}")
    return 1 if done == 0 and todo and not kept else 0


def _call_kwargs(args) -> dict:
    return dict(
        method=args.method,
        upscale=args.upscale,
        mode=args.mode,
        tile_overlap=args.tile_overlap,
        batch_size=args.batch_size,
        output_type="pil",
        **method_kwargs(args, args.method),
    )


def _save(image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fmt = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[path.suffix[1:]]
    image.save(tmp, format=fmt, **({"quality": 95} if fmt != "PNG" else {}))
    tmp.replace(path)  # a crash never leaves a half-written output under the final name


def _save_compare(lq, restored, path: Path, method: str) -> None:
    import numpy as np
    import torch

    from ..inference.compare import comparison_strip

    res = torch.from_numpy(np.array(restored)).permute(2, 0, 1).float() / 255
    comparison_strip([lq, res], ["input", method]).save(path)


def register_bench(sub) -> None:
    p = sub.add_parser(
        "latency",
        help="seconds per image of onestep vs the multi-step methods, on the same weights",
        description="Time every restoration method side by side on random weights of a preset: the one-step "
        "pass vs scale-by-scale sampling (multistep with CFG, zeroshot, guided, varsr).",
    )
    p.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    p.add_argument("--resolution", type=int, default=None, help="image size (default: the preset's)")
    p.add_argument("--batch", type=int, default=1, help="images per call (default: 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per method (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (default: 1)")
    p.add_argument("--methods", default=None, help="comma-separated subset (default: all)")
    p.add_argument("--device", default=None, help="device (default: cuda if available)")
    p.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16", "float16"),
        help="autocast precision (default: bfloat16 on a GPU, float32 on a CPU)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    import json

    from ..errors import ConfigError
    from ..inference.bench import TIMED, bench_latency, format_latency

    methods = TIMED if args.methods is None else tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in TIMED]
    if unknown or not methods:
        raise ConfigError(f"--methods {args.methods!r}: choose among {', '.join(TIMED)}")
    r = bench_latency(
        args.preset,
        args.resolution,
        batch=args.batch,
        warmup=args.warmup,
        repeats=args.repeats,
        device=args.device,
        dtype=args.dtype,
        methods=methods,
    )
    print(json.dumps(r, indent=2) if args.json else format_latency(r))
    return 0
