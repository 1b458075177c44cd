"""The training loop: ``accelerate launch distill.py --recipe recipes/NAME.yaml [key=value ...]``.

Built the way diffusers' training examples are: accelerate for processes, mixed precision,
gradient accumulation, trackers and ``save_state``/``load_state``; a checkpoint folder
``checkpoint-STEP`` every ``train.checkpointing_steps`` with only the trainable weights
(plus the exportable LoRA adapter and encoder), pruned to ``train.checkpoints_total_limit``;
``train.resume_from_checkpoint: latest`` continues exactly where a run stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor
from tqdm.auto import tqdm

from ..checkpoints import checkpoint_step, latest_checkpoint
from ..errors import ConfigError, TrainingStopped
from ..export.hub import CARD_FILE, publish, render_card
from ..outputs import write_text
from .checkpointing import (
    StopSignals,
    atomic_folder,
    claim_run_folder,
    full_state,
    load_checkpoint,
    recipe_hash,
    register_checkpoint_hooks,
    remove_partials,
    resolve_resume,
    run_lock,
    save_checkpoint,
)
from .dataloader import build_dataloader
from .model import VARestorerModel
from .recipe import Recipe
from .restorer_module import RestorerModel
from .schedules import build_scheduler
from .tokenizer_module import TokenizerModel
from .visualize import save_image, save_loss_plot, validation_grid

logger = logging.getLogger(__name__)


def _report_to(recipe: Recipe) -> list[str] | None:
    if recipe.train.report_to == "none":
        return None
    if recipe.train.report_to == "tensorboard":
        return ["tensorboard"]
    import importlib.util

    wanted = ["tensorboard", "wandb"] if recipe.train.report_to == "all" else ["wandb"]
    if "wandb" in wanted and importlib.util.find_spec("wandb") is None:
        logger.warning("report_to asks for wandb but it is not installed (pip install wandb); using tensorboard")
        return ["tensorboard"]
    return wanted


def _mixed_precision(recipe: Recipe) -> str | None:
    """The launcher's choice (accelerate config / --mixed_precision) wins over the recipe's;
    bf16/fp16 only where a GPU is there."""
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None
    wanted = recipe.train.mixed_precision
    if wanted != "no" and not torch.cuda.is_available():
        logger.info(
            "train.mixed_precision=%s: no GPU, training in float32 (a CPU with bfloat16 kernels trains in bf16 "
            "autocast with ACCELERATE_MIXED_PRECISION=bf16 or accelerate launch --mixed_precision bf16: "
            "Infinity-2B's step 2.5x faster, a third less memory; docs/real-size.md)",
            wanted,
        )
        return "no"
    return wanted


def _warn_single_thread_cpu(accelerator) -> None:
    """``accelerate launch`` sets ``OMP_NUM_THREADS=1`` when it is unset: right for many processes
    on one machine, half the speed (or less) for the one CPU process of a small run."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if accelerator.device.type == "cpu" and accelerator.num_processes == 1 and torch.get_num_threads() < cores:
        logger.warning(
            "training on the CPU with %d of its %d cores (OMP_NUM_THREADS=%s, which accelerate launch "
            "sets to 1): run it as OMP_NUM_THREADS=%d accelerate launch ... to use them all",
            torch.get_num_threads(),
            cores,
            os.environ.get("OMP_NUM_THREADS", "unset"),
            cores,
        )


def _check_world(accelerator) -> None:
    """Refuse a launch whose processes accelerate did not join: each would train alone, on the
    whole batch, into the same ``output_dir``."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise ConfigError(
            f"{launched} processes were launched (WORLD_SIZE={launched}) but accelerate runs this one "
            f"as {accelerator.num_processes} of {accelerator.num_processes}: on CPUs, launch with "
            "ACCELERATE_USE_CPU=true torchrun --nproc_per_node N distill.py ... (accelerate launch "
            "--cpu --num_processes N starts a single process); on GPUs, accelerate launch "
            "--config_file launch/8gpu.yaml distill.py ..."
        )


def _check_frozen_dtype(accelerator) -> None:
    """``train.frozen_dtype=bf16`` needs bf16 autocast (a bf16 weight meets float32 activations
    otherwise) and one dtype per block for the engine (FSDP and DeepSpeed flatten a block's
    parameters, LoRA's float32 ones with the frozen bf16 ones)."""
    from accelerate.utils import DistributedType

    if accelerator.mixed_precision != "bf16":
        raise ConfigError(
            f"train.frozen_dtype=bf16 holds the frozen weights in bf16, which needs bf16 mixed precision, but this "
            f"run's is {accelerator.mixed_precision!r}: set train.mixed_precision=bf16 (a CPU: "
            f"ACCELERATE_MIXED_PRECISION=bf16), or train.frozen_dtype=float32"
        )
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ConfigError(
            f"train.frozen_dtype=bf16 puts bf16 and float32 weights in the same blocks, which "
            f"{accelerator.distributed_type.value} flattens into one dtype: launch with DDP (launch/8gpu.yaml) "
            f"or one process, or set train.frozen_dtype=float32"
        )


def _check_launch_config(accelerator, recipe: Recipe) -> None:
    """What a launch config may not set. FSDP: ``cpu_ram_efficient_loading`` (accelerate's loader
    then takes rank 0's weights for every state-dict entry and fails on the model's buffers, and
    saves nothing: every process builds the model). DeepSpeed: the engine clips and accumulates
    with its config's values, which must be the recipe's (``auto`` takes the recipe's clipping);
    bf16 becomes DeepSpeed's ``torch_autocast`` (see below)."""
    fsdp = getattr(accelerator.state, "fsdp_plugin", None)
    if recipe.train.frozen_dtype == "bf16":
        _check_frozen_dtype(accelerator)
    if fsdp is not None and fsdp.cpu_ram_efficient_loading:
        raise ConfigError(
            "the FSDP config sets fsdp_cpu_ram_efficient_loading: true, which accelerate's FSDP2 loader cannot "
            "do for this model (it fails on the model's buffers) and which saves nothing here (every process "
            "builds the model). Set fsdp_cpu_ram_efficient_loading: false (launch/fsdp.yaml does)"
        )
    if fsdp is not None and fsdp.fsdp_version == 2 and fsdp.mixed_precision_policy is not None:
        # FSDP2's mixed precision gathers the weights in bf16 for the forward, where the model keeps
        # float32 parts as Infinity does (the text projection, norms): they would meet bf16 weights.
        # Weights stay float32 and the forward is autocast, as DDP does (the gathers move float32)
        from torch.distributed.fsdp import MixedPrecisionPolicy

        fsdp.mixed_precision_policy = MixedPrecisionPolicy()
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    config, o, t = plugin.deepspeed_config, recipe.optim, recipe.train
    if config.get("bf16", {}).get("enabled") is True:
        # DeepSpeed's bf16 casts the whole module (the frozen VAE, T5 and LPIPS too) and feeds it the
        # float32 images as given (the first convolution fails); its torch_autocast mode keeps the
        # weights in float32 and autocasts the forward, as accelerate's mixed precision does for DDP
        config["bf16"] = {"enabled": False}
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    if config.get("gradient_clipping", "auto") == "auto":
        config["gradient_clipping"] = o.max_grad_norm
    ours = {"gradient_clipping": float(o.max_grad_norm), "gradient_accumulation_steps": t.gradient_accumulation_steps}
    keys = {
        "gradient_clipping": "optim.max_grad_norm",
        "gradient_accumulation_steps": "train.gradient_accumulation_steps",
    }
    for name, want in ours.items():
        theirs = config.get(name, "auto")
        if theirs != "auto" and float(theirs) != float(want):
            raise ConfigError(
                f"the DeepSpeed config sets {name}={theirs} but the recipe's {keys[name]} is {want:g}: DeepSpeed "
                f"applies its own value. Make them equal (deepspeed_config.{name} in the launch config, or "
                f"{keys[name]}={theirs:g} after the recipe)"
            )


def per_device_batch(recipe: Recipe, num_processes: int) -> int:
    t = recipe.train
    denom = num_processes * t.gradient_accumulation_steps
    if t.global_batch_size % denom:
        raise ConfigError(
            f"train.global_batch_size={t.global_batch_size} is not divisible by processes ({num_processes}) x "
            f"gradient_accumulation_steps ({t.gradient_accumulation_steps}); change one of them"
        )
    return t.global_batch_size // denom


def build_model(recipe: Recipe, device="cpu"):
    """The training module of ``recipe.mode``: the BSQ-VAE for ``tokenizer``, else teacher + student."""
    if recipe.mode == "tokenizer":
        return TokenizerModel.from_recipe(recipe, device=device)
    if recipe.mode == "restorer":
        return RestorerModel.from_recipe(recipe, device=device)

    return VARestorerModel.from_recipe(recipe, device=device)


def train(recipe: Recipe, overwrite: bool = False) -> dict:
    """Run a recipe to ``train.max_steps``; returns the last logged losses.

    Only one training at a time writes to an output folder (the main process holds a lock on it),
    and a folder holding another run is refused unless this run resumes it or ``overwrite``, which
    moves the old run's files aside (:func:`~.checkpointing.claim_run_folder`)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    t = recipe.train
    accelerator = Accelerator(
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        mixed_precision=_mixed_precision(recipe),
        kwargs_handlers=[
            DistributedDataParallelKwargs(
                # teacher mode and full fine-tuning train cfg_uncond, which a batch may not use
                find_unused_parameters=recipe.mode == "teacher" or recipe.student.full_finetune,
                # every buffer is a constant (attention zero biases, the BSQ bit mask, LPIPS' scaling):
                # DDP's default broadcasts them before every forward, one collective per step for nothing
                broadcast_buffers=False,
            )
        ],
        log_with=_report_to(recipe),
        project_config=ProjectConfiguration(project_dir=t.output_dir, logging_dir=str(Path(t.output_dir) / "logs")),
    )
    _check_world(accelerator)  # before anything is written
    _check_launch_config(accelerator, recipe)
    if not accelerator.is_main_process:
        claim_run_folder(t.output_dir, t.resume_from_checkpoint, overwrite, move=False)  # refused on all
        return _train(recipe, accelerator)
    with run_lock(t.output_dir):
        claim_run_folder(t.output_dir, t.resume_from_checkpoint, overwrite)  # before anything is written
        return _train(recipe, accelerator)


def _train(recipe: Recipe, accelerator) -> dict:  # noqa: C901
    from accelerate.utils import set_seed

    t = recipe.train
    if accelerator.is_main_process:
        Path(t.output_dir).mkdir(parents=True, exist_ok=True)
        write_text(Path(t.output_dir) / "recipe.json", json.dumps(recipe.to_dict(), indent=2))
    set_seed(t.seed)
    _warn_single_thread_cpu(accelerator)

    per_device = per_device_batch(recipe, accelerator.num_processes)
    loader = build_dataloader(recipe, per_device)  # before the model: a missing dataset is said at once
    model = build_model(recipe, accelerator.device)
    if t.frozen_dtype == "bf16":
        model.hold_frozen_in(torch.bfloat16)  # checked with the launch config: bf16 autocast, no FSDP/DeepSpeed
    if t.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    o = recipe.optim
    optimizer = torch.optim.AdamW(
        model.param_groups(o.lr, o.encoder_lr), betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps
    )
    scheduler = build_scheduler(recipe, optimizer, accelerator.num_processes)
    n = accelerator.num_processes
    accelerator.print(
        f"{recipe.name}: {n} process{'es' if n > 1 else ''} ({accelerator.distributed_type.value}, "
        f"{accelerator.device.type}), {per_device} images per process per step, global batch "
        f"{t.global_batch_size}"
    )

    register_checkpoint_hooks(accelerator, type(model))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    core = accelerator.unwrap_model(model)
    params = core.trainable_parameters()  # FSDP2's prepare replaces them (by DTensor parameters)
    if t.compile:
        core.compile_trained_network()

    global_step = 0
    digest = recipe_hash(recipe.to_dict())
    if accelerator.is_main_process:
        remove_partials(t.output_dir)
    resume = resolve_resume(t.resume_from_checkpoint, t.output_dir, digest)
    if resume is not None:
        accelerator.print(f"resuming from {resume}")
        load_checkpoint(accelerator, resume, core)
        global_step = checkpoint_step(resume)

    steps_per_epoch = math.ceil(len(loader) / t.gradient_accumulation_steps)
    if accelerator.is_main_process:
        accelerator.init_trackers(recipe.name, config=_flat(recipe.to_dict()))
    bar = tqdm(total=t.max_steps, initial=global_step, desc=recipe.name, disable=not accelerator.is_local_main_process)
    history: list[dict] = []
    logs: dict = {}
    val_batch = None
    skipped, streak = 0, []  # steps skipped for a non-finite loss/gradient: in all, and the current run of them

    def checkpoint(step: int) -> Path:
        _refuse_nonfinite_weights(full_state(core.trainable_state_dict()), t.output_dir, f"checkpoint-{step}")
        return save_checkpoint(accelerator, t.output_dir, step, digest, t.checkpoints_total_limit)

    def stop(error: TrainingStopped):
        bar.close()
        _write_history(accelerator, history, t.output_dir)
        accelerator.end_training()
        raise error

    with StopSignals() as signals:
        while global_step < t.max_steps:
            epoch, skip = divmod(global_step, steps_per_epoch)
            loader.set_epoch(epoch)  # to the sampler, whose keys carry it to the dataset (data/seeds.py)
            batches = accelerator.skip_first_batches(loader, skip * t.gradient_accumulation_steps) if skip else loader
            for batch in batches:
                if val_batch is None:
                    val_batch = {k: v[: t.num_validation_images] for k, v in batch.items()}
                with accelerator.accumulate(model):
                    with accelerator.autocast():  # FSDP2: accelerate autocasts only DDP's forward
                        losses = model(batch)
                    accelerator.backward(losses["loss"])
                    finite = True
                    if accelerator.sync_gradients:
                        finite = _all_finite(accelerator, losses["loss"], params)
                        if finite and recipe.optim.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(params, recipe.optim.max_grad_norm)
                    if finite:  # a non-finite step changes no weight (and no optimizer moment)
                        optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                if not accelerator.sync_gradients:
                    continue
                global_step += 1
                skipped += not finite
                streak = [] if finite else [*streak, global_step]
                logs = {k: accelerator.reduce(v.detach(), "mean").item() for k, v in losses.items()}
                logs["lr"] = scheduler.get_last_lr()[0]
                logs["skipped_steps"] = skipped
                history.append({"step": global_step, **logs})
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k not in ("lr", "skipped_steps")})
                if not finite:
                    bar.write(
                        f"step {global_step}: the loss or a gradient is not finite; step skipped "
                        f"({len(streak)} in a row, {skipped} in all)"
                    )
                if len(streak) >= t.max_nonfinite_steps:
                    stop(TrainingStopped(_nonfinite_message(recipe, streak)))
                if global_step % t.log_steps == 0 or global_step == t.max_steps or not finite:
                    accelerator.log(logs, step=global_step)
                stopping = signals.agreed(accelerator)
                if global_step % t.checkpointing_steps == 0 or global_step == t.max_steps or stopping:
                    written = checkpoint(global_step)
                if stopping:
                    stop(
                        TrainingStopped(
                            f"{signals.name(stopping)} received: stopped after step {global_step} of {t.max_steps} "
                            f"and wrote {written}. Resume with the same command plus train.resume_from_checkpoint=latest",
                            exit_code=128 + stopping,
                            label="stopped",
                        )
                    )
                validating = global_step % t.validation_steps == 0 or global_step == t.max_steps
                # sharded weights (FSDP): every process runs the forward passes, the main one writes
                if validating and (accelerator.is_main_process or _sharded(accelerator)):
                    # in the step's precision (train.frozen_dtype=bf16: bf16 weights need autocast)
                    with _unsharded(core, accelerator), accelerator.autocast():
                        # train.num_validation_images=0: no grids (the held-out metrics still run)
                        grid = validation_grid(core, val_batch) if t.num_validation_images else None
                        measured = core.validation_metrics()
                if validating and accelerator.is_main_process:
                    if grid is not None:
                        save_image(grid, Path(t.output_dir) / "validation" / f"step-{global_step:06d}.png")
                        _log_image(accelerator, grid, global_step)
                    if measured:
                        accelerator.log(measured, step=global_step)
                        history[-1].update(measured)
                        bar.write(f"step {global_step}: " + ", ".join(f"{k} {v:.4g}" for k, v in measured.items()))
                if global_step >= t.max_steps:
                    break
    bar.close()
    accelerator.wait_for_everyone()
    state = full_state(core.export_state())  # a collective when sharded: every process
    _refuse_nonfinite_weights(state, t.output_dir, "final")
    if accelerator.is_main_process:
        _write_history(accelerator, history, t.output_dir)
        final = Path(t.output_dir) / "final"
        with atomic_folder(
            final, keep="the checkpoints are intact: free space and export one with varestorer export"
        ) as partial:
            core.save_export(partial, state)
            if recipe.mode not in ("tokenizer", "restorer"):  # their exports have no model card (yet)
                render_card(partial, t.hub_model_id or "USER/MODEL").save(partial / CARD_FILE)
        if t.push_to_hub:  # as diffusers' examples: the token is huggingface_hub's login / HF_TOKEN
            url = publish(final, t.hub_model_id).get("url")
            accelerator.print(f"published {final} to {url}")
    accelerator.end_training()
    return logs


def _all_finite(accelerator, loss: torch.Tensor, params) -> bool:
    """Whether this step's loss and every gradient are finite, on every process. Under fp16
    the gradients are left to accelerate's GradScaler, which skips an overflowing step and
    lowers its scale (skipping it here would keep the scale too high for ever)."""
    checks = [torch.isfinite(loss.detach()).all()]
    if accelerator.scaler is None:
        # FSDP2: each process checks its shard of every gradient (DTensor); the sum below joins them
        grads = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in params if p.grad is not None]
        checks += [torch.isfinite(g).all() for g in grads]
    bad = (~torch.stack(checks).all()).float().reshape(1)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, "sum")
    return bad.item() == 0


def _sharded(accelerator) -> bool:
    """Whether the model's parameters are sharded over the processes (FSDP; DeepSpeed ZeRO-3),
    so that a forward pass needs every process."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP or _zero3(accelerator)


@contextlib.contextmanager
def _unsharded(module, accelerator):
    """FSDP2 gathers a unit's weights in its ``forward``'s hook: validation calls the root's parts
    directly (the transformer's embeddings and head, the encoder copy), so the root's weights are
    gathered around it, with the forward's autocast. ZeRO-3 hooks every submodule: nothing to do."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(module, FSDPModule):
        yield
        return
    module.unshard()
    try:
        with accelerator.autocast():
            yield
    finally:
        module.reshard()


def _zero3(accelerator) -> bool:
    plugin = accelerator.state.deepspeed_plugin  # None unless DeepSpeed runs
    return plugin is not None and plugin.zero_stage == 3


def _refuse_nonfinite_weights(state: dict, output_dir: str, what: str) -> None:
    broken = [k for k, v in state.items() if not torch.isfinite(v).all()]
    if broken:
        found = latest_checkpoint(output_dir)
        last = f"the last checkpoint is {found}" if found else "no checkpoint was written"
        raise TrainingStopped(
            f"the trainable weights are not finite ({len(broken)} tensors, e.g. {broken[0]}): "
            f"{what} was not written; {last}. Lower optim.lr and start again from it"
        )


def _nonfinite_message(recipe: Recipe, streak: list[int]) -> str:
    found = latest_checkpoint(recipe.train.output_dir)
    resume = (
        f"The last checkpoint is {found} (its weights are finite): resume from it with "
        f"train.resume_from_checkpoint={found.name}"
        if found
        else "No checkpoint was written yet"
    )
    return (
        f"the loss or its gradients were not finite for {len(streak)} steps in a row (steps {streak[0]}-"
        f"{streak[-1]}; train.max_nonfinite_steps={recipe.train.max_nonfinite_steps}); those steps changed no "
        f"weight and the run stopped. {resume}, after lowering optim.lr (now {recipe.optim.lr:g}) or "
        f"train.mixed_precision=fp16 -> bf16, or checking the data for broken images"
    )


def _write_history(accelerator, history: list[dict], output_dir: str) -> None:
    if not accelerator.is_main_process or not history:
        return

    save_loss_plot(history, Path(output_dir) / "losses.png")
    with open(Path(output_dir) / "losses.jsonl", "a") as f:  # appended: a resumed run adds its steps
        f.writelines(json.dumps(h) + "\n" for h in history)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _log_image(accelerator, grid: torch.Tensor, step: int) -> None:
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation", grid, step)
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": wandb.Image(grid.permute(1, 2, 0).numpy())}, step=step)
