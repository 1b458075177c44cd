"""Importing the authors' released VARestorer (EternalEvan/VARestorer) into an export folder.

The release's ``varestorer.pth`` is the whole transformer's ``state_dict`` as its inference loads
it (strictly): Infinity's weights plus LoRA injected by cloneofsimo's ``lora_diffusion``
(``inject_trainable_lora`` on every ``nn.Linear`` under the blocks' ``SelfAttention`` and
``CrossAttention``): such a Linear ``X`` is stored as ``X.linear.{weight,bias}``,
``X.lora_down.weight`` (r x in) and ``X.lora_up.weight`` (out x r), and computes
``linear(x) + lora_up(lora_down(x)) * 1.0``. That is PEFT's LoRA with ``lora_A = lora_down``,
``lora_B = lora_up`` and ``alpha = r``, so the adapter converts exactly.

One detail of the release decides its outputs: in the blocks' cross-attention the value bias is
never added (the release's code adds ``ca.v_bias`` only when ``mat_kv`` is a plain Linear, and the
LoRA wrapper is not), while the unwrapped text pooling adds its own. The import therefore writes the
blocks' ``ca.v_bias`` as zeros: the imported model computes what the release computes.

:func:`import_release` writes: ``base_transformer.safetensors`` (the release's transformer without
its LoRA, official key layout, float32), the PEFT adapter, ``base_vae.safetensors`` (the public VAE
the release encodes and decodes with), ``restorer.safetensors`` (DiffBIR's SwinIR) and an
:class:`ExportConfig` naming the release's inference form (``shifted_latent`` input, the public
encoder, Gumbel decoding, LANCZOS resizing, Gaussian tiles, captions of the restorer's output).
Files are read with ``weights_only=True`` or as safetensors: no code is unpickled.
"""

from __future__ import annotations

import inspect
import re
from collections import Counter
from pathlib import Path

import torch

from ..checkpoints import page_releaser, read_file, refuse_nonfinite, select_state_dict
from ..errors import CheckpointError, ConfigError
from ..presets import get_preset
from ..restorer import load_restorer, save_restorer
from ..tokenizer.loading import load_vae
from ..transformer.infinity import InfinityTransformer
from ..transformer.loading import load_transformer_state
from ..transformer.lora import ADAPTER_WEIGHTS_FILE, DEFAULT_TARGETS, PEFT_PREFIX, lora_config
from .config import RESTORER_FILE, ExportConfig
from .folder import (
    BASE_TRANSFORMER_FILE,
    BASE_VAE_FILE,
    check_export_target,
    new_export,
    save_weights,
    save_weights_streamed,
)

RELEASE_REPO = "EternalEvan/VARestorer"
RELEASE_WEIGHTS = "EvanEternal/VARestorer"  # the Hub repo of weights/varestorer.pth
RELEASE_RANK = 32
_BLOCK = re.compile(r"^block_chunks\.(\d+)\.module\.(\d+)\.")
_WRAPPED = re.compile(
    r"^(block_chunks\.\d+\.module\.\d+\.(?:sa|ca)\.[a-z_]+)\.(linear|lora_down|lora_up)\.(weight|bias)$"
)


def _release_state(path: Path) -> dict[str, torch.Tensor]:
    obj = read_file(path)  # weights_only: a truncated or pickled-code file is a CheckpointError naming it
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict: it is not the release's file")
    state, _ = select_state_dict(obj, ("state_dict", "model", "module"))
    state = {k.removeprefix("module."): v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path} holds entries that are not tensors ({bad[0]}): it is not the release's file")
    return state


def convert_release_state(state: dict[str, torch.Tensor], source: str = "<state dict>"):
    """The release's transformer state -> ``(base, adapter, rank)``: the base in Infinity's key
    layout (the blocks' ``ca.v_bias`` zeroed: the release never adds it), the adapter under PEFT's
    file keys (``base_model.model.X.lora_{A,B}.weight``), and the LoRA rank."""
    base, adapter, wrapped = {}, {}, Counter()
    for key, value in state.items():
        m = _WRAPPED.match(key)
        if m is None:
            if ".lora_down." in key or ".lora_up." in key or ".linear." in key:
                raise CheckpointError(f"{source}: {key} is LoRA outside the blocks' attention, unlike the release")
            base[key] = value
            continue
        module, part, kind = m.groups()
        if part == "linear":
            base[f"{module}.{kind}"] = value
        else:
            adapter[f"{PEFT_PREFIX}{module}.{'lora_A' if part == 'lora_down' else 'lora_B'}.weight"] = value
            wrapped[module] += 1
    if not adapter:
        raise CheckpointError(
            f"{source} holds no LoRA (no '.lora_down.' keys): a plain Infinity checkpoint, not the released "
            f"VARestorer. Use it as a base (model.transformer in a recipe, --base when restoring), or pass "
            f"the release's weights/varestorer.pth (Hub: {RELEASE_WEIGHTS})"
        )
    blocks = sorted({_BLOCK.match(k).group(0) for k in base if _BLOCK.match(k)})
    expected = {f"{b}{t}" for b in blocks for t in DEFAULT_TARGETS}
    missing, extra = sorted(expected - set(wrapped)), sorted(set(wrapped) - expected)
    half = sorted(m for m, n in wrapped.items() if n != 2)
    if missing or extra or half:
        what = (
            f"no LoRA on {missing[0]}"
            if missing
            else f"LoRA on {extra[0]}, which the release does not adapt"
            if extra
            else f"only one of lora_down/lora_up for {half[0]}"
        )
        raise CheckpointError(
            f"{source}: {what}. The release adapts {', '.join(DEFAULT_TARGETS)} of every block "
            f"({len(expected)} modules here, {len(wrapped)} found adapted)"
        )
    ranks = {v.shape[0] for k, v in adapter.items() if k.endswith("lora_A.weight")}
    ranks |= {v.shape[1] for k, v in adapter.items() if k.endswith("lora_B.weight")}
    if len(ranks) != 1:
        raise CheckpointError(f"{source}: the LoRA weights have mixed ranks {sorted(ranks)}")
    for b in blocks:
        if f"{b}ca.v_bias" in base:
            base[f"{b}ca.v_bias"] = torch.zeros_like(base[f"{b}ca.v_bias"])
    return base, adapter, ranks.pop()


def infer_transformer_config(base: dict[str, torch.Tensor], source: str = "<state dict>") -> dict:
    """The ``InfinityTransformer`` arguments of a state dict in Infinity's layout, from its shapes."""
    try:
        blocks = {_BLOCK.match(k).groups() for k in base if _BLOCK.match(k)}
        embed_dim, codebook_dim = base["word_embed.weight"].shape
        fc1 = base["block_chunks.0.module.0.ffn.fc1.weight"].shape[0]
        return dict(
            depth=len(blocks),
            embed_dim=embed_dim,
            num_heads=base["block_chunks.0.module.0.sa.scale_mul_1H11"].shape[1],
            mlp_ratio=fc1 / embed_dim,
            text_channels=base["cfg_uncond"].shape[1],
            text_maxlen=base["cfg_uncond"].shape[0],
            codebook_dim=codebook_dim,
            num_block_chunks=len({c for c, _ in blocks}),
            num_levels=base["lvl_embed.weight"].shape[0],
        )
    except (KeyError, AttributeError, IndexError) as exc:
        raise CheckpointError(
            f"{source} is not an Infinity transformer in the release's layout (no {exc} to read its size from)"
        ) from None


def import_release(
    checkpoint: str | Path,
    out: str | Path,
    *,
    vae: str | Path | None = None,
    restorer: str | Path | None = None,
    text_encoder: str | None = None,
    preset: str = "infinity-2b",
    upscale: float = 4.0,
    rank: int | None = RELEASE_RANK,
    overwrite: bool = False,
) -> Path:
    """Write the released VARestorer as an export folder that ``restore --model``, ``evaluate``,
    ``publish`` and ``VARestorerPipeline.from_pretrained`` load.

    Args:
        checkpoint: the release's ``weights/varestorer.pth`` (or a file in its layout).
        vae: the public VAE (``infinity_vae_d32reg.pth``); ``None``: the preset's official one.
        restorer: DiffBIR's ``general_swinir_v1.ckpt``; ``None``: the model restores without one
            (the paper's "w/o restorer").
        text_encoder: the T5 encoder (Hub id or folder); ``None``: the preset's (flan-t5-xl).
        preset: the base preset (tokenizer, resolution, sampler); the transformer's size is read
            from the checkpoint, so a smaller one in the same layout imports too.
        upscale: the super-resolution factor (the release's ``--sr_scale``, 4).
        rank: the LoRA rank expected (the release's: 32); another is refused, naming it;
            ``None``: whatever rank the file has.
    """
    checkpoint, out = Path(checkpoint).expanduser(), Path(out).expanduser()
    if not checkpoint.is_file():
        raise ConfigError(f"{checkpoint} is not a file: pass the release's weights/varestorer.pth")
    check_export_target(out, overwrite=overwrite)  # before the long conversion
    p = get_preset(preset)
    base, adapter, found = convert_release_state(_release_state(checkpoint), str(checkpoint))
    if rank is not None and found != rank:
        raise CheckpointError(
            f"{checkpoint} holds LoRA of rank {found}, not the release's {rank}: it is another model "
            f"in the release's layout. Import it anyway with --rank {found}"
        )
    rank = found
    refuse_nonfinite(adapter, "release LoRA", str(checkpoint))  # the base is checked where it loads, below
    arch = infer_transformer_config(base, str(checkpoint))
    with torch.device("meta"):
        model = InfinityTransformer(**arch)
    # every key and shape, or an error naming it; the values are checked as they are written, below
    load_transformer_state(model, base, source=str(checkpoint), check_finite=False)
    the_vae = load_vae(p, vae)
    stage1 = load_restorer(restorer) if restorer is not None else None
    schedule = the_vae.schedule(p.resolution)
    if arch["codebook_dim"] != the_vae.quantizer.dim:
        raise CheckpointError(
            f"{checkpoint} predicts {arch['codebook_dim']} bits per token but the {p.name} VAE has "
            f"{the_vae.quantizer.dim}: pass the VAE it was trained with (--vae) or its preset (--preset)"
        )
    config = ExportConfig(
        base_preset=p.name,
        resolution=p.resolution,
        scale_schedule=[list(s) for s in schedule],
        upscale=upscale,
        text_encoder=text_encoder,
        lq_input="shifted_latent",
        has_adapter=True,
        decode="gumbel",
        restorer=RESTORER_FILE if stage1 is not None else None,
        resize="lanczos",
        tile_weights="gaussian",
        transformer_config=None if _is_presets(arch, p.transformer) else arch,
        source={"release": RELEASE_REPO, "checkpoint": checkpoint.name, "lora_rank": rank},
        color_fix="none",  # the release's code corrects no colour
        origin="release",
    ).validate()
    # written beside ``out`` and swapped in: an interrupted import leaves no half folder
    with new_export(out, overwrite=overwrite) as tmp:
        # tensor by tensor from the memory-mapped checkpoint, in the dtype the release ships (bfloat16:
        # half of float32 on disk; read in any dtype later), each checked finite and its pages dropped
        # once written: the checkpoint is never resident whole
        release = page_releaser(checkpoint)

        def written(name: str, tensor: torch.Tensor) -> None:
            refuse_nonfinite({name: tensor}, "transformer", str(checkpoint))
            release(tensor)

        save_weights_streamed(base, tmp / BASE_TRANSFORMER_FILE, written=written)
        peft_config = lora_config(rank=rank)
        peft_config.inference_mode = True
        peft_config.save_pretrained(str(tmp))
        save_weights({k: v.float() for k, v in adapter.items()}, tmp / ADAPTER_WEIGHTS_FILE)
        save_weights(the_vae.state_dict(), tmp / BASE_VAE_FILE)
        if stage1 is not None:
            save_restorer(stage1, tmp / RESTORER_FILE)
        config.save(tmp)
    return out


def _is_presets(arch: dict, preset_arch: dict) -> bool:
    """Whether the inferred architecture is the preset's (its arguments over the defaults)."""
    defaults = {
        k: v.default
        for k, v in inspect.signature(InfinityTransformer.__init__).parameters.items()
        if v.default is not inspect.Parameter.empty
    }
    full = {**defaults, **preset_arch}
    return all(full.get(k) == v for k, v in arch.items())
