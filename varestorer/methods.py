"""The restoration methods, one table: what each is called, what it needs, the settings it takes.

Plain data (no torch), read by the pipeline (which runs them: ``varestorer.inference``), the command
line (``--method``), the web app's menu, ``evaluate``'s report and grids, and the benches. Adding a
method is a row here and its ``restore_NAME`` in the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The settings of every method that samples scale by scale (Infinity's sampler).
SAMPLER_SETTINGS = ("cfg", "tau", "top_k", "top_p", "seed", "generator")


@dataclass(frozen=True)
class Method:
    """One restoration method.

    Attributes:
        name: what ``--method`` and ``pipe(method=...)`` take.
        label: the app's menu entry; ``short``: a grid column's title; ``note``: the report's legend.
        settings: the call settings it takes (``pipe(..., **settings)``, CLI options of the same name).
        needs_model: runs a model (``bicubic`` alone runs without one).
        samples_base: samples the base model with the adapters off, so it needs the base weights and
            the adapter apart (not a merged, quantised or fully fine-tuned transformer).
        own: the model's own restoration: it gets the export's colour fix by default (the baselines
            stay as the paper defines them).
        in_app: offered in the web app (``multistep`` ignores the upload: a cost baseline only).
        timed: timed by ``bench latency`` (a network of the model's own: not the stage-1 restorer alone).
    """

    name: str
    label: str
    short: str
    note: str
    settings: tuple[str, ...] = ()
    needs_model: bool = True
    samples_base: bool = False
    own: bool = False
    in_app: bool = True
    timed: bool = True

    def draws(self, seed: int, generator) -> dict:
        """The call settings that seed this method's random draws: the sampling methods' ``seed``,
        or the one-step method's ``generator`` (its ``decode="gumbel"`` bits); none for the others."""
        if "seed" in self.settings:
            return {"seed": seed}
        return {"generator": generator} if "generator" in self.settings else {}


_TABLE = (
    Method(
        "onestep",
        "one-step (VARestorer)",
        "one-step",
        "the distilled student: one forward pass (VARestorer)",
        settings=("decode", "generator", "lq_scales"),
        own=True,
    ),
    Method(
        "bicubic",
        "bicubic (the input upsampled)",
        "bicubic",
        "the LQ image resized with bicubic interpolation (no model)",
        needs_model=False,
        timed=False,
    ),
    Method(
        "zeroshot",
        "zero-shot: the base model samples, LQ tokens at the first scales (slow)",
        "zero-shot",
        "the base sampled scale by scale with the first scales taken from the LQ image (no training)",
        settings=("num_given", *SAMPLER_SETTINGS),
        samples_base=True,
    ),
    Method(
        "multistep",
        "multi-step: the base model samples from the prompt alone (slow)",
        "multi-step",
        "the base (teacher) sampled scale by scale from the prompt with CFG",
        settings=SAMPLER_SETTINGS,
        samples_base=True,
        in_app=False,
    ),
    Method(
        "guided",
        "guided: training-free measurement-guided sampling (slow)",
        "guided",
        "the base sampled with the paper's measurement guidance on the last scales",
        settings=("gamma", "alpha", "factor", *SAMPLER_SETTINGS),
        samples_base=True,
    ),
    Method(
        "varsr",
        "VARSR-style multi-step sampling (slow)",
        "varsr",
        "a model trained in mode varsr, sampled scale by scale from the LQ prefix (the paper's w/o distill)",
        settings=SAMPLER_SETTINGS,
        own=True,
    ),
    Method(
        "restorer",
        "stage-1 restorer alone",
        "restorer",
        "the stage-1 restorer (SwinIR) alone, what the student's encoder reads",
        timed=False,
    ),
)

#: Every method by name, in the order menus and ``--method`` list them.
METHODS: dict[str, Method] = {m.name: m for m in _TABLE}
METHOD_NAMES = tuple(METHODS)
#: Those that sample the base with the adapters off.
BASE_SAMPLING = tuple(m.name for m in _TABLE if m.samples_base)
