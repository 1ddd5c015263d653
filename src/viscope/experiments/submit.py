"""``submit``: a study as a scheduler's array job, through submitit (optional extra).

Each array task runs the same command line a user would type, with its own share of the
units: ``viscope matrix --config C --out OUT --shard k/n``. The tasks share ``OUT``; the
study's locks keep two tasks off the same unit and let a re-run take over a dead task's
unit, so a failed task is re-submitted by calling :func:`submit` again (finished units are
skipped). ``scripts/slurm/matrix.sbatch`` is the same job for ``sbatch`` users.

Under SLURM each array task asks for ``devices`` tasks per node (one per GPU): srun starts
them, Lightning reads SLURM's variables (``SLURM_PROCID``, ``SLURM_NTASKS``,
``SLURM_LOCALID``, ``SLURM_NODELIST``) and the training uses DDP over them, the measurement
is sharded over the same processes. Elsewhere (``cluster="local"``, for tests and a single
machine) each task is one process and ``--devices`` starts the others
(:func:`viscope.train.distributed.launch`).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from viscope.errors import ViscopeError

#: submitit's executors that :func:`submit` takes (``None``: SLURM when found, else local).
_CLUSTERS = ("slurm", "local", None)
#: What :func:`submit` sets itself; ``options`` may not override these.
_OWN = frozenset({"tasks_per_node", "slurm_array_parallelism"})


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise ViscopeError(
            "Expected the submitit package for --submit; it is not installed. Install the "
            "extra: pip install 'viscope[slurm]' (or pip install submitit)."
        ) from None
    return submitit


def shard_command(
    config: str | os.PathLike[str],
    out: str | os.PathLike[str],
    overrides: Mapping[str, Any] | None = None,
    *,
    study: str = "matrix",
    devices: int = 1,
    accelerator: str | None = None,
) -> list[str]:
    """The command line of one array task, without its ``--shard k/n``.

    Example:
        >>> cmd = shard_command("c.yaml", "/runs/x", {"seeds": "[0,1]"}, devices=2)
        >>> " ".join(cmd[1:])
        'matrix --config c.yaml --out /runs/x --set seeds=[0,1] --set devices=2'
    """
    exe = shutil.which("viscope") or str(Path(sys.executable).parent / "viscope")
    # tasks may start elsewhere: a config file and the folder by absolute path (a shipped
    # config's name stays a name)
    config = Path(config).resolve() if Path(config).is_file() else config
    cmd = [exe, study, "--config", os.fspath(config), "--out", os.fspath(Path(out).resolve())]
    settings = dict(overrides or {})
    if devices != 1:
        settings["devices"] = devices
    if accelerator is not None:
        settings["accelerator"] = accelerator
    for key, value in settings.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd


def submit(
    config: str | os.PathLike[str],
    out: str | os.PathLike[str],
    tasks: int,
    overrides: Mapping[str, Any] | None = None,
    *,
    study: str = "matrix",
    devices: int = 1,
    accelerator: str | None = None,
    cluster: str | None = "slurm",
    options: Mapping[str, Any] | None = None,
    logs: str | os.PathLike[str] | None = None,
) -> list[Any]:
    """Submit ``tasks`` array tasks, task ``k`` running the study's shard ``k/tasks``.

    Args:
        config: the study's YAML file (or shipped name), as ``--config`` takes it.
        out: the run folder every task shares (on a file system all nodes see).
        tasks: array tasks (shards); more than the units leaves some idle.
        overrides: ``--set KEY=VALUE`` settings for every task.
        study: the ``viscope`` command that takes ``--shard`` (``"matrix"``).
        devices: GPUs (or CPU processes) per task: ``devices`` SLURM tasks per node, and
            the trainings use DDP over them.
        accelerator: the config's ``accelerator`` (``"gpu"``) when given.
        cluster: ``"slurm"``, ``"local"`` (every task a process on this machine, for tests)
            or ``None`` (SLURM when ``sbatch`` is found, else local): submitit's
            ``AutoExecutor``.
        options: submitit's parameters (``timeout_min``, ``gpus_per_node``,
            ``cpus_per_task``, ``mem_gb``, ``slurm_partition``, ``slurm_account``,
            ``slurm_additional_parameters``, ...), passed as given.
        logs: submitit's folder of job scripts and logs (``OUT/submitit`` by default;
            ``%j`` is the job id).

    Returns:
        submitit's jobs, one per task (``job.result()`` waits and returns the task's
        output; ``job.job_id``).

    Raises:
        ViscopeError: submitit not installed, ``tasks``/``devices`` not positive ints, an
            unknown ``cluster``, an option :func:`submit` sets itself, or a parameter
            submitit refuses.
    """
    for what, value in (("tasks", tasks), ("devices", devices)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ViscopeError(f"Expected {what} to be an int >= 1; got {value!r}.")
    if cluster not in _CLUSTERS:
        raise ViscopeError(
            f"Expected cluster (--submit) to be one of {', '.join(map(str, _CLUSTERS))}; got "
            f"{cluster!r}. Use slurm on a SLURM cluster, local to run the tasks here."
        )
    clash = sorted(_OWN & set(options or {}))
    if clash:
        raise ViscopeError(
            f"Expected submit options without {', '.join(clash)}; submit sets them from "
            "tasks and devices. Remove them and pass tasks=/devices= instead."
        )
    submitit = _submitit()
    folder = Path(logs) if logs is not None else Path(out) / "submitit" / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    # SLURM starts one task per device (Lightning's SLURM detection); locally the task
    # is one process and --devices launches the others
    per_node = devices if executor.cluster == "slurm" else 1
    params: dict[str, Any] = {"name": f"viscope-{study}", "tasks_per_node": per_node,
                              "slurm_array_parallelism": tasks}
    if accelerator in ("gpu", "cuda") and executor.cluster == "slurm":
        params["gpus_per_node"] = devices
    params.update(options or {})
    try:
        executor.update_parameters(**params)
    except (TypeError, ValueError) as err:
        raise ViscopeError(
            f"Expected submitit parameters; it refused {sorted(options or {})}: "
            f"{' '.join(str(err).split())}"
        ) from None
    command = submitit.helpers.CommandFunction(
        shard_command(config, out, overrides, study=study, devices=devices,
                      accelerator=accelerator), verbose=False)
    with executor.batch():  # one array job on SLURM
        jobs = [executor.submit(command, "--shard", f"{k}/{tasks}") for k in range(tasks)]
    return jobs


__all__ = ["shard_command", "submit"]
