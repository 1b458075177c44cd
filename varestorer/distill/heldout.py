"""How good a pre-trained base is, on the held-out photos (what the ``small`` base's card reports).

- :func:`tokenizer_quality`: PSNR (dB, RGB, images in [0, 1]) of the VAE's reconstructions through
  the multi-scale quantizer at the resolution's schedule (the ceiling of anything decoded from
  it), and how much of the photos' colour they keep.
- :func:`teacher_cross_entropy`: the next-scale bitwise cross-entropy (nats per bit, weighted over
  scales as Infinity trains) of the transformer on the held-out tokens, teacher-forced, with the
  photos' captions; a random initialisation scores ln 2 = 0.693.
- :func:`sample_grid`: multi-step samples from the held-out captions, beside the photo each caption
  describes: does the prior draw the right kind of picture?
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.photos import heldout_crops
from ..evaluation.metrics import psnr_db
from ..inference.compare import comparison_strip, stack_rows
from ..transformer.sampling import sample
from .losses import bitwise_cross_entropy


def _heldout_batch(size: int):
    crops = heldout_crops(size)
    return [c[0] for c in crops], torch.stack([c[1] for c in crops]), [c[2] for c in crops]


@torch.no_grad()
def tokenizer_quality(vae, size: int) -> dict[str, float]:
    """The held-out crops through the VAE and its multi-scale quantizer, once: ``psnr_db`` (RGB,
    images in [0, 1]), and how much colour the reconstructions keep: ``chroma_energy_ratio`` (the
    energy of their chroma, each pixel minus its mean over RGB, relative to the photos') and
    ``chroma_correlation`` (1 and 1: all of it)."""

    _, images, _ = _heldout_batch(size)
    x = images * 2 - 1
    y = vae.decode_latent(vae.quantizer(vae.encode_latent(x), vae.schedule(size)).quantized)
    cx, cy = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    return {
        "psnr_db": float(psnr_db(y, x)),
        "chroma_energy_ratio": float(cy.pow(2).mean() / cx.pow(2).mean()),
        "chroma_correlation": float((cx * cy).sum() / (cx.norm() * cy.norm())),
    }


@torch.no_grad()
def teacher_cross_entropy(transformer, vae, text_encoder, size: int) -> float:

    _, images, captions = _heldout_batch(size)
    schedule = vae.schedule(size)
    tokens = vae.tokenize(images * 2 - 1, schedule)
    logits = transformer(text_encoder(captions), tokens.teacher_input_sequence(), schedule, attention="causal")
    return float(bitwise_cross_entropy(logits, tokens.bit_labels(), schedule, "infinity"))


@torch.no_grad()
def sample_grid(transformer, vae, text_encoder, size: int, path: str | Path, seeds=(0, 1), sampler=None) -> Path:
    """Per held-out photo (first crop): ``photo | a sample per seed`` from its caption; a PNG."""

    names, images, captions = _heldout_batch(size)
    keep = [i for i, n in enumerate(names) if n.endswith("-a")]
    kwargs = sampler.as_kwargs() if sampler is not None else {}
    schedule = vae.schedule(size)
    text = text_encoder([captions[i] for i in keep])
    samples = [vae.decode_latent(sample(transformer, text, schedule, seed=s, **kwargs).latent) for s in seeds]
    rows = []
    for j, i in enumerate(keep):
        panels = [images[i]] + [(s[j] + 1) / 2 for s in samples]
        labels = [captions[i][:21]] + [f"sample, seed {s}" for s in seeds]  # the held-out photo, its caption
        rows.append(comparison_strip(panels, labels))
    path = Path(path)
    stack_rows(rows).save(path)
    return path


@torch.no_grad()
def heldout_restorer_psnr(restorer, degradation, size: int, seed: int = 0) -> dict[str, float]:
    """PSNR (dB, RGB, [0, 1]) on the held-out crops degraded with fixed seeds (``seed + i``): of the
    stage-1 restorer's output (``heldout_psnr``) and of the LQ resized back (``heldout_lq_psnr``)."""
    _, images, _ = _heldout_batch(size)
    device = next(restorer.parameters()).device
    out = degradation(images.to(device), [seed + i for i in range(len(images))])
    restored = restorer(out.lq_up).clamp(0, 1)
    return {"heldout_psnr": float(psnr_db(restored, out.gt)), "heldout_lq_psnr": float(psnr_db(out.lq_up, out.gt))}
