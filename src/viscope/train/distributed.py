"""Processes of one job: which one this is, starting them, and letting rank 0 decide.

A study that trains with Lightning's DDP and measures sharded over the same processes
(:func:`viscope.invariance.measure` merges the ranks' states when a process group exists)
needs every process to run the same units in the same order, and only one of them to
write results or claim locks. Lightning starts the extra processes itself only at the
first ``Trainer.fit`` (its subprocess launcher re-runs the command line in each new
process), which is too late for a study: the new processes would start from the top and
make their own choices (claim locks, skip units) without rank 0. :func:`launch` therefore
starts them before the first unit, with Lightning Fabric's launcher, and creates the
process group; the trainers that follow find ``LOCAL_RANK`` set and that group initialised
and reuse both (Lightning leaves the group initialised after ``fit``, so the measurement
after it is sharded too).

Protocol for a study's loop (what ``viscope matrix --devices N`` does)::

    launch(devices, accelerator)          # every rank, before any unit
    step = Lockstep()
    if is_main():                         # rank 0 checks, claims (locks) and announces
        try:
            for unit in units_to_claim():
                step.lead(unit.id, unit.run)
        finally:
            step.end()
    else:                                 # the others run what rank 0 announces
        for uid in step.follow():
            by_id[uid].run()

    # inside unit.run, on every rank:
    todo = broadcast_object(read_todo())  # decisions read from the folder: rank 0's
    fit(..., devices=devices)             # DDP: every rank; fit writes on rank 0
    cell = measure(...)                   # sharded, merged: the same on every rank
    if is_main():
        write(cell)                       # or: on_main(write)(cell)

Rank 0's choices are broadcast rather than recomputed on each rank because they depend
on the shared folder (finished units, other workers' locks, a stale training), which can
change between two ranks' reads; the other ranks never take locks or write. Under
``torchrun`` or ``srun`` (SLURM starts one task per GPU) the processes exist already:
:func:`launch` only creates the process group.

Written here because Lightning offers the pieces (``rank_zero_only``, the strategy's
``broadcast``) only inside a trainer or a Fabric object, not between trainers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from functools import wraps
from typing import Any, TypeVar

from viscope.errors import ViscopeError

T = TypeVar("T")

#: Environment variables that carry a process's global rank, in the order they are read:
#: torchrun / Lightning's launchers (``RANK``; ``LOCAL_RANK`` on one node), SLURM's srun.
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID")


def _group() -> Any:
    """``torch.distributed`` when a process group is initialised, else ``None``."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def rank_and_world() -> tuple[int, int]:
    """``(global rank, number of processes)`` of this process.

    From the process group when one exists; otherwise from the launcher's environment
    (``RANK``/``LOCAL_RANK``/``SLURM_PROCID`` and ``WORLD_SIZE``/``SLURM_NTASKS``), so
    that a process started by torchrun or srun knows it is not rank 0 before any group
    exists; ``(0, 1)`` for a plain process.
    """
    dist = _group()
    if dist is not None:
        return dist.get_rank(), dist.get_world_size()
    rank = next((int(os.environ[v]) for v in _RANK_VARIABLES if os.environ.get(v)), 0)
    world = os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or "1"
    return rank, int(world)


def group_size() -> int:
    """Processes of the process group (1 without one): the ranks that run in step."""
    dist = _group()
    return 1 if dist is None else dist.get_world_size()


def leads() -> bool:
    """Whether this process decides and writes for its process group: rank 0 of the
    group, or any process outside one (each of several srun tasks without ``--devices``
    is a worker of its own)."""
    dist = _group()
    return dist is None or dist.get_rank() == 0


def is_main() -> bool:
    """Whether this process is rank 0: the one that prints, writes and claims units."""
    return rank_and_world()[0] == 0


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (any picklable object); ``obj`` itself without a
    process group. Every rank must call it, in the same order."""
    dist = _group()
    if dist is None or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every rank gets here (nothing without a process group)."""
    dist = _group()
    if dist is not None and dist.get_world_size() > 1:
        dist.barrier()


def on_main(fn: Callable[..., T]) -> Callable[..., T | None]:
    """``fn`` run on rank 0 only (``None`` on the other ranks), for writers of results.

    Unlike Lightning's ``rank_zero_only``, the rank is read at each call, from the process
    group when there is one.
    """

    @wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> T | None:
        return fn(*args, **kwargs) if is_main() else None

    return wrapped


class Lockstep:
    """Rank 0 chooses what to run; the other ranks run the same things, in step.

    Rank 0 wraps each task it decides to run with :meth:`lead` (which tells the others
    its key first) and calls :meth:`end` when it has nothing left; every other rank loops
    over :meth:`follow` and runs the task of each key it receives. The tasks hold the
    collective work (a DDP training, a sharded measurement), so the ranks meet in them.
    An exception on rank 0 ends the followers' loop only through :meth:`end` (call it in
    a ``finally``); one inside a collective leaves them to the backend's timeout.
    """

    def lead(self, key: str, task: Callable[[], T]) -> T:
        """Rank 0: announce ``key``, then run ``task``."""
        broadcast_object(key)
        return task()

    def follow(self) -> Iterator[str]:
        """Other ranks: the keys rank 0 announces, until it ends."""
        while (key := broadcast_object(None)) is not None:
            yield key

    def end(self) -> None:
        """Rank 0: tell the followers there is nothing more."""
        broadcast_object(None)


def launch(devices: int, accelerator: str = "cpu", num_nodes: int = 1) -> tuple[int, int]:
    """Start the processes of a ``devices``-process job now and create its process group.

    Without a launcher (a plain ``viscope`` command with ``--devices 2``) this re-runs the
    command line in ``devices - 1`` new processes (Lightning Fabric's subprocess launcher,
    the one ``Trainer`` uses) and returns in each of them; under torchrun or srun, whose
    processes exist already, it only joins them into a group. ``devices == 1`` does
    nothing. The backend is gloo on CPU, NCCL on GPUs (Lightning's choice).

    Args:
        devices: processes (GPUs, or CPU processes) per node.
        accelerator: ``"cpu"``, ``"gpu"``, ``"auto"``: as given to the trainers after.
        num_nodes: nodes of the job (SLURM's ``--nodes``).

    Returns:
        ``(global rank, number of processes)`` of this process.

    Raises:
        ViscopeError: ``devices`` is not a positive int, or Lightning refused the settings
            (for example more devices than GPUs, or a launcher's process count that does
            not match ``devices``).
    """
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ViscopeError(f"Expected devices to be an int >= 1; got {devices!r}.")
    if devices * num_nodes == 1 or _group() is not None:
        return rank_and_world()
    from lightning.fabric import Fabric
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from viscope.train.trainer import quiet

    try:
        with quiet():
            Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                   strategy="ddp").launch()
    except (MisconfigurationException, ValueError, RuntimeError) as err:
        message = " ".join(str(err).split())
        raise ViscopeError(
            f"Expected to start {devices * num_nodes} processes ({devices} per node, "
            f"accelerator {accelerator!r}); Lightning refused: {message} Give --devices as "
            "the number of GPUs (or CPU processes) per node, or the launcher's task count."
        ) from None
    return rank_and_world()


__all__ = ["Lockstep", "barrier", "broadcast_object", "group_size", "is_main", "launch",
           "leads", "on_main", "rank_and_world"]
