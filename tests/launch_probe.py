"""Run under torchrun by tests/test_sharded_training.py: ``varestorer train --recipe tiny ARGS`` (or the
recipe ``$PROBE_RECIPE`` names),
the loss of the ``$PROBE_NAN_AT``-th forward pass NaN on every process (0: none), through the
backend the environment asks for, as ``accelerate launch --config_file launch/X.yaml`` sets it:

- ``ACCELERATE_USE_DEEPSPEED=true`` (+ the ZeRO settings): accelerate's own DeepSpeed path. It
  starts DeepSpeed only on an accelerator; with a gloo process group made first
  (``PartialState(backend="gloo")``) it runs on DeepSpeed's CPU accelerator. DeepSpeed's
  shared-memory all-reduce (a C++ extension compiled at first use, ~45 s) is left out: gloo's is used.
- ``ACCELERATE_USE_FSDP=true`` (+ ``FSDP_*``): accelerate's own FSDP2 path. It enables FSDP only on
  accelerators (on a CPU it falls back to DDP); the same gloo group, its type set to multi-device,
  lets it shard over the CPU processes (torch's ``fully_shard`` runs on CPUs).
- neither: DDP over gloo, as ``ACCELERATE_USE_CPU=true torchrun`` runs it."""

import importlib
import os
import sys

from accelerate import PartialState
from accelerate.utils import DistributedType

from varestorer.cli import main
from varestorer.distill.model import MODE_CLASSES

if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # (deepspeed.comm.torch is torch)
    PartialState(backend="gloo")
if os.environ.get("ACCELERATE_USE_FSDP") == "true":
    PartialState(backend="gloo").distributed_type = DistributedType.MULTI_GPU

nan_at, calls = int(os.environ.get("PROBE_NAN_AT", "0")), []


def nan_at_call(forward):
    def step(self, batch):
        out = forward(self, batch)
        calls.append(1)
        if len(calls) == nan_at:
            out["loss"] = out["loss"] * float("nan")
        return out

    return step


for mode_class in MODE_CLASSES.values():  # the training step of every mode
    mode_class.forward = nan_at_call(mode_class.forward)
sys.exit(main(["train", "--recipe", os.environ.get("PROBE_RECIPE", "tiny"), *sys.argv[1:]]))
