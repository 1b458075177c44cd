"""Several processes restoring one set of inputs (``accelerate launch -m varestorer restore``,
``torchrun``, or a user's own script under a launcher): who they are, which batches each restores,
and what they tell each other (:func:`~.files.restore_files` takes a :func:`processes`).

One process (no ``WORLD_SIZE`` > 1 in the environment) has no process group and imports nothing
of accelerate. Under a launcher each process restores on its own ``PartialState().device``
(``cuda:LOCAL_RANK``, or ``cpu`` with ``accelerate launch --cpu``)."""

from __future__ import annotations

import os
from datetime import timedelta

import torch

from ..errors import ConfigError

#: How long a process waits for the others (the end of a run: the first done waits for the
#: last). A process that fails ends the group sooner: the launcher stops the others.
WAIT_HOURS = 24


def launched_processes() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 without one)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def whole_batches(n: int, batch_size: int, rank: int, world: int) -> list[tuple[int, slice]]:
    """``(index, slice)`` of the batches of ``n`` items that process ``rank`` of ``world`` restores:
    the one-process run's batches (``batch_size`` consecutive items), dealt out whole in turn, so
    that every image is restored in the same batch as by one process (batch composition changes
    floating-point results) and by exactly one process."""
    starts = range(0, n, batch_size)
    return [(k, slice(s, s + batch_size)) for k, s in enumerate(starts) if k % world == rank]


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch ``index``'s random draws: ``seed`` itself for the first, then a seed mixed
    from both (different seeds' batches never share draws in practice), whichever process runs it."""
    return (seed + index * 0x9E3779B97F4A7C15) % 2**63


class Processes:
    """One process: rank 0 of 1; every exchange is local."""

    rank, world = 0, 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str | None) -> str:
        return requested or ("cuda" if torch.cuda.is_available() else "cpu")

    def share(self, obj):
        """``obj`` of the main process, in every process."""
        return obj

    def gather(self, obj) -> list:
        """``obj`` of every process, in rank order, in every process."""
        return [obj]

    def close(self) -> None:
        pass


class ProcessGroup(Processes):
    """The processes a launcher started, through accelerate's ``PartialState``."""

    def __init__(self):
        from accelerate import PartialState  # a launched group only: one process imports no accelerate
        from accelerate.utils import parse_flag_from_env

        # CPU processes: asked for (accelerate launch --cpu), or nothing else here
        cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not _has_accelerator()
        self.state = PartialState(cpu, timeout=timedelta(hours=WAIT_HOURS))
        self.rank, self.world = self.state.process_index, self.state.num_processes

    def device(self, requested: str | None) -> str:
        """This process's own device; ``--device cpu`` restores on the CPU; any other ``--device``
        would put every process on one device."""
        own = self.state.device
        if requested is None:
            return str(own)
        asked = torch.device(requested)
        if asked.type == "cpu":
            return "cpu"
        if asked.type == own.type and asked.index is None:
            return str(own)
        raise ConfigError(
            f"--device {requested} with {self.world} processes: each process restores on its own device "
            f"({own.type}:LOCAL_RANK, here {own}); leave out --device, or pass --device cpu to restore on the CPU"
        )

    def share(self, obj):
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj], from_process=0)[0]

    def gather(self, obj) -> list:
        from accelerate.utils import gather_object

        return gather_object([obj])

    def close(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _has_accelerator() -> bool:
    found = getattr(torch, "accelerator", None)  # torch >= 2.6
    return found.is_available() if found is not None else torch.cuda.is_available()


def processes() -> Processes:
    """The process group of a launcher (``WORLD_SIZE`` > 1), else the one process."""
    return ProcessGroup() if launched_processes() > 1 else Processes()
