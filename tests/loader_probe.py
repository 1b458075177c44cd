"""Run by ``accelerate launch`` in tests/test_sample_randomness.py: iterate the tiny recipe's
prepared training loader for two epochs as the trainer does, and write what each process saw."""

import json
import os
import sys

from accelerate import Accelerator

from varestorer.distill.dataloader import build_dataloader
from varestorer.distill.recipe import load_recipe
from varestorer.distill.trainer import per_device_batch

out = sys.argv[1]
recipe = load_recipe("tiny", sys.argv[2:])
accelerator = Accelerator()
assert accelerator.num_processes == int(os.environ.get("WORLD_SIZE", "1"))
loader = accelerator.prepare(build_dataloader(recipe, per_device_batch(recipe, accelerator.num_processes)))
seen = []
for epoch in range(2):
    loader.set_epoch(epoch)
    for batch in loader:
        for i, seed, image in zip(batch["index"].tolist(), batch["seed"].tolist(), batch["pixel_values"]):
            seen.append({"epoch": epoch, "index": i, "seed": seed, "crop": round(float(image.double().sum()), 6)})
with open(f"{out}/rank{accelerator.process_index}.json", "w") as f:
    json.dump(seen, f)
