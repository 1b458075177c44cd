"""VARestorer: distil Infinity (a next-scale visual autoregressive text-to-image model)
into a one-step real-world image super-resolution model.

The package reads like the data flow of a training step::

    data -> degradations -> tokenizer -> transformer -> distill -> export/hub -> inference -> evaluation
"""

__version__ = "0.1.0"
