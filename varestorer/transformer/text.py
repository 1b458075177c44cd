"""The T5 text encoder and the text features the transformer takes.

Infinity encodes a caption with flan-t5-xl's encoder (at most 512 tokens, ``</s>`` appended)
and keeps each caption's features up to its own length. Here a batch of them is
:class:`TextFeatures`: zero-padded features ``(B, T, C)`` and a boolean mask ``(B, T)``
(Infinity's packed ``(kv_compact, lens, cu_seqlens_k, max_len)`` form converts both ways),
plus ``drop``: the captions the transformer replaces by its learned ``cfg_uncond``.

:class:`TextEncoder` wraps ``transformers``' ``AutoTokenizer`` and ``T5EncoderModel`` (a Hub id
or a local folder) and keeps an in-memory cache of encoder outputs keyed by caption: the
encoder is frozen, so each distinct caption is encoded once per process.
``TextEncoder.local()`` builds a small T5 and a character-level tokenizer locally (the ``tiny``
and ``small`` presets; ``small`` ships the weights it was pre-trained with).
"""

from __future__ import annotations

import os
import string
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..presets import get_preset

#: Encoder configurations of the Hub T5s the presets name (no download for an estimate).
T5_ENCODERS = {
    "google/flan-t5-xl": dict(
        d_model=2048,
        d_kv=64,
        d_ff=5120,
        num_layers=24,
        num_heads=32,
        vocab_size=32128,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=32,
    ),
}


@dataclass
class TextFeatures:
    """A batch of encoded captions.

    Attributes:
        features: ``(B, T, C)`` T5 features, zero beyond each caption's length.
        mask: ``(B, T)`` bool, True on a caption's tokens (every caption has at least one: ``</s>``).
        drop: ``(B,)`` bool or None: captions to replace by ``cfg_uncond`` (text dropout for
            classifier-free guidance training, and the unconditional branch when sampling).
    """

    features: Tensor
    mask: Tensor
    drop: Tensor | None = None

    def __post_init__(self):
        if self.features.ndim != 3 or tuple(self.mask.shape) != tuple(self.features.shape[:2]):
            raise ValueError(
                f"text features (B, T, C) and mask (B, T) expected, got "
                f"{tuple(self.features.shape)} and {tuple(self.mask.shape)}"
            )

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def lens(self) -> Tensor:
        return self.mask.sum(1)

    def to(self, device=None, dtype=None) -> TextFeatures:
        drop = self.drop.to(device) if self.drop is not None else None
        return TextFeatures(self.features.to(device=device, dtype=dtype), self.mask.to(device), drop)

    def with_drop(self, drop: Tensor | Sequence[bool] | bool | None) -> TextFeatures:
        """The same captions with ``drop`` marking those to replace by ``cfg_uncond``."""
        if drop is None:
            return replace(self, drop=None)
        drop = torch.as_tensor(drop, dtype=torch.bool, device=self.mask.device)
        return replace(self, drop=drop.expand(len(self)).clone())

    @classmethod
    def from_list(cls, feats: Sequence[Tensor], drop=None) -> TextFeatures:
        """Per-caption features ``(len_i, C)`` -> a padded batch."""
        T = max(f.shape[0] for f in feats)
        features = torch.stack([F.pad(f, (0, 0, 0, T - f.shape[0])) for f in feats])
        mask = (
            torch.arange(T, device=features.device)[None]
            < torch.tensor([f.shape[0] for f in feats], device=features.device)[:, None]
        )
        return cls(features, mask).with_drop(drop)

    @classmethod
    def from_packed(cls, kv_compact: Tensor, lens: Sequence[int]) -> TextFeatures:
        """Infinity's packed form (features of all captions concatenated, and their lengths)."""
        return cls.from_list(list(kv_compact.split(list(map(int, lens)))))

    def packed(self) -> tuple[Tensor, list[int], Tensor, int]:
        """Infinity's ``(kv_compact, lens, cu_seqlens_k, max_seqlen_k)``."""
        lens = self.lens
        cu = F.pad(lens.cumsum(0).to(torch.int32), (1, 0))
        return self.features[self.mask], lens.tolist(), cu, int(lens.max())

    @staticmethod
    def cat(items: Sequence[TextFeatures]) -> TextFeatures:
        """Concatenate batches (padded to the longest)."""
        T = max(t.features.shape[1] for t in items)
        feats = torch.cat([F.pad(t.features, (0, 0, 0, T - t.features.shape[1])) for t in items])
        mask = torch.cat([F.pad(t.mask, (0, T - t.mask.shape[1])) for t in items])
        drop = None
        if any(t.drop is not None for t in items):
            drop = torch.cat([t.drop if t.drop is not None else torch.zeros_like(t.mask[:, 0]) for t in items])
        return TextFeatures(feats, mask, drop)


class TextEncoder(nn.Module):
    """A frozen T5 encoder with its tokenizer and a caption-keyed output cache.

    ``encoder(captions, device=None, drop=None)`` -> :class:`TextFeatures`.

    Args:
        tokenizer: a ``transformers`` tokenizer that appends ``</s>``.
        encoder: a ``T5EncoderModel``.
        max_length: captions are truncated to this many tokens (Infinity: 512).
        cache_size: captions whose features are kept (CPU memory; 0 disables the cache).
        auto_dtype: keep the encoder in float16 on CUDA and float32 elsewhere, wherever it is
            moved (:meth:`from_pretrained`'s ``dtype="auto"``).
    """

    def __init__(
        self, tokenizer, encoder: nn.Module, max_length: int = 512, cache_size: int = 100_000, auto_dtype: bool = False
    ):
        super().__init__()
        self.tokenizer = tokenizer
        self.encoder = encoder.eval().requires_grad_(False)
        self.max_length = max_length
        self.cache_size = cache_size
        self.auto_dtype = auto_dtype
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self._fit_dtype()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = "google/flan-t5-xl",
        *,
        dtype="auto",
        device="cpu",
        max_length: int = 512,
        **kwargs,
    ) -> TextEncoder:
        """Tokenizer and encoder from a Hub id or a local folder, as Infinity loads them
        (``tools/run_infinity.py``): the tokenizer with ``legacy=True``, the encoder in float16 on
        a GPU (``transformers`` keeps T5's ``wo`` layers in float32, against fp16 overflow).

        Args:
            dtype: ``"auto"`` (float16 on CUDA, float32 on a CPU, where float16 is slow and
                gains nothing; re-applied when the encoder is moved, see :meth:`_apply`) or a
                torch dtype, kept wherever the encoder goes.
            device: where the encoder is loaded (``"auto"`` then loads float16 weights directly).
        """
        from transformers import AutoTokenizer, T5EncoderModel

        device = torch.device(device)
        load_dtype = _auto_dtype(device) if dtype == "auto" else dtype
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), legacy=True, **kwargs)
            # safetensors where the repo has them; a .bin is read by transformers with weights_only=True
            encoder = T5EncoderModel.from_pretrained(str(name_or_path), dtype=load_dtype, **kwargs)
        except OSError as exc:
            raise ConfigError(
                f"cannot load the T5 text encoder {str(name_or_path)!r} ({exc}). Pass a Hub id "
                f"(google/flan-t5-xl) with network access, or a local folder holding its tokenizer and "
                f"weights (huggingface-cli download google/flan-t5-xl)."
            ) from exc
        return cls(tokenizer, encoder.to(device), max_length=max_length, auto_dtype=dtype == "auto")

    @classmethod
    def local(cls, channels: int = 64, max_length: int = 128, seed: int = 0, weights=None) -> TextEncoder:
        """A small T5 with a character-level tokenizer, built locally: random weights from
        ``seed``, or the safetensors file ``weights`` (a pre-trained base's frozen encoder)."""
        from transformers import T5Config, T5EncoderModel

        tokenizer = build_char_tokenizer()
        config = T5Config(
            vocab_size=len(tokenizer),
            d_model=channels,
            d_kv=channels // 4,
            d_ff=2 * channels,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            dropout_rate=0.0,
            feed_forward_proj="gated-gelu",
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = T5EncoderModel(config)
        if weights is not None:
            from safetensors.torch import load_file

            encoder.load_state_dict({k: v.float() for k, v in load_file(str(weights)).items()}, strict=True)
        return cls(tokenizer, encoder, max_length=max_length)

    @classmethod
    def from_preset(cls, preset, source: str | os.PathLike | None = None, **kwargs) -> TextEncoder:
        """The preset's text encoder (``"local"``: built here, with the shipped weights where the
        preset has them), or ``source`` (Hub id / folder)."""

        preset = get_preset(preset)
        source = preset.text_encoder if source is None else source
        t = preset.transformer
        if str(source) == "local":
            shipped = preset.weights_dir() is not None  # else random weights from the seed (tiny)
            weights = Path(preset.default_weights(TEXT_ENCODER_FILE)) / TEXT_ENCODER_FILE if shipped else None
            return cls.local(channels=t.get("text_channels", 64), max_length=t.get("text_maxlen", 128), weights=weights)
        return cls.from_pretrained(source, max_length=t.get("text_maxlen", 512), **kwargs)

    def _apply(self, fn, recurse=True):
        """``.to(device)`` (also through a parent module, as ``accelerate.prepare`` moves it) keeps
        the ``auto_dtype`` rule: a float32 encoder arriving on CUDA becomes float16, a float16 one
        arriving on a CPU float32. A dtype somebody else chose (bfloat16, ...) is left alone."""
        super()._apply(fn, recurse)
        self._fit_dtype()
        return self

    def _fit_dtype(self) -> None:
        if not self.auto_dtype:
            return
        keep = set(getattr(self.encoder, "_keep_in_fp32_modules", None) or ())  # T5: ("wo",)
        main = [p for n, p in self.encoder.named_parameters() if not keep & set(n.split("."))]
        if not main or main[0].dtype not in (torch.float16, torch.float32):
            return
        want = _auto_dtype(main[0].device)
        if main[0].dtype != want:
            for p in main:  # the kept layers stay float32, as transformers loads T5 in float16
                p.data = p.data.to(want)
            self._cache.clear()  # features of the other precision

    def train(self, mode: bool = True) -> TextEncoder:
        """The encoder stays in eval mode (no dropout: it is frozen and its outputs are cached)."""
        super().train(mode)
        self.encoder.eval()
        return self

    # ------------------------------------------------------------------ encoding
    @property
    def channels(self) -> int:
        return self.encoder.config.d_model

    @torch.no_grad()
    def _encode(self, captions: list[str]) -> list[Tensor]:
        """Each caption on its own (no padding, autocast off), so its features are a function of
        the caption alone, never of which captions shared its batch or what the cache held: a
        resumed run then sees bit-identical text features (padded batches differ in the last ulp)."""
        device = next(self.encoder.parameters()).device
        out = []
        with torch.autocast(device.type, enabled=False):
            for caption in captions:
                tok = self.tokenizer([caption], max_length=self.max_length, truncation=True, return_tensors="pt")
                ids = tok["input_ids"].to(device)
                out.append(self.encoder(input_ids=ids).last_hidden_state[0].float())
        return out

    def encode(self, captions: Sequence[str]) -> list[Tensor]:
        """Per caption, its features ``(len_i, C)`` (float32, from the cache where possible)."""
        captions = [str(c) for c in captions]
        if self.cache_size <= 0:
            return self._encode(captions)
        todo = [c for c in dict.fromkeys(captions) if c not in self._cache]
        if todo:
            for c, f in zip(todo, self._encode(todo)):
                self._cache[c] = f.cpu()
        out = []
        for c in captions:
            self._cache.move_to_end(c)
            out.append(self._cache[c])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def clear_cache(self) -> None:
        self._cache.clear()

    def forward(self, captions: Sequence[str], device=None, drop=None) -> TextFeatures:
        """Captions -> :class:`TextFeatures` on ``device`` (default: the encoder's).

        ``drop`` (bool per caption) marks captions the transformer replaces by ``cfg_uncond``.
        """
        if isinstance(captions, str):
            raise TypeError("pass a list of captions, not one string")
        device = device if device is not None else next(self.encoder.parameters()).device
        feats = [f.to(device) for f in self.encode(captions)]
        return TextFeatures.from_list(feats, drop=drop)


def _auto_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


#: The file of a locally built encoder's weights in a preset's shipped folder.
TEXT_ENCODER_FILE = "text_encoder.safetensors"

#: Characters of the local tokenizer (lower-cased captions).
_CHARS = string.ascii_lowercase + string.digits + " .,;:!?'\"-()/&"


def build_char_tokenizer():
    """A character-level fast tokenizer with T5's special tokens (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{ch: i + 3 for i, ch in enumerate(_CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
