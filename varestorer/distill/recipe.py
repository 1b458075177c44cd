"""Training recipes: YAML files in ``recipes/``, validated into typed sections.

A recipe is data. ``load_recipe("tiny", ["optim.lr=1e-4", "train.max_steps=20"])`` reads
``recipes/tiny.yaml`` (or a path), applies ``key=value`` overrides (values parsed as YAML),
and checks every key: an unknown one is an error naming the valid keys of its section. A recipe
may name a ``base:`` recipe and hold only what differs from it (the ablations do).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import ConfigError
from ..export.config import COLOR_FIXES, DECODINGS, DEFAULT_COLOR_FIX, RESIZES, TILE_WEIGHTS
from ..presets import get_preset
from ..resources import find_resource
from ..restorer.swinir import ARCHITECTURES
from ..safe_yaml import read_text, safe_load
from ..tokenizer.quantizer import LQ_INPUT_FORMS
from ..tokenizer.schedules import SQUARE_SIDES, num_tokens, scale_schedule, vae_downsample
from ..transformer.infinity import CrossAttnBlock
from .losses import SCALE_WEIGHTINGS


@dataclass
class ModelSection:
    preset: str = "infinity-2b"
    transformer: str | None = None  # the base (teacher): Hub repo id, folder or file; None = preset's official
    vae: str | None = None  # VAE checkpoint: Hub repo id or path; None = preset's official
    text_encoder: str | None = None  # T5 encoder: Hub id or path; None = preset's
    resolution: int = 512
    # random weights for the VAE and the transformer where no checkpoint is given above (pre-training
    # from scratch, tests, benchmarks); False: a part without a checkpoint loads the preset's weights
    random_init: bool = False
    # the stage-1 restorer (DiffBIR's SwinIR), frozen, run on the LQ image before the student's
    # encoder, in training and at inference (the released VARestorer's): a checkpoint file (DiffBIR's
    # general_swinir_v1.ckpt, a restorer.safetensors) or an export folder holding one; "preset": the
    # one shipped with the base preset (small); None: none
    restorer: str | None = None
    # clamp the restorer's input and output to [0, 1] in training, as the released trainer does
    # (its inference does not: the release's model was trained on clamped restorer outputs)
    restorer_clamp: bool = False
    # fine-tune a model: an export folder (an imported release, any run's final/): the student starts
    # from its adapter (and encoder), the base is its base (the teacher: that base, adapters off),
    # its VAE and restorer come with it; the student's form must be the export's
    init_from: str | None = None


@dataclass
class DataSection:
    dataset: str | None = None  # a folder written by `varestorer prepare`
    use_captions: bool = (
        True  # False: train with every caption empty (the paper's "w/o prompt" is an inference setting)
    )
    num_workers: int = 2
    random_crop: bool = True
    hflip: bool = False  # flip each HQ image left-right with probability 1/2 (seeded per sample), as the release


@dataclass
class DegradationSection:
    preset: str = "realesrgan-x4"
    scale: int = 4


@dataclass
class StudentSection:
    attention: str = "full"  # full (cross-scale pyramid conditioning) | causal (w/o cross ablation)
    # pyramid: position k reads the LQ codes accumulated through scale k (the paper's pyramid);
    # shifted: through scale k - 1, the teacher-forcing form (never shows the finest LQ scale);
    # tokens: scale k's own LQ codes, negated, at every scale (MultiScaleTokens.lq_input_sequence);
    # shifted_latent: the released VARestorer's (long_flip_requant): the shifted form, then one extra
    # block holding the whole LQ latent at the finest scale (needs attention: full)
    lq_input: str = "pyramid"
    # the first N scales of the restoration are the LQ tokens' own instead of predicted (0: the
    # paper's student, which predicts every scale); 1 keeps the LQ's 1x1 scale, its mean colour
    keep_lq_scales: int = 0
    lora_rank: int = 32
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(
        default_factory=lambda: ["sa.mat_qkv", "sa.proj", "ca.mat_q", "ca.mat_kv", "ca.proj"]
    )
    full_finetune: bool = False  # train every transformer weight (ablation); the teacher is then a frozen copy
    train_encoder: bool = True  # fine-tune a copy of the VAE encoder for the LQ pyramid
    # How the image the MSE and LPIPS see is decoded from the student's logits: argmax = the most
    # likely bits forward, the gradient through their probabilities (straight-through); gumbel = the
    # released trainer's logits_to_img: per bit a hard Gumbel-softmax sample at gumbel_tau forward,
    # the gradient through the Gumbel-perturbed softmax (its noise seeded per sample)
    decode: str = "argmax"
    gumbel_tau: float = 0.5
    # the share of captions replaced by cfg_uncond while the student trains (the release's BInfinity
    # cond_drop_rate=0.1); teacher and varsr modes use loss.text_dropout
    text_dropout: float = 0.0


@dataclass
class RestorerSection:
    """Training the stage-1 restorer (``mode: restorer``; see :mod:`varestorer.distill.restorer_module`)."""

    architecture: str = "small"  # a SwinIR preset: release (DiffBIR's, 15.8M) | small | tiny
    l1: float = 1.0
    mse: float = 0.0


@dataclass
class InferenceSection:
    """How the exported model restores by default (its export config; each is a pipeline and CLI
    option too). The released VARestorer's: gumbel, lanczos, gaussian."""

    decode: str = "argmax"  # argmax: the most likely bits | gumbel: each bit drawn from its Bernoulli
    resize: str = "bicubic"  # bicubic (torch) | lanczos (PIL, 8-bit)
    tile_weights: str = "linear"  # linear ramp over the overlap | gaussian (sigma 0.1 tile, reflect padding)
    color_fix: str = DEFAULT_COLOR_FIX  # wavelet | adain | none: the colour correction against the input


@dataclass
class LossSection:
    kl: float = 0.1
    lpips: float = 0.25
    mse: float = 0.5
    cross_entropy: float = 1.0  # teacher and varsr modes: next-scale bitwise cross-entropy
    # distill mode: the bitwise cross-entropy of the student's logits against the HQ tokens, weighted
    # over scales as scale_weighting says (0: computed and logged only, as the released trainer does)
    student_cross_entropy: float = 0.0
    # distill mode: the encoder copy's latent of the LQ image towards the frozen encoder's latent of
    # the HQ one (relative MSE): "high-quality multi-scale token maps" from the LQ (0: off, the paper's)
    encoder_latent: float = 0.0
    lpips_net: str = "vgg"
    lpips_pretrained: bool = True  # False: random VGG backbone (offline smoke tests only)
    # True: the images, in [-1, 1], go through LPIPS's [0, 1] -> [-1, 1] rescaling (2x - 1) once more,
    # as the released trainer calls pyiqa's lpips (which expects [0, 1]) on [-1, 1] images
    lpips_rescale: bool = False
    text_dropout: float = 0.1  # teacher and varsr modes: captions replaced by cfg_uncond, as Infinity trains
    # How tokens of different scales weigh in the KL and the cross-entropy (mean over the bits of a
    # token first): infinity = Infinity's reweight_loss_by_scale (weight ~ 1/side of the token's scale,
    # normalised to sum 1); per_scale = each scale's mean, summed over scales; flat = mean over tokens.
    scale_weighting: str = "infinity"


@dataclass
class SelfCorrectionSection:
    """Infinity's Bitwise Self-Correction (teacher mode): at each of the first ``layers`` scales,
    a random share in ``[0, strength]`` of the HQ bits is flipped in the teacher-forcing input, and
    the later scales' labels are re-quantized against the flipped accumulation, so the model learns
    to correct its own mistakes. Infinity's train.sh: 13 layers, strength 0.3 (with its
    ``noise_apply_requant=1``: without it the flips change nothing the model sees, so it is not an
    option here)."""

    layers: int = 0  # 0: off
    strength: float = 0.3


@dataclass
class TokenizerSection:
    """Training the BSQ-VAE (``mode: tokenizer``; see :mod:`varestorer.distill.tokenizer_module`)."""

    l1: float = 1.0
    mse: float = 0.0
    lpips: float = 0.1  # with the pretrained LPIPS (loss.lpips_net, loss.lpips_pretrained)
    commitment: float = 0.25  # Infinity's quantizer: commitment_loss_weight 0.25
    entropy: float = 0.1  # Infinity's quantizer: entropy_loss_weight 0.1
    inv_temperature: float = 100.0  # Infinity's quantizer
    codebook_entropy_weight: float = 1.0  # gamma of H_sample - gamma * H_codebook (Infinity's: 1)
    train_encoder: bool = True
    train_decoder: bool = True


@dataclass
class OptimSection:
    lr: float = 1e-6
    weight_decay: float = 1e-2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"  # a diffusers.optimization scheduler name, or lin0 (Infinity's)
    lr_warmup_steps: int = 0
    # lin0 only (Infinity's lr_wd_annealing, varestorer/distill/schedules.py): the warm-up starts at
    # lr_warmup_start x lr (Infinity's wp0) and the schedule ends at lr_end x lr (its wpe)
    lr_warmup_start: float = 0.005
    lr_end: float = 0.3
    encoder_lr: float | None = None  # the LQ encoder copy's learning rate (None: lr)


@dataclass
class TrainSection:
    global_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    max_steps: int = 10_000
    mixed_precision: str = "bf16"  # no | fp16 | bf16
    # bf16: the frozen weights (the transformer's blocks but their LayerNorms, T5) held in bf16 under
    # bf16 mixed precision, as diffusers' weight_dtype does: about half their memory (the 2B: 4.4 GB);
    # the trained weights stay float32. DDP or one process (FSDP and DeepSpeed flatten one dtype)
    frozen_dtype: str = "float32"  # float32 | bf16
    gradient_checkpointing: bool = True
    compile: bool = False
    seed: int = 0
    output_dir: str = "outputs/run"
    checkpointing_steps: int = 1000
    checkpoints_total_limit: int | None = 3
    max_nonfinite_steps: int = 5  # steps in a row with a non-finite loss/gradient (each skipped) before the run stops
    resume_from_checkpoint: str | None = None  # a checkpoint folder, or "latest"
    validation_steps: int = 500
    num_validation_images: int = 4  # images in each validation grid; 0: no grids
    log_steps: int = 10
    report_to: str = "tensorboard"  # tensorboard | wandb | all | none
    push_to_hub: bool = False
    hub_model_id: str | None = None


#: What a recipe trains (see :class:`Recipe`).
MODES = ("distill", "teacher", "varsr", "tokenizer", "restorer")
#: ``optim.lr_scheduler``: the diffusers schedules the trainer builds (``piecewise_constant`` needs
#: step rules a recipe does not give).
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "lin0",
)
#: ``loss.lpips_net``: the backbones of the lpips package.
LPIPS_NETS = ("vgg", "alex", "squeeze")


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric recipe field (finite, within bounds), said in its error."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself excluded
    hi_open: bool = False
    note: str = ""  # what the edge values mean, or a typical value

    def __contains__(self, value) -> bool:
        if not math.isfinite(value):
            return False
        if self.lo is not None and not (value > self.lo if self.lo_open else value >= self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def __str__(self) -> str:
        lo, hi = (f"{x:g}" if isinstance(x, float) else str(x) for x in (self.lo, self.hi))
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {lo}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {hi}"
        return "a finite number"


_WEIGHT = Range(0, note="0 turns the term off")
#: The range of every numeric field of a recipe (tests check that none is missing). Those checked
#: against the scale schedule instead: model.resolution, student.keep_lq_scales.
RANGES: dict[str, Range] = {
    "data.num_workers": Range(0, note="0 loads the data in the training process"),
    "degradation.scale": Range(1, note="the super-resolution factor: 4 in the paper"),
    "student.lora_rank": Range(1, note="the paper's is 32"),
    "student.lora_alpha": Range(0, lo_open=True, note="the LoRA scale is alpha / rank; the paper's alpha = rank"),
    "student.lora_dropout": Range(0, 1, hi_open=True),
    "student.gumbel_tau": Range(0, lo_open=True, note="the release's is 0.5"),
    "student.text_dropout": Range(0, 1, note="the share of captions replaced by the empty one; the release's 0.1"),
    "restorer.l1": _WEIGHT,
    "restorer.mse": _WEIGHT,
    "loss.kl": _WEIGHT,
    "loss.lpips": _WEIGHT,
    "loss.mse": _WEIGHT,
    "loss.cross_entropy": _WEIGHT,
    "loss.student_cross_entropy": _WEIGHT,
    "loss.encoder_latent": _WEIGHT,
    "loss.text_dropout": Range(0, 1, note="the share of captions replaced by the empty one"),
    "self_correction.layers": Range(0, note="0 turns it off"),
    "self_correction.strength": Range(0, 1),
    "tokenizer.l1": _WEIGHT,
    "tokenizer.mse": _WEIGHT,
    "tokenizer.lpips": _WEIGHT,
    "tokenizer.commitment": _WEIGHT,
    "tokenizer.entropy": _WEIGHT,
    "tokenizer.inv_temperature": Range(0, lo_open=True, note="Infinity's is 100"),
    "tokenizer.codebook_entropy_weight": Range(0, note="Infinity's is 1"),
    "optim.lr": Range(0, lo_open=True, note="the paper's is 1e-6 for Infinity-2B"),
    "optim.weight_decay": Range(0, note="AdamW's decoupled decay; 0: none"),
    "optim.betas": Range(0, 1, hi_open=True, note="AdamW's (beta1, beta2), e.g. [0.9, 0.999]"),
    "optim.eps": Range(0, lo_open=True, note="AdamW's, e.g. 1e-8"),
    "optim.max_grad_norm": Range(0, note="0: no gradient clipping"),
    "optim.lr_warmup_steps": Range(0),
    "optim.lr_warmup_start": Range(0, 1, note="lin0: the first warm-up lr as a share of optim.lr (Infinity's 0.005)"),
    "optim.lr_end": Range(0, 1, note="lin0: the last lr as a share of optim.lr; 1 keeps it constant"),
    "optim.encoder_lr": Range(0, lo_open=True, note="or null: optim.lr"),
    "train.global_batch_size": Range(1),
    "train.gradient_accumulation_steps": Range(1),
    "train.max_steps": Range(1),
    "train.seed": Range(0, 2**32 - 1),
    "train.checkpointing_steps": Range(1),
    "train.checkpoints_total_limit": Range(1, note="or null to keep every checkpoint"),
    "train.max_nonfinite_steps": Range(1, note="steps in a row with a non-finite loss before the run stops"),
    "train.validation_steps": Range(1),
    "train.num_validation_images": Range(0, note="0: no validation grids"),
    "train.log_steps": Range(1),
}


def lora_target_names() -> tuple[str, ...]:
    """The linear layers of an Infinity block that ``student.lora_targets`` may name."""
    import torch.nn as nn

    block = CrossAttnBlock(8, 2, 16, 1e-6)
    return tuple(name for name, m in block.named_modules() if isinstance(m, nn.Linear))


@dataclass
class Recipe:
    """A whole training recipe. ``mode``: ``distill`` (VARestorer), ``teacher`` (Infinity
    fine-tuning with the next-scale bitwise cross-entropy) or ``varsr`` (the multi-step,
    image-conditioned VAR of VARSR, the paper's "w/o distill": the LQ image's quantized latent as
    prefix tokens, the same LoRA and encoder as the student, next-scale cross-entropy on the HQ
    tokens; restored scale by scale with ``--method varsr``) or ``tokenizer`` (the BSQ-VAE itself:
    reconstruction, commitment and entropy losses; the ``tokenizer`` section)."""

    name: str = "recipe"
    mode: str = "distill"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    degradation: DegradationSection = field(default_factory=DegradationSection)
    student: StudentSection = field(default_factory=StudentSection)
    loss: LossSection = field(default_factory=LossSection)
    self_correction: SelfCorrectionSection = field(default_factory=SelfCorrectionSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    inference: InferenceSection = field(default_factory=InferenceSection)
    restorer: RestorerSection = field(default_factory=RestorerSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> Recipe:  # noqa: C901
        choices = {
            "mode": (self.mode, MODES),
            "student.attention": (self.student.attention, ("full", "causal")),
            "student.lq_input": (self.student.lq_input, LQ_INPUT_FORMS),
            "student.decode": (self.student.decode, ("argmax", "gumbel")),
            "inference.decode": (self.inference.decode, DECODINGS),
            "inference.resize": (self.inference.resize, RESIZES),
            "inference.tile_weights": (self.inference.tile_weights, TILE_WEIGHTS),
            "inference.color_fix": (self.inference.color_fix, COLOR_FIXES),
            "restorer.architecture": (self.restorer.architecture, tuple(ARCHITECTURES)),
            "loss.scale_weighting": (self.loss.scale_weighting, SCALE_WEIGHTINGS),
            "train.mixed_precision": (self.train.mixed_precision, ("no", "fp16", "bf16")),
            "train.frozen_dtype": (self.train.frozen_dtype, ("float32", "bf16")),
            "train.report_to": (self.train.report_to, ("tensorboard", "wandb", "all", "none")),
            "optim.lr_scheduler": (self.optim.lr_scheduler, LR_SCHEDULERS),
            "loss.lpips_net": (self.loss.lpips_net, LPIPS_NETS),
        }
        for key, (value, valid) in choices.items():
            if value not in valid:
                raise ConfigError(f"{key}={value!r} is not valid; choose one of {', '.join(valid)}")
        self._check_ranges()
        s = self.student
        targets = lora_target_names()
        unknown = [t for t in s.lora_targets if t not in targets]
        if not s.lora_targets or unknown:
            got = f"{unknown[0]!r} is not a layer of a block" if unknown else "the list is empty"
            raise ConfigError(
                f"student.lora_targets must name one or more linear layers of an Infinity block ({got}); "
                f"choose among {', '.join(targets)} (the paper's: sa.mat_qkv, sa.proj, ca.mat_q, ca.mat_kv, ca.proj)"
            )
        if not str(self.train.output_dir).strip():
            raise ConfigError("train.output_dir is empty; name the run folder, e.g. train.output_dir=outputs/run")
        if self.train.push_to_hub and not self.train.hub_model_id:
            raise ConfigError(
                "train.push_to_hub=true needs train.hub_model_id=USER/NAME (the token comes from "
                "`huggingface-cli login` or HF_TOKEN, never from the recipe)"
            )
        if not 0 <= self.self_correction.strength <= 1 or self.self_correction.layers < 0:
            raise ConfigError("self_correction.strength must be in [0, 1] and self_correction.layers >= 0")
        if self.self_correction.layers and self.mode != "teacher":
            raise ConfigError("self_correction is Infinity's training of the teacher: it needs mode=teacher")
        if self.mode == "tokenizer" and not (self.tokenizer.train_encoder or self.tokenizer.train_decoder):
            raise ConfigError(
                "mode=tokenizer trains nothing with tokenizer.train_encoder=false and train_decoder=false"
            )
        if self.mode == "distill" and self.student.lq_input == "shifted_latent" and self.student.attention != "full":
            raise ConfigError(
                "student.lq_input=shifted_latent (the release's input: an extra block after the scales) is read "
                "in one pass with student.attention=full; for block-causal attention use student.lq_input=shifted"
            )
        if self.model.init_from is not None and (
            self.mode != "distill" or self.model.transformer is not None or self.model.vae is not None
        ):
            raise ConfigError(
                "model.init_from fine-tunes an exported one-step model (mode distill): its base transformer and "
                "VAE come from the export, so leave model.transformer and model.vae null"
            )
        lw = self.loss
        if self.mode == "distill" and not any((lw.kl, lw.lpips, lw.mse, lw.student_cross_entropy, lw.encoder_latent)):
            raise ConfigError(
                "mode=distill with every loss weight 0 trains nothing: give loss.kl, loss.lpips, loss.mse or "
                "loss.student_cross_entropy a weight (the paper: kl 0.1, lpips 0.25, mse 0.5; the release: lpips 1, mse 1)"
            )
        if self.mode == "varsr" and self.student.attention != "causal":
            raise ConfigError("mode=varsr predicts scale by scale: it needs student.attention=causal")

        preset = get_preset(self.model.preset)  # unknown presets and resolutions: before anything is built
        schedule = scale_schedule(self.model.resolution, vae_downsample(preset.vae["ch_mult"]))
        if self.degradation.scale > self.model.resolution:
            raise ConfigError(
                f"degradation.scale={self.degradation.scale} makes {self.model.resolution} px images "
                f"{self.model.resolution // self.degradation.scale} px LQ inputs; use a scale of at most "
                f"{self.model.resolution} at this resolution (the paper's is 4)"
            )
        if not 0 <= self.student.keep_lq_scales < len(schedule):
            raise ConfigError(
                f"student.keep_lq_scales must be in [0, {len(schedule) - 1}] (the {self.model.resolution} px "
                f"schedule has {len(schedule)} scales); got {self.student.keep_lq_scales}"
            )
        if self.mode == "distill" and self.student.lq_input == "shifted_latent":
            side = schedule[-1][0]
            if num_tokens([(s, s) for s in SQUARE_SIDES]) < num_tokens(schedule) + side * side:
                raise ConfigError(
                    f"student.lq_input=shifted_latent at {self.model.resolution} px: the extra block's RoPE "
                    f"positions continue Infinity's 1M table, which ends at the 1024 px schedule; use "
                    f"student.lq_input=shifted (or pyramid) at this resolution"
                )
        if self.train.resume_from_checkpoint == "":
            self.train.resume_from_checkpoint = None
        return self

    def _check_ranges(self) -> None:
        """Every numeric field within its :data:`RANGES` entry: one error naming the field, the value
        and the valid range (a value torch or peft would crash on later, or silently misuse)."""
        for key, rng in RANGES.items():
            section, name = key.split(".")
            value = getattr(getattr(self, section), name)
            if value is None and key in ("optim.encoder_lr", "train.checkpoints_total_limit"):
                continue
            values, what = ([value], str(rng)) if not isinstance(value, list) else (value, f"two numbers {rng}")
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):  # before the range: inf is > 0
                raise ConfigError(f"{key} must be a finite number, {what} (got {_short(value)})")
            if any(v not in rng for v in values) or (key == "optim.betas" and len(values) != 2):
                note = f"; {rng.note}" if rng.note else ""
                raise ConfigError(f"{key} must be {what} (got {_short(value)}){note}")


def _coerce(value, tp, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {_short(value)}")
        inner = typing.get_args(tp)
        return [_coerce(v, inner[0], f"{key}[{i}]") for i, v in enumerate(value)] if inner else list(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, bool, str, float) and type(value) is not tp:
        raise ConfigError(f"{key} must be {tp.__name__}, got {_short(value)}")
    return value


def _short(value) -> str:
    """``repr`` of a value, cut short (an error message is one paragraph whatever the value)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _build(cls, data: dict, prefix: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'recipe'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = prefix.rstrip(".") or "the recipe"
        raise ConfigError(
            f"unknown key {prefix + unknown[0]!r} in {where}{_did_you_mean(prefix, unknown[0])}; "
            f"valid keys: {', '.join(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}")
    return cls(**kwargs)


def _all_keys(cls=None, prefix: str = "") -> list[str]:
    """Every dotted key of the recipe: ``train.max_steps``, ``optim.lr``, ..."""
    out = []
    for f in dataclasses.fields(cls or Recipe):
        tp = typing.get_type_hints(cls or Recipe)[f.name]
        out += _all_keys(tp, f"{prefix}{f.name}.") if dataclasses.is_dataclass(tp) else [prefix + f.name]
    return out


def _did_you_mean(prefix: str, key: str) -> str:
    """`` (did you mean train.max_steps?)`` for a key that exists in another section, or a typo."""
    import difflib

    keys = _all_keys()
    exact = [k for k in keys if k.rsplit(".", 1)[-1] == key]
    close = exact or difflib.get_close_matches(prefix + key, keys, n=1, cutoff=0.8)
    return f" (did you mean {close[0]}?)" if close else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``["optim.lr=1e-4", "train.max_steps=10"]`` -> nested dict updates (values parsed as YAML)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        try:
            node[leaf] = safe_load(raw, f"the override {key}=...", "a recipe value")
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"override {item!r}: the value is not valid YAML ({getattr(exc, 'problem', None) or exc}); "
                f"give a YAML value, quoted for the shell: '{key}=1e-4', '{key}=[a, b]', '{key}=null'"
            ) from None
    return data


def _read_yaml(path: Path) -> dict:
    try:
        data = safe_load(read_text(path, "YAML recipe"), str(path), "a recipe") or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        raise ConfigError(
            f"{path} is not a valid YAML recipe{at}: {getattr(exc, 'problem', None) or exc}; "
            f"see recipes/tiny.yaml for the form"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of sections (see recipes/tiny.yaml), got {type(data).__name__}")
    return data


def _merge(base: dict, child: dict) -> dict:
    """``child`` over ``base``, section by section (lists and values are replaced whole)."""
    out = dict(base)
    for key, value in child.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_recipe(name_or_path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """The recipe's YAML as a dict, with its ``base:`` recipe (a name, or a path relative to the
    recipe) merged under it: an ablation is its base plus the lines that differ."""
    path = find_resource("recipes", str(name_or_path)).resolve()
    if path in _chain:
        loop = " -> ".join(p.name for p in (*_chain, path))
        raise ConfigError(f"recipe bases loop: {loop}; remove one of the base: keys")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be the name or path of another recipe, got {base!r}")
    local = path.parent / base
    local = local if local.is_file() else local.with_name(local.name + ".yaml")
    parent = read_recipe(local if local.is_file() else base, (*_chain, path))
    parent.pop("name", None)  # a recipe's name is its own
    return _merge(parent, data)


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    path = find_resource("recipes", name_or_path)
    data = read_recipe(path)
    data.setdefault("name", Path(path).stem)
    return _build(Recipe, apply_overrides(data, list(overrides or []))).validate()


def recipe_from_dict(data: dict) -> Recipe:
    return _build(Recipe, data).validate()
