"""Named model presets: the architecture facts of a base model, without any weights.

``infinity-2b`` is the public Infinity-2B release (d32 BSQ-VAE, 2B transformer,
flan-t5-xl); ``small`` is the same architecture pre-trained by this toolkit on a few dozen
photos, its weights shipped inside the package (the demo's base: it really restores);
``tiny`` is the same code at toy widths with random weights, for the fast unit tests.
Print one with ``varestorer info --preset NAME``.

Presets are plain data: the models are built next to their code, by
:func:`varestorer.tokenizer.loading.build_vae` and :func:`varestorer.transformer.loading.build_transformer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError


@dataclass(frozen=True)
class SamplerSettings:
    """How the base model samples (the teacher baseline, any multi-step path): Infinity's
    released settings for the 2B, ``scripts/infer.sh`` (cfg 4, tau 0.5) with ``gen_one_img``'s
    filtering (top_k 900, top_p 0.97) and guidance on the logits (``cfg_insertion_layer=0``).
    With bit labels every draw is between two values, so top_k 900 filters nothing (Infinity clips
    it to the vocabulary, 2); top_p 0.97 drops a bit value below 3% probability."""

    cfg: float = 4.0
    tau: float = 0.5
    top_k: int = 900
    top_p: float = 0.97

    def as_kwargs(self) -> dict:
        return dict(cfg=self.cfg, tau=self.tau, top_k=self.top_k, top_p=self.top_p)


#: Infinity's released sampling settings.
OFFICIAL_SAMPLER = SamplerSettings()


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    vae: dict  # BSQVAE keyword arguments
    resolution: int  # default training / inference resolution (px)
    transformer: dict = field(default_factory=dict)  # transformer keyword arguments
    text_encoder: str = "google/flan-t5-xl"  # Hub id of the T5 encoder, or "local" (a small T5 built here)
    hub_repo: str | None = None  # Hub repo of the official weights
    bundled: str | None = None  # folder under varestorer/assets/ holding weights shipped with the package
    vae_file: str | None = None
    transformer_file: str | None = None
    sampler: SamplerSettings = OFFICIAL_SAMPLER  # defaults of `sample()` paths for this base

    def weights_dir(self) -> Path | None:
        """The folder of the weights shipped inside the package (``bundled``), or None."""
        return Path(__file__).resolve().parent / "assets" / self.bundled if self.bundled else None

    def default_weights(self, filename: str) -> str | Path:
        """Where this preset's weights come from when no checkpoint is given: the shipped
        folder, else the official Hub repo. Errors say how to get them."""
        folder = self.weights_dir()
        if folder is not None:
            if not (folder / filename).is_file():
                raise ConfigError(
                    f"the {self.name} preset's {filename} is not in {folder}: reinstall varestorer, or "
                    f"rebuild the base with the commands in model_cards/varestorer-{self.name}-base.md"
                )
            return folder
        if self.hub_repo is None:
            raise ConfigError(
                f"preset {self.name!r} has no pre-trained weights: pass a checkpoint, or "
                f"model.random_init=true in a recipe"
            )
        return self.hub_repo


PRESETS: dict[str, Preset] = {
    "infinity-2b": Preset(
        name="infinity-2b",
        description="Infinity-2B: d32 BSQ-VAE (32 bits/token, 16x), 2.2B next-scale transformer, flan-t5-xl",
        vae=dict(ch=128, ch_mult=(1, 2, 4, 4, 4), num_res_blocks=2, codebook_dim=32),
        resolution=512,
        # tools/run_infinity.py, model_type infinity_2b: block_chunks 8, text_maxlen 512, flan-t5-xl
        transformer=dict(
            depth=32,
            embed_dim=2048,
            num_heads=16,
            mlp_ratio=4.0,
            text_channels=2048,
            text_maxlen=512,
            codebook_dim=32,
            num_block_chunks=8,
        ),
        hub_repo="FoundationVision/Infinity",
        vae_file="infinity_vae_d32reg.pth",
        transformer_file="infinity_2b_reg.pth",
    ),
    "tiny": Preset(
        name="tiny",
        description="Tiny Infinity for tests and the CPU demo: 16 bits/token, 8x VAE, locally initialised",
        vae=dict(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, codebook_dim=16),
        resolution=64,
        transformer=dict(
            depth=2,
            embed_dim=64,
            num_heads=4,
            mlp_ratio=4.0,
            text_channels=64,
            text_maxlen=128,
            codebook_dim=16,
            num_block_chunks=2,
        ),
        text_encoder="local",
    ),
    # Sizes chosen by measurement on a 2-core CPU (batch 8, 128 px, fwd+bwd+AdamW): VAE ch 32 1.6 s
    # a step (ch 48: 3.2 s); transformer 6x256 1.6 s (8x320, 14.5M: 3.2 s; 8x384: 4.1 s). The
    # smaller pair sees twice the data in the same CPU-hour of pre-training and keeps the demo's
    # distillation within minutes. See model_cards/varestorer-small-base.md.
    "small": Preset(
        name="small",
        description="Small Infinity pre-trained by this toolkit (shipped): 32 bits/token, 8x VAE, 128 px, 7M transformer",
        vae=dict(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, codebook_dim=32, norm_groups=0, ln_before_quant=True),
        resolution=128,
        transformer=dict(
            depth=6,
            embed_dim=256,
            num_heads=4,
            mlp_ratio=4.0,
            text_channels=256,
            text_maxlen=96,
            codebook_dim=32,
            num_block_chunks=2,
        ),
        text_encoder="local",
        bundled="small",
        vae_file="vae.safetensors",
        transformer_file="transformer.safetensors",
    ),
}


def get_preset(name: str | Preset) -> Preset:
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None
