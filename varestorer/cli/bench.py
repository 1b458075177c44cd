"""``varestorer bench NAME``: benchmarks. Each lives with the command it measures.

:data:`BENCHMARKS` maps a benchmark name to ``"module:function"``, a function ``(subparsers)``
that adds the benchmark's parser and sets ``func`` (heavy imports inside ``func`` only). A new
benchmark is one line here.
"""

from __future__ import annotations

import importlib

#: benchmark name -> "module:function(subparsers)" registering its parser.
BENCHMARKS: dict[str, str] = {
    "degrade": "varestorer.cli.degrade:register_bench",
    "train": "varestorer.cli.train:register_bench",
    "latency": "varestorer.cli.restore:register_bench",
    "memory": "varestorer.cli.restore:register_bench_memory",
    "flops": "varestorer.cli.flops:register_bench",
}


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks (" + ", ".join(BENCHMARKS) + ")",
        description="Measure the throughput of a part of the toolkit on this machine.",
    )
    inner = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, target in BENCHMARKS.items():
        module, function = target.split(":")
        getattr(importlib.import_module(module), function)(inner)
