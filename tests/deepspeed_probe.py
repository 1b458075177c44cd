"""Run under torchrun by tests/test_deepspeed.py: ``varestorer train --recipe tiny ARGS``, the loss
of the ``$PROBE_NAN_AT``-th forward pass NaN on every process (0: none).

With ``ACCELERATE_USE_DEEPSPEED=true`` (and the ZeRO settings in the environment, as ``accelerate
launch --config_file launch/deepspeed-zero2.yaml`` sets them) this goes through accelerate's own
DeepSpeed path on CPUs: accelerate starts DeepSpeed only on an accelerator, but with a gloo process
group made first (``PartialState(backend="gloo")``) it runs on DeepSpeed's CPU accelerator.
DeepSpeed's shared-memory all-reduce (a C++ extension compiled at first use, ~45 s) is left out:
gloo's is used. Without it, DDP over gloo as ``ACCELERATE_USE_CPU=true torchrun`` runs it."""

import importlib
import os
import sys

from accelerate import PartialState

from varestorer.cli import main
from varestorer.distill.model import VARestorerModel

if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # (deepspeed.comm.torch is torch)
    PartialState(backend="gloo")

nan_at, forward, calls = int(os.environ.get("PROBE_NAN_AT", "0")), VARestorerModel.forward, []


def nan_at_call(self, batch):
    out = forward(self, batch)
    calls.append(1)
    if len(calls) == nan_at:
        out["loss"] = out["loss"] * float("nan")
    return out


VARestorerModel.forward = nan_at_call
sys.exit(main(["train", "--recipe", "tiny", *sys.argv[1:]]))
