"""The options ``restore`` and ``evaluate`` share: prompts, running, method settings, and loading
the pipeline they name (imports of torch and the models stay inside functions: ``--help`` is fast)."""

from __future__ import annotations

import argparse
import functools
import math
from pathlib import Path

from ..methods import BASE_SAMPLING, METHOD_NAMES, METHODS

#: ``--method`` values: the methods' table (plain data, no torch).
METHOD_CHOICES = METHOD_NAMES
#: ``--color-fix`` values (varestorer.export.config.COLOR_FIXES; kept here so --help imports no torch).
COLOR_FIX_CHOICES = ("none", "adain", "wavelet")


def number(
    kind: type = float, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, note: str = ""
):
    """An argparse ``type=``: a finite ``kind`` (int or float) in ``[lo, hi]`` (``(lo, hi]`` with
    ``lo_open``); anything else is argparse's one-line error (exit 2) naming the option, the value
    and the valid range, e.g. ``argument --upscale: must be a number > 0, got 'nan'``."""
    word = "an integer" if kind is int else "a number"
    lo_, hi_ = (f"{x:g}" if isinstance(x, float) else str(x) for x in (lo, hi))
    if lo is not None and hi is not None:
        valid = f"{word} in {'(' if lo_open else '['}{lo_}, {hi_}]"
    elif lo is not None:
        valid = f"{word} {'>' if lo_open else '>='} {lo_}"
    else:
        valid = f"a finite {word.split()[1]}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        ok = value is not None and math.isfinite(value)
        ok = ok and (lo is None or (value > lo if lo_open else value >= lo)) and (hi is None or value <= hi)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {valid}, got {text!r}" + (f" ({note})" if note else ""))
        return value

    parse.__name__ = valid  # what argparse would name in its own message
    return parse


def device_name(text: str, allow_meta: bool = False) -> str:
    """An argparse ``type=`` for ``--device``: ``cpu``, ``cuda``, ``cuda:N`` (present here) or ``mps``."""
    import torch

    kinds = "cpu, cuda, cuda:N, mps" + (" or meta" if allow_meta else "")
    try:
        d = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use {kinds}") from None
    if d.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise argparse.ArgumentTypeError(
                f"{text}: no CUDA GPU is usable here (torch.cuda.is_available() is False); use --device cpu"
            )
        if d.index is not None and d.index >= n:
            raise argparse.ArgumentTypeError(f"{text}: this machine has {n} GPU(s), cuda:0 to cuda:{n - 1}")
    elif d.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text}: no Apple GPU (MPS) here; use --device cpu")
    elif not (d.type == "cpu" or (allow_meta and d.type == "meta")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device this toolkit runs on; use {kinds}")
    return text


def meta_device_name(text: str) -> str:
    return device_name(text, allow_meta=True)


#: Seeds: what ``torch.Generator.manual_seed`` takes.
SEED = number(int, 0, 2**63 - 1)


def add_prompt_options(p) -> None:
    """Where prompts come from (``restore`` and ``evaluate`` share them)."""
    g = p.add_argument_group("prompts")
    g.add_argument(
        "--caption",
        default="blip",
        metavar="{blip,none,FILE}",
        help="where prompts come from when --prompt is not given (default: blip; none: empty "
        "prompts, with a warning for a model trained with captions; FILE: a caption file, JSON "
        'lines {"path": ..., "caption": ...} with paths as given or by file name)',
    )
    g.add_argument(
        "--caption-from",
        default=None,
        choices=("restored", "input", "restorer"),
        help="what BLIP looks at: the model's own one-pass restoration without a prompt (default, "
        "as training captioned clean images), the LQ input, or the stage-1 restorer's output "
        "(the default for a model with one, as the release's evaluation captions)",
    )
    g.add_argument(
        "--caption-model", default=None, help="BLIP Hub id or folder (default Salesforce/blip-image-captioning-large)"
    )
    prompt = g.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default=None, help="one prompt for every image")
    prompt.add_argument(
        "--no-prompt",
        dest="prompt",
        action="store_const",
        const="",
        help="restore with an empty prompt: the paper's 'w/o prompt' ablation (Table A)",
    )


def prompts_for(args, paths: list[Path]) -> str | list[str] | None:
    """The prompt of each image: ``--prompt`` for all, else the caption file's (``--caption FILE``;
    looked up by the path as given, then by file name), else None (the pipeline captions or warns)."""
    if args.prompt is not None or args.caption in ("blip", "none"):
        return args.prompt
    return _caption_file(args.caption).prompts_for(paths)


@functools.cache
def _caption_file(path: str):
    """A caption file, read once."""
    from ..data.captions import CaptionFile
    from ..errors import ConfigError

    if not Path(path).is_file():
        raise ConfigError(f"--caption {path}: not blip, none or a caption file")
    return CaptionFile(path)


def add_running_options(p) -> None:
    """Batch, device, precision and the checkpoints a model names (shared with ``evaluate``)."""
    g = p.add_argument_group("running")
    g.add_argument("--batch-size", type=number(int, 1), default=4, help="images per forward pass (default: 4)")
    g.add_argument(
        "--tile-batch-size",
        type=number(int, 1),
        default=1,
        help="tiles of a large image per forward pass (default: 1, the release's: each tile's output "
        "independent of the others; more is faster on a GPU, its rounding and draws then depend on the batch)",
    )
    g.add_argument("--device", type=device_name, default=None, help="cuda, cuda:1, cpu (default: cuda if present)")
    g.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16", "float16"),
        help="autocast precision (default: bfloat16 on a GPU, float32 on a CPU)",
    )
    g.add_argument(
        "--offload",
        action="store_true",
        help="hold the models in CPU memory and bring each to the GPU only for its step (T5, BLIP, "
        "restorer, encoder, transformer, VAE): less GPU memory, slower (varestorer bench memory)",
    )
    g.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="CPU only: the transformer's block Linears in int8 (oneDNN, weights per channel, activations "
        "per tensor): faster than bfloat16 on a CPU at a small cost in PSNR (docs/real-size.md); onestep, "
        "restorer and varsr methods",
    )
    g.add_argument(
        "--attention-kernel",
        choices=("sdpa", "matmul"),
        default="sdpa",
        help="how the one-step pass's self-attention is computed: sdpa (torch's kernels, default) or matmul "
        "(two matrix products and a softmax: faster on a CPU in bfloat16, docs/real-size.md)",
    )
    g.add_argument("--base", help="base transformer checkpoint, when not the one the model names")
    g.add_argument("--vae", help="VAE checkpoint, when not the one the model names")
    g.add_argument("--text-encoder", help="T5 encoder (Hub id or folder), when not the one the model names")


def add_method_options(p) -> None:
    """The settings of the sampling methods (``restore`` and ``evaluate`` share them)."""
    g = p.add_argument_group(
        "sampling methods (zeroshot, multistep, guided, varsr)",
        "unset sampler settings are the base preset's (Infinity's released: cfg 4, tau 0.5, top_k 900, top_p 0.97)",
    )
    g.add_argument(
        "--num-given", type=number(int, 0), default=4, help="zeroshot: scales given from the LQ image (default 4)"
    )
    g.add_argument(
        "--gamma",
        type=number(int, 1),
        default=None,
        help="guided: first guided scale, 1-indexed (default: 8/10 of the scales, the paper's)",
    )
    g.add_argument(
        "--alpha", type=number(float, 0), default=None, help="guided: step on the logits (default 1, the paper's)"
    )
    g.add_argument("--cfg", type=number(float), default=None, help="classifier-free guidance scale (1: none)")
    g.add_argument("--tau", type=number(float, 0, lo_open=True), default=None, help="temperature (> 0)")
    g.add_argument("--top-k", type=number(int, 0), default=None, help="keep the k most likely values (0: off)")
    g.add_argument("--top-p", type=number(float, 0, 1), default=None, help="nucleus sampling (0: off)")
    g.add_argument("--seed", type=SEED, default=0, help="the sampling methods' and --decode gumbel's draws")
    g.add_argument(
        "--decode",
        default=None,
        choices=("argmax", "gumbel"),
        help="onestep: the most likely bits, or each bit drawn from its Bernoulli (the release's); default: the model's",
    )
    g.add_argument(
        "--no-restorer",
        action="store_true",
        help="onestep: skip the model's stage-1 restorer (the paper's 'w/o restorer', Table A)",
    )
    g.add_argument(
        "--lq-scales",
        type=number(int, 0),
        default=None,
        help="onestep: the fidelity <-> realism knob: how many of the coarsest scales are the LQ tokens' own "
        "(0: all predicted; the number of scales: the LQ tokens decoded, the most faithful); default: the model's",
    )
    g.add_argument(
        "--color-fix",
        default=None,
        choices=COLOR_FIX_CHOICES,
        help="correct the restoration's colour against the input (as StableSR/OSEDiff): AdaIN, wavelet "
        "(low frequencies from the input) or none; default for onestep/varsr: the model's own (its export's color_fix: "
        "wavelet for the toolkit's models, none for the authors' release), none for the baselines",
    )


def method_kwargs(args, method: str) -> dict:
    """The pipeline settings of ``method`` from the parsed options (with ``--color-fix`` and
    ``--lq-scales`` when given: the pipeline says which methods take them)."""
    given = {k: getattr(args, k, None) for k in ("color_fix", "lq_scales")}
    return {**{k: v for k, v in given.items() if v is not None}, **_method_settings(args, method)}


#: The method settings (:attr:`varestorer.methods.Method.settings`) that are options of the same name.
_OPTIONS = ("decode", "num_given", "gamma", "alpha", "cfg", "tau", "top_k", "top_p", "seed")


def _method_settings(args, method: str) -> dict:
    """The settings ``method`` takes, from the options of the same name (the one-step method's
    ``--decode gumbel`` draws from the run's generator; the sampling methods draw from ``--seed``)."""
    settings = METHODS[method].settings
    kwargs = {k: getattr(args, k) for k in _OPTIONS if k in settings}
    if method == "onestep":
        kwargs["generator"] = _generator(args)
    return kwargs


def _generator(args):
    """One generator for the whole run (seeded with --seed): ``evaluate``'s batches draw in sequence
    (``restore`` gives each batch its own, :func:`~.processes.batch_seed`, so that a split run draws
    the same)."""
    import torch

    if getattr(args, "_generator", None) is None:
        args._generator = torch.Generator().manual_seed(args.seed)
    return args._generator


def load_pipeline(args, device: str, methods: tuple[str, ...]):
    """The pipeline of ``--model`` (with BLIP when prompts are to be captioned), or for
    ``bicubic`` alone without a model, the pipeline's resizing."""
    import torch

    from ..errors import ConfigError

    if args.model is None:
        needing = [m for m in methods if METHODS[m].needs_model]
        if needing:
            raise ConfigError(f"--method {needing[0]} needs --model (an export folder or a Hub repo id)")
        from ..inference.pipeline import BicubicPipeline

        return BicubicPipeline(getattr(args, "upscale", None) or 4.0)
    from ..inference import VARestorerPipeline

    if getattr(args, "quantize", None):
        base_sampling = [m for m in methods if m in BASE_SAMPLING]
        if base_sampling or args.offload or not str(device).startswith("cpu"):
            why = f"--method {base_sampling[0]} samples the base model" if base_sampling else "it is for the CPU"
            raise ConfigError(
                f"--quantize {args.quantize}: {why}; leave it out (or use --device cpu without --offload)"
            )
    dtype = args.dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")
    pipe = VARestorerPipeline.from_pretrained(
        args.model, base=args.base, vae=args.vae, text_encoder=args.text_encoder, torch_dtype=getattr(torch, dtype)
    )
    if getattr(args, "offload", False):
        pipe.to(dtype=getattr(torch, dtype)).enable_model_cpu_offload(device)
    else:
        pipe.to(device, getattr(torch, dtype))
    if getattr(args, "quantize", None):
        pipe.quantize(args.quantize)
    pipe.set_attention_kernel(getattr(args, "attention_kernel", "sdpa"))
    pipe.enable_stage1(not args.no_restorer)
    wants_captions = any(m != "bicubic" for m in methods) and args.prompt is None and pipe.config.use_captions
    if args.caption not in ("blip", "none"):
        prompts_for(args, [])  # a caption file: read (and checked) now, before any restoration
    elif wants_captions and args.caption == "blip":
        from ..data.captions import DEFAULT_BLIP, BlipCaptioner

        pipe.set_captioner(
            BlipCaptioner(args.caption_model or DEFAULT_BLIP, device=device, batch_size=args.batch_size),
            caption_from=args.caption_from or ("restorer" if pipe.stage1 is not None else "restored"),
        )
    return pipe
