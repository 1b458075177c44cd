"""Run as a subprocess by tests/test_reliability.py: ``varestorer train --recipe tiny ARGS`` through
the real CLI, with the checkpoint write of step ``$PROBE_SLOW_CHECKPOINT_AT`` held for a few
seconds (it prints ``WRITING STEP`` first) so that a test can signal or kill the run mid-write."""

import os
import sys
import time

import varestorer.distill.checkpointing as checkpointing
from varestorer.cli import main

slow_at = int(os.environ.get("PROBE_SLOW_CHECKPOINT_AT", "0"))
write_manifest = checkpointing.write_manifest


def slow_write_manifest(folder, step, digest):
    if step == slow_at:
        print(f"WRITING {step}", flush=True)
        time.sleep(4)
    write_manifest(folder, step, digest)


checkpointing.write_manifest = slow_write_manifest
sys.exit(main(["train", "--recipe", "tiny", *sys.argv[1:]]))
