"""Distil Infinity into a one-step super-resolution model (or fine-tune the teacher).

    accelerate launch [--config_file launch/8gpu.yaml] distill.py --recipe recipes/NAME.yaml [section.key=value ...]

``--overwrite`` starts again in a ``train.output_dir`` that holds another run (its files moved aside).

Everything lives in the library; this file is the entry point accelerate launches.
"""

import sys

from varestorer.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
