"""Run by tests/test_distill.py in 2 gloo processes: a tiny student whose transformer and LQ
encoder are sharded with FSDP2's ``fully_shard`` (parameters become DTensors) writes, through the
gathering the trainer's checkpoint hook and final export use, the export of the unsharded student."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from varestorer.distill.checkpointing import full_state
from varestorer.distill.model import VARestorerModel
from varestorer.distill.recipe import load_recipe
from varestorer.distill.trainer import _refuse_nonfinite_weights

out = Path(sys.argv[1])
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = VARestorerModel.from_recipe(load_recipe("tiny", [f"train.output_dir={out}", "train.report_to=none"]))
g = torch.Generator().manual_seed(1)
with torch.no_grad():  # an adapter away from zero
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
if rank == 0:
    model.save_export(out / "unsharded")
for block in model.transformer.blocks:
    fully_shard(block)
fully_shard(model.transformer)
fully_shard(model.lq_encoder)
assert all(isinstance(p, DTensor) for p in model.trainable_parameters())
state = full_state(model.export_state())  # a collective: every process
_refuse_nonfinite_weights(state, out, "final")  # the trainer's check, on the gathered weights
if rank == 0:
    model.save_export(out / "sharded", state)
dist.barrier()
dist.destroy_process_group()
