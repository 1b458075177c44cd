"""Teacher and student in one module: what one training step computes (docs/method.md, "What the step computes, exactly").

One class per mode (:data:`MODE_CLASSES`, built by ``VARestorerModel.from_recipe``), on a base
that holds the parts they share. :class:`DistillModel`'s step runs, for a batch of HQ crops with
captions:
on-device degradation -> T5 features (cached) -> HQ tokens (frozen VAE) -> frozen teacher
(block-causal, teacher-forced, no grad) -> student (same base weights + LoRA, full attention,
LQ pyramid from a trainable copy of the VAE encoder) -> ``0.1 KL + 0.25 LPIPS + 0.5 MSE`` with
straight-through decoding of the student's bits. :class:`TeacherModel`'s is Infinity's own
next-scale bitwise cross-entropy on the HQ tokens (with Infinity's Bitwise Self-Correction when
the recipe asks for it). :class:`VARSRModel`'s (the paper's "w/o distill") is the same cross-entropy
training the LoRA and the LQ encoder of a multi-step restorer: block-causal next-scale prediction
of the HQ tokens with the LQ image's quantized latent as VARSR's prefix tokens.

Frozen parts (VAE, T5, LPIPS, a frozen teacher copy) stay in eval mode whatever ``train()`` says:
LPIPS has dropout, and a validation pass must not change the next step's losses.

One copy of the base weights serves both: the teacher is the student with its adapters
disabled (``peft``'s ``disable_adapter``). Only full fine-tuning (an ablation) keeps a frozen copy.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..degradations import DegradationPipeline
from ..errors import ConfigError
from ..evaluation.metrics import build_lpips
from ..export import ExportConfig, load_export, write_export
from ..presets import get_preset
from ..restorer import RESTORER_FILE, load_restorer
from ..tokenizer import MultiScaleBSQ
from ..tokenizer.loading import build_vae, load_vae
from ..transformer.loading import build_transformer, load_transformer
from ..transformer.lora import adapters_disabled, apply_lora, is_adapted, lora_rank
from ..transformer.sampling import sample
from ..transformer.text import TextEncoder
from .heldout import teacher_cross_entropy
from .losses import bit_probabilities, bitwise_cross_entropy, bitwise_kl, gumbel_straight_through_bits
from .module import TrainingModule
from .recipe import Recipe

logger = logging.getLogger(__name__)


def check_base_checkpoint(recipe: Recipe) -> None:
    """A base (teacher) or a stage-1 restorer given as a local file must exist: say how to make it or
    what to use instead."""
    wanted = recipe.model.transformer
    if wanted is not None and not Path(wanted).exists() and wanted.endswith((".safetensors", ".pth", ".pt", ".bin")):
        hint = ""
        if recipe.mode in ("distill", "varsr"):
            hint = (
                " The paper distils from Infinity fine-tuned at 512 px: make it first with\n"
                "  accelerate launch distill.py --recipe recipes/teacher-512.yaml\n"
                "(its final/transformer.safetensors is this file), or distil from the public checkpoint "
                "with the override model.transformer=null."
            )
        raise ConfigError(f"model.transformer={wanted} does not exist.{hint}")
    restorer_source(recipe)


def restorer_source(recipe: Recipe) -> Path | None:
    """The stage-1 restorer ``model.restorer`` names: a checkpoint file or a folder holding one, or
    ``preset``: the one shipped with the base preset (``varestorer/assets/small/restorer.safetensors``)."""
    name = recipe.model.restorer
    if name is None:
        return None
    if name == "preset":
        preset = get_preset(recipe.model.preset)
        folder = preset.weights_dir()
        if folder is None or not (folder / RESTORER_FILE).is_file():
            raise ConfigError(
                f"model.restorer=preset: the {preset.name} preset ships no stage-1 restorer (only 'small' does); "
                f"name a checkpoint (DiffBIR's general_swinir_v1.ckpt for Infinity-2B) or model.restorer=null"
            )
        return folder / RESTORER_FILE
    path = Path(name).expanduser()
    if not path.exists():
        raise ConfigError(
            f"model.restorer={name} does not exist. The release's stage-1 restorer is DiffBIR's SwinIR: "
            f"huggingface-cli download lxq007/DiffBIR general_swinir_v1.ckpt --local-dir weights; the small "
            f"preset's ships with it (model.restorer=preset); or restore without one (the paper's "
            f"'w/o restorer'): model.restorer=null"
        )
    return path


def recipe_restorer(recipe: Recipe):
    """The stage-1 restorer ``model.restorer`` names, loaded (:func:`restorer_source`); ``None`` without one."""
    source = restorer_source(recipe)
    return None if source is None else load_restorer(source)


def _step_parts(recipe: Recipe) -> tuple[DegradationPipeline | None, torch.nn.Module | None]:
    """The degradation pipeline (the modes that read an LQ image) and LPIPS (distillation, when weighed)."""
    degradation = None
    if recipe.mode in ("distill", "varsr"):
        degradation = DegradationPipeline.from_preset(recipe.degradation.preset, scale=recipe.degradation.scale)
    lpips = None
    if recipe.mode == "distill" and recipe.loss.lpips > 0:
        lpips = build_lpips(recipe.loss.lpips_net, pretrained=recipe.loss.lpips_pretrained)
    return degradation, lpips


class VARestorerModel(TrainingModule):
    def __init__(
        self, recipe: Recipe, vae, transformer, text_encoder, degradation, lpips=None, restorer=None, init=None
    ):
        super().__init__()
        self.recipe = recipe
        self.mode = recipe.mode
        self.schedule = vae.schedule(recipe.model.resolution)
        # outside the module tree: accelerate's DDP/FSDP/DeepSpeed see only the transformer and the encoder copy
        self.hold_outside(
            vae=vae.eval().requires_grad_(False),
            text_encoder=text_encoder,
            lpips=lpips,
            stage1=restorer.eval().requires_grad_(False) if restorer is not None else None,
        )
        self.degradation = degradation
        s = recipe.student
        self.teacher = None
        if self.mode == "teacher" or s.full_finetune:
            self.transformer = transformer.requires_grad_(True)
            if self.mode == "distill" and recipe.loss.kl > 0:  # full fine-tuning: the teacher must stay fixed
                self.teacher = copy.deepcopy(transformer).eval().requires_grad_(False)
        elif is_adapted(transformer):  # model.init_from: the export's adapter trains on
            self.transformer = transformer.requires_grad_(False)
            for name, p in transformer.named_parameters():
                p.requires_grad_("lora_" in name)
        else:
            self.transformer = apply_lora(
                transformer.requires_grad_(False),
                rank=s.lora_rank,
                alpha=s.lora_alpha,
                dropout=s.lora_dropout,
                targets=s.lora_targets,
            )
        self.init = init  # the ExportParts the student started from (model.init_from), or None
        self.lq_encoder = None
        if self.mode in ("distill", "varsr"):
            start = init.encoder if init is not None else vae.encoder
            self.lq_encoder = copy.deepcopy(start).requires_grad_(s.train_encoder)

    def param_groups(self, lr: float, encoder_lr: float | None = None) -> list[dict]:
        """The adapter (or the transformer) at ``lr``, the LQ encoder copy in a group of its own at
        ``encoder_lr`` (``optim.encoder_lr``) when one is given; otherwise one group (the layout of
        the checkpoints written before the option existed)."""
        encoder = [p for p in self.lq_encoder.parameters() if p.requires_grad] if self.lq_encoder is not None else []
        if encoder_lr is None or not encoder:
            return super().param_groups(lr)
        ids = {id(p) for p in encoder}
        return [
            {"params": [p for p in self.trainable_parameters() if id(p) not in ids], "lr": lr},
            {"params": encoder, "lr": encoder_lr},
        ]

    def frozen_modules(self):
        return self.vae, self.text_encoder, self.lpips, self.teacher, self.stage1

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_mode(cls, mode: str) -> type[VARestorerModel]:
        """The class of ``mode`` (:data:`MODE_CLASSES`); a mode's own class as it is."""
        if cls is not VARestorerModel:
            return cls
        if mode not in MODE_CLASSES:
            raise ConfigError(f"mode {mode!r} is not one of {', '.join(MODE_CLASSES)}")
        return MODE_CLASSES[mode]

    @classmethod
    def from_recipe(cls, recipe: Recipe, device: str | torch.device = "cpu") -> VARestorerModel:
        """Build every part of ``recipe``'s model; ``device`` is where it will run (the T5 encoder
        is then loaded in its precision there: float16 on CUDA, as Infinity runs it)."""

        cls = cls.for_mode(recipe.mode)
        m = recipe.model
        if m.init_from is not None:
            return cls.from_export(recipe, device)
        preset = get_preset(m.preset)
        check_base_checkpoint(recipe)
        # random_init: random weights for each part no checkpoint is given for (pre-training from scratch)
        vae = build_vae(preset) if m.random_init and m.vae is None else load_vae(preset, m.vae)
        transformer = (
            build_transformer(preset)
            if m.random_init and m.transformer is None
            else load_transformer(preset, m.transformer)
        )
        text_encoder = TextEncoder.from_preset(preset, m.text_encoder, device=device)
        restorer = recipe_restorer(recipe)
        return cls(recipe, vae, transformer, text_encoder, *_step_parts(recipe), restorer)

    @classmethod
    def from_export(cls, recipe: Recipe, device: str | torch.device = "cpu") -> VARestorerModel:
        """``model.init_from``: fine-tune an exported one-step model (an imported release, a run's
        ``final/``). The student is the export's adapter (and encoder) on the export's base; the
        teacher is that base with the adapter off; its VAE and stage-1 restorer come with it."""
        cls = cls.for_mode(recipe.mode)
        m, s = recipe.model, recipe.student
        init = load_export(m.init_from, text_encoder=m.text_encoder)
        c = init.config
        wanted = {
            "model.preset": (m.preset, c.base_preset),
            "model.resolution": (m.resolution, c.resolution),
            "student.lq_input": (s.lq_input, c.lq_input),
            "student.keep_lq_scales": (s.keep_lq_scales, c.keep_lq_scales),
            "student.attention": (s.attention, c.attention),
            "student.lora_rank": (s.lora_rank, lora_rank(init.transformer) if c.has_adapter else s.lora_rank),
        }
        differ = [f"{k}={theirs}" for k, (ours, theirs) in wanted.items() if ours != theirs]
        if c.mode != "distill" or not c.has_adapter:
            raise ConfigError(f"model.init_from={m.init_from} is not a one-step model with a LoRA adapter")
        if differ:
            raise ConfigError(
                f"model.init_from={m.init_from} reads its input otherwise than this recipe: set "
                + " ".join(differ)
                + " (the fine-tuning trains the form the model has)"
            )
        named = recipe_restorer(recipe)
        restorer = init.restorer if named is None else named
        return cls(recipe, init.vae, init.transformer, init.text_encoder, *_step_parts(recipe), restorer, init=init)

    def enable_gradient_checkpointing(self) -> None:
        self.transformer.enable_gradient_checkpointing()

    def hold_frozen_in(self, dtype: torch.dtype) -> None:
        """Hold the frozen weights in ``dtype`` (``train.frozen_dtype``, under autocast in it): the
        transformer's blocks but their LayerNorms, which stay exactly float32 (for inference
        :meth:`InfinityTransformer.cast_blocks` casts the whole block and brings the LayerNorms back,
        rounded, as Infinity's ``block.bfloat16()``), a full fine-tuning's frozen teacher copy, and T5. The trained weights
        (LoRA, the LQ encoder, whatever ``requires_grad``) stay float32; autocast casts the frozen
        float32 weights of a Linear to ``dtype`` on every use anyway, so the matmuls are the same."""
        for blk in self.transformer.blocks:
            for m in blk.modules():
                if isinstance(m, torch.nn.LayerNorm):
                    continue
                for p in m.parameters(recurse=False):
                    if not p.requires_grad:
                        p.data = p.data.to(dtype)
        if self.teacher is not None:
            self.teacher.cast_blocks(dtype)
        self.text_encoder.to(dtype=dtype)

    def compile_trained_network(self) -> None:
        """``torch.compile`` the transformer in place (``nn.Module.compile``): unlike wrapping it in
        ``torch.compile(...)``, which prefixes every parameter with ``_orig_mod.``, the checkpoints
        and the export keep their names, so a run resumes and exports across ``train.compile``."""
        self.transformer.compile()

    # ------------------------------------------------------------------ the step
    def _text(self, captions: list[str], seeds: list[int]):
        captions = list(captions) if self.recipe.data.use_captions else [""] * len(captions)
        drop = None
        p = self.text_dropout
        if p > 0 and self.training:
            drop = torch.tensor([torch.rand((), generator=torch.Generator().manual_seed(s)).item() < p for s in seeds])
        return self.text_encoder(captions, device=self.device_of(), drop=drop)

    def device_of(self) -> torch.device:
        return next(self.vae.parameters()).device

    @contextlib.contextmanager
    def _teacher(self):
        """The frozen teacher: the same weights with the LoRA adapters switched off (a fully
        fine-tuned transformer without a KL keeps no frozen copy: its validation grid's teacher-forced
        pass is then the trained transformer's own)."""
        if self.teacher is not None:
            yield self.teacher
        elif not is_adapted(self.transformer):
            yield self.transformer
        else:
            with adapters_disabled(self.transformer):
                yield self.transformer

    @property
    def text_dropout(self) -> float:
        """How often a caption is replaced by the empty one in training (``loss.text_dropout``, as
        Infinity trains; the student's own is ``student.text_dropout``)."""
        return self.recipe.loss.text_dropout

    @property
    def uses_teacher(self) -> bool:
        """Whether the training step needs the teacher (the distillation's KL)."""
        return False

    def teacher_logits(self, text, hq_tokens) -> Tensor:
        with torch.no_grad(), self._teacher() as teacher:
            return teacher(text, hq_tokens.teacher_input_sequence(), self.schedule, attention="causal")

    def lq_latent(self, lq_up: Tensor) -> Tensor:
        """The encoder copy's latent of the LQ image (float32), cleaned first by the stage-1
        restorer when the recipe names one (``model.restorer``; in [0, 1], not clamped, as the
        pipeline runs it, unless ``model.restorer_clamp``: its input and output clamped to [0, 1],
        as the released trainer runs it)."""
        if self.stage1 is not None:
            clamp = self.recipe.model.restorer_clamp
            with torch.no_grad():
                x = (lq_up + 1) / 2
                x = self.stage1(x.clamp(0, 1) if clamp else x).float()
                lq_up = (x.clamp(0, 1) if clamp else x) * 2 - 1
        return self.lq_encoder(lq_up).float()

    def lq_tokens(self, lq_up: Tensor | None = None, latent: Tensor | None = None):
        """The student's LQ pyramid: a trainable encoder copy, the same multi-scale quantizer (of
        ``latent`` when it is already computed).

        Gradients reach the encoder through the quantizer's straight-through estimator."""
        return self.vae.quantizer(self.lq_latent(lq_up) if latent is None else latent, self.schedule)

    def student_logits(self, text, lq_tokens) -> Tensor:
        s = self.recipe.student
        return self.transformer(text, lq_tokens.lq_input_sequence(s.lq_input), self.schedule, attention=s.attention)

    def varsr_restore(self, text, x_lq: Tensor) -> Tensor:
        """``varsr`` mode's restoration: next-scale decoding with the LQ prefix, most likely bits."""

        out = sample(
            self.transformer,
            text,
            self.schedule,
            cfg=1,
            tau=1,
            top_k=0,
            top_p=0,
            greedy=True,
            prefix=self.lq_tokens(x_lq).prefix_sequence(),
        )
        return self.vae.decode_latent(out.latent)

    def decode_student(self, logits: Tensor, lq_tokens, seeds: list[int] | None = None) -> Tensor:
        """The student's bits -> image in [-1, 1] (the first ``student.keep_lq_scales`` scales are
        the LQ tokens' own). ``student.decode``: ``argmax``, the most likely bits forward and the
        gradient through their probabilities; ``gumbel``, the release's hard Gumbel-softmax
        straight-through (:func:`gumbel_straight_through_bits`, each sample's noise from its seed;
        the most likely bits without seeds: at evaluation)."""
        s = self.recipe.student
        if s.decode == "gumbel" and seeds is not None:
            bits = gumbel_straight_through_bits(logits, s.gumbel_tau, seeds)
            straight_through = False  # already hard forward, soft gradient
        else:
            bits, straight_through = bit_probabilities(logits), True
        bits = MultiScaleBSQ.split_sequence(bits, self.schedule)
        bits = lq_tokens.keep_scales(bits, s.keep_lq_scales)
        return self.vae.decode_bits(bits, straight_through=straight_through)

    def degrade(self, batch: dict) -> tuple[Tensor, Tensor, list[int]]:
        hq = batch["pixel_values"].to(self.device_of(), torch.float32)
        seeds = batch["seed"].tolist()  # each sample's, from (train.seed, epoch, index): data/seeds.py
        if self.degradation is None:
            return hq * 2 - 1, None, seeds
        out = self.degradation(hq, seeds)
        return out.gt * 2 - 1, out.lq_up * 2 - 1, seeds

    def self_correction_flips(self, seeds: list[int]) -> list[Tensor] | None:
        """Bits to flip in the HQ tokens (teacher mode's Bitwise Self-Correction); none here."""
        return None

    def targets(self, batch: dict):
        """A batch degraded on the fly: ``(x_hq, x_lq, seeds, text, hq_tokens)``, the text dropped
        out as the mode trains and the HQ tokens with the mode's self-correction flips."""
        x_hq, x_lq, seeds = self.degrade(batch)
        text = self._text(batch["caption"], seeds)
        with torch.no_grad():
            hq_tokens = self.vae.tokenize(x_hq, self.schedule, flips=self.self_correction_flips(seeds))
        return x_hq, x_lq, seeds, text, hq_tokens

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """The training step's losses (``loss`` and what is logged): each mode's class defines it."""
        raise NotImplementedError(f"{type(self).__name__} trains no mode: build it with VARestorerModel.from_recipe")

    def next_scale_cross_entropy(self, text, hq_tokens, prefix=None) -> dict[str, Tensor]:
        """Infinity's objective: the bitwise cross-entropy of the teacher-forced (block-causal)
        logits against the HQ tokens (``prefix``: tokens before the first scale, varsr's LQ image)."""
        lw = self.recipe.loss
        logits = self.transformer(
            text, hq_tokens.teacher_input_sequence(), self.schedule, attention="causal", prefix=prefix
        )
        ce = bitwise_cross_entropy(logits, hq_tokens.bit_labels(), self.schedule, lw.scale_weighting)
        return {"loss": lw.cross_entropy * ce, "cross_entropy": ce.detach()}

    def image_lpips(self, x: Tensor, y: Tensor) -> Tensor:
        """LPIPS of images in [-1, 1], averaged over the batch. With ``loss.lpips_rescale`` the
        images are rescaled by ``2x - 1`` first (LPIPS's ``normalize``): what the released trainer
        computes when it hands [-1, 1] images to pyiqa's ``lpips``, which expects [0, 1]."""
        return self.lpips(x, y, normalize=self.recipe.loss.lpips_rescale).mean()

    # ------------------------------------------------------------------ looking at it
    @torch.no_grad()
    def validation_images(self, batch: dict) -> dict[str, Tensor]:
        """LQ (resized), student, teacher-forced reconstruction and HQ, each in [0, 1]."""
        was = self.training
        self.eval()
        x_hq, x_lq, seeds = self.degrade(batch)
        text = self._text(batch["caption"], seeds)
        hq_tokens = self.vae.tokenize(x_hq, self.schedule)
        t_logits = self.teacher_logits(text, hq_tokens)
        teacher = self.vae.decode_bits(MultiScaleBSQ.split_sequence(bit_probabilities(t_logits) > 0.5, self.schedule))
        student = self.validation_student(text, x_lq, teacher)
        self.train(was)
        lq = x_lq if x_lq is not None else x_hq
        return {
            k: (v.float() + 1) / 2 for k, v in {"lq": lq, "student": student, "teacher": teacher, "hq": x_hq}.items()
        }

    def validation_student(self, text, x_lq: Tensor | None, teacher: Tensor) -> Tensor:
        """What the grid shows as the student: the one-step restoration of ``x_lq`` (the teacher's
        reconstruction when there is no LQ image)."""
        if x_lq is None:
            return teacher
        lq_tokens = self.lq_tokens(x_lq)
        return self.decode_student(self.student_logits(text, lq_tokens), lq_tokens)

    def export_state(self) -> dict[str, Tensor]:
        """What the export is written from: the trainable weights, the whole LQ encoder copy, and
        the whole transformer when it is not an adapter (full fine-tuning, teacher mode) or the
        base with the VAE when the base has random weights (it travels with the export)."""
        state = self.trainable_state_dict()
        parts = [("lq_encoder", self.lq_encoder)]
        if not is_adapted(self.transformer) or self.recipe.model.random_init:
            parts.append(("transformer", self.transformer))
        if self.recipe.model.random_init:
            parts.append(("vae", self.vae))
        for name, module in parts:
            if module is not None:
                # the Parameters themselves (keep_vars): a ZeRO-3 one is gathered through them (full_state)
                state.update({f"{name}.{k}": v for k, v in module.state_dict(keep_vars=True).items()})
        return state

    def save_export(self, out: Path, state: dict[str, Tensor] | None = None) -> None:
        """The export form (the library's, :mod:`varestorer.export`): PEFT adapter, fine-tuned
        encoder, and what they apply to, written from ``state`` (:meth:`export_state`, gathered
        when training is sharded; by default this process's own)."""
        state = self.export_state() if state is None else state

        def part(name: str) -> dict[str, Tensor]:
            return {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}

        # a frozen encoder copy is the VAE's own encoder: the export names none (the pipeline copies the VAE's)
        own_encoder = self.lq_encoder is not None and self.recipe.student.train_encoder
        config = ExportConfig.from_recipe(
            self.recipe,
            self.schedule,
            has_adapter=is_adapted(self.transformer),
            has_encoder=own_encoder or (self.init is not None and self.init.config.has_encoder),
        )
        if self.init is not None:  # the base is the export's: its files travel with this one
            c = self.init.config
            config = config.replace(
                restorer=RESTORER_FILE if self.stage1 is not None else None,  # model.restorer, or the export's
                base_transformer=c.base_transformer,
                base_vae=c.base_vae,
                random_init_base=c.random_init_base,
                text_encoder=self.recipe.model.text_encoder or c.text_encoder,
                transformer_config=c.transformer_config,
                source={"init_from": str(self.recipe.model.init_from), **c.source},
                origin="trained" if c.origin == "trained" else "release-finetune",
            )
        write_export(
            out,
            transformer=self.transformer,
            transformer_state=part("transformer"),
            config=config,
            encoder_state=part("lq_encoder") if config.has_encoder else None,
            base_vae_state=part("vae") if self.recipe.model.random_init else None,
            restorer=self.stage1,
            base_from=self.init.folder if self.init is not None else None,
        )


class DistillModel(VARestorerModel):
    """``distill``: the paper's one-step student, its LoRA trained by the KL to the teacher's
    teacher-forced logits, the perceptual and MSE losses of its decoded image (the release's form:
    through a Gumbel straight-through decode), the optional student cross-entropy."""

    @property
    def text_dropout(self) -> float:
        return self.recipe.student.text_dropout

    @property
    def uses_teacher(self) -> bool:
        return self.recipe.loss.kl > 0  # w/o KL the teacher does not run at all

    def forward(self, batch: dict) -> dict[str, Tensor]:
        x_hq, x_lq, seeds, text, hq_tokens = self.targets(batch)
        lw = self.recipe.loss
        lq_latent = self.lq_latent(x_lq)
        lq_tokens = self.lq_tokens(latent=lq_latent)
        s_logits = self.student_logits(text, lq_tokens)
        zero = torch.zeros((), device=s_logits.device)
        kl = zero
        if self.uses_teacher:  # w/o KL: the teacher does not run at all
            kl = bitwise_kl(self.teacher_logits(text, hq_tokens), s_logits, self.schedule, lw.scale_weighting)
        # the student's bitwise cross-entropy against the HQ tokens: trained when weighed, else only
        # logged (the released trainer's "Lm"), with no graph
        with contextlib.nullcontext() if lw.student_cross_entropy > 0 else torch.no_grad():
            ce = bitwise_cross_entropy(s_logits, hq_tokens.bit_labels(), self.schedule, lw.scale_weighting)
        loss = lw.kl * kl + lw.student_cross_entropy * ce
        out = {"kl": kl.detach(), "cross_entropy": ce.detach()}
        weighed = lw.mse > 0 or lw.lpips > 0  # else the image is decoded for the log only, with no graph
        with contextlib.nullcontext() if weighed else torch.no_grad():
            x_s = self.decode_student(s_logits, lq_tokens, seeds)
            mse = F.mse_loss(x_s.float(), x_hq)
            lp = self.image_lpips(x_s.float(), x_hq) if self.lpips is not None else zero
        loss = loss + lw.lpips * lp + lw.mse * mse
        out.update(lpips=lp.detach(), mse=mse.detach())
        if lw.encoder_latent > 0:
            with torch.no_grad():
                target = self.vae.encode_latent(x_hq)
            anchor = F.mse_loss(lq_latent, target) / target.pow(2).mean()
            loss = loss + lw.encoder_latent * anchor
            out["encoder_latent"] = anchor.detach()
        return {"loss": loss, **out}


class TeacherModel(VARestorerModel):
    """``teacher``: Infinity fine-tuned as it was trained, the next-scale bitwise cross-entropy of
    teacher-forced logits, with Bitwise Self-Correction on the HQ tokens."""

    def forward(self, batch: dict) -> dict[str, Tensor]:
        _, _, _, text, hq_tokens = self.targets(batch)
        return self.next_scale_cross_entropy(text, hq_tokens)

    def self_correction_flips(self, seeds: list[int]) -> list[Tensor] | None:
        """Infinity's Bitwise Self-Correction: per scale ``k < layers``, flip each bit with a
        probability drawn per sample from ``{0, 0.01, ..., strength}`` (as Infinity's trainer)."""
        sc = self.recipe.self_correction
        if sc.layers == 0 or not self.training:
            return None
        d, steps = self.vae.codebook_dim, round(100 * sc.strength) + 1
        flips = [[] for _ in self.schedule[: sc.layers]]
        for seed in seeds:
            g = torch.Generator().manual_seed(seed + 1)  # not the text-dropout draw
            for k, (h, w) in enumerate(self.schedule[: sc.layers]):
                p = torch.randint(0, steps, (), generator=g).item() / 100
                flips[k].append(torch.rand((h, w, d), generator=g) < p)
        return [torch.stack(f).to(self.device_of()) for f in flips]

    @torch.no_grad()
    def validation_metrics(self) -> dict[str, float]:
        """On the shipped photos: ``heldout_cross_entropy`` of the held-out tokens."""
        if self.recipe.data.dataset != "photos":
            return {}
        was = self.training
        self.eval()
        ce = teacher_cross_entropy(self.transformer, self.vae, self.text_encoder, self.recipe.model.resolution)
        self.train(was)
        return {"heldout_cross_entropy": ce}


class VARSRModel(VARestorerModel):
    """``varsr`` (the paper's "w/o distill"): VARSR's multi-step restorer, the next-scale
    cross-entropy with the LQ image's tokens as prefix; restored scale by scale."""

    def forward(self, batch: dict) -> dict[str, Tensor]:
        _, x_lq, _, text, hq_tokens = self.targets(batch)
        return self.next_scale_cross_entropy(text, hq_tokens, prefix=self.lq_tokens(x_lq).prefix_sequence())

    def validation_student(self, text, x_lq: Tensor | None, teacher: Tensor) -> Tensor:
        return self.varsr_restore(text, x_lq)  # the multi-step restorer, scale by scale (most likely bits)


#: The training module of each mode of a recipe (``tokenizer`` and ``restorer`` have their own modules).
MODE_CLASSES: dict[str, type[VARestorerModel]] = {"distill": DistillModel, "teacher": TeacherModel, "varsr": VARSRModel}
