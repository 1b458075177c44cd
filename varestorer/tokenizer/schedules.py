"""Infinity's scale schedules (square images).

Infinity's next-scale transformer predicts the latent at a growing sequence of square
scales. For an aspect ratio of 1 the public release uses one list of sides,
``1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64``, and a resolution takes its prefix up to
``resolution / vae_downsample``: 256 px (16x16 latent) has 7 scales, 512 px (32x32) 10
scales and 2,521 tokens, 1024 px (64x64) 13 scales. The tiny preset uses the same rule
with its smaller downsampling factor.
"""

from __future__ import annotations

from ..errors import ConfigError

#: Sides of the square scales of Infinity (``dynamic_resolution.ratio2hws[1.0]``).
SQUARE_SIDES: tuple[int, ...] = (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)

Scale = tuple[int, int]


#: Latent sides of the schedules worth listing (Infinity's 256, 512, 768, 1024 px at 16x).
LISTED_SIDES: tuple[int, ...] = (8, 16, 32, 48, 64)


def vae_downsample(ch_mult) -> int:
    """The downsampling factor of a BSQ-VAE with these channel multipliers (one 2x per level after
    the first)."""
    return 2 ** (len(ch_mult) - 1)


def latent_resolutions(downsample: int, sides: tuple[int, ...] = SQUARE_SIDES) -> list[int]:
    """Pixel resolutions a VAE with this downsampling factor has a schedule for."""
    return [side * downsample for side in sides if side >= 4]


def scale_schedule(resolution: int, downsample: int = 16) -> list[Scale]:
    """The ``(h, w)`` of every scale for a square image of ``resolution`` pixels."""
    if resolution % downsample or resolution // downsample not in SQUARE_SIDES:
        valid = ", ".join(str(r) for r in latent_resolutions(downsample))
        raise ConfigError(
            f"no Infinity scale schedule for {resolution}px with a VAE that downsamples "
            f"{downsample}x; valid resolutions: {valid}"
        )
    side = resolution // downsample
    return [(s, s) for s in SQUARE_SIDES if s <= side]


def num_tokens(schedule: list[Scale]) -> int:
    """Total number of tokens (positions) over all scales of a schedule."""
    return sum(h * w for h, w in schedule)
