"""``viscope matrix`` and ``viscope demo``: the train x eval invariance matrix from a config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from viscope.cli_common import (
    Balance,
    Collect,
    LockTimeout,
    Overrides,
    Shard,
    check_work_options,
    config_path,
    console,
    parse_kv,
    work_lines,
    work_part,
)
from viscope.errors import ViscopeError


def run_matrix_command(config: str, out: Path, overrides: dict[str, Any], progress: bool,
                       shard: str | None = None, balance: str = "index",
                       lock_timeout: float | None = None, collect: bool = False) -> None:
    """Run the matrix of ``config`` (a file or a shipped name) into ``out`` and say where the
    tables are (``shard``, ``balance``, ``lock_timeout``, ``collect``: see
    :func:`viscope.experiments.run_matrix`)."""
    from viscope.experiments import load_config, run_matrix

    k, n, timeout = check_work_options(out, shard, balance, lock_timeout, collect)
    from viscope.train.distributed import is_main

    cfg = load_config(config_path(config), overrides)
    out_console = console()
    part = work_part(k, n, collect)
    if is_main():  # --devices N re-runs this command in N - 1 more processes
        out_console.print(f"[bold]{cfg.name}[/]: {len(cfg.models)} model(s) × "
                          f"{len(cfg.train_families)} training families × "
                          f"{len(cfg.eval_families)} evaluation families → {out}/{part}")
    results = run_matrix(cfg, out, log=out_console.print, progress=progress, shard=shard,
                         balance=balance, collect=collect,
                         lock_timeout=timeout)
    if not is_main():
        return
    for tag, r in results.items():
        out_console.print(f"\n[bold]{tag}[/]: trained {r.trained}, measured {r.measured} new cells")
        for line in work_lines(r.left, r.missing, r.folder / "missing.txt"):
            out_console.print("  " + line)
        out_console.print(f"  invariance table: {r.folder / 'invariance.csv'} "
                      f"(heatmap {r.folder / 'invariance.png'})")
        out_console.print(f"  accuracy table:   {r.folder / 'accuracy.csv'} "
                      f"(heatmap {r.folder / 'accuracy.png'})")
        if r.explanation is not None:
            out_console.print(f"  explanation:      {r.folder / 'explanation.csv'} "
                              f"(heatmap {r.folder / 'explanation.png'})")
        if (r.folder / "invariance_by_epoch.csv").is_file():
            out_console.print(f"  tracking:         {r.folder / 'invariance_by_epoch.csv'} "
                              f"(figure {r.folder / 'invariance_by_epoch.png'})")
        out_console.print(f"  summary:          {r.folder / 'summary.md'}")
    from viscope.report.html import write_report  # one page of the whole run folder

    out_console.print(f"\nreport:             {write_report([out])}")


def matrix(
    config: Annotated[str, typer.Option(help="YAML file, or a shipped config name "
                                             "(matrix-demo, matrix-fastervit)")],
    out: Annotated[Path, typer.Option(help="run folder (re-running resumes it)")] = Path(
        "runs/matrix"),
    dataset_root: Annotated[
        str | None, typer.Option(help="your dataset folder or CSV (replaces the config's "
                                      "dataset)")] = None,
    set_: Overrides = None,
    progress: Annotated[bool, typer.Option(help="show training progress bars")] = False,
    shard: Shard = None,
    balance: Balance = "index",
    lock_timeout: LockTimeout = None,
    collect: Collect = False,
    devices: Annotated[int | None, typer.Option(
        help="processes per unit (GPUs, or CPU processes): DDP training and the measurement "
             "sharded over them; rank 0 claims units and writes")] = None,
    submit: Annotated[str | None, typer.Option(
        help="slurm (or local): submit --tasks array tasks through submitit, each running "
             "its --shard, instead of running here")] = None,
    tasks: Annotated[int, typer.Option(help="array tasks of --submit")] = 1,
    track_invariance: Annotated[str | None, typer.Option(
        help="families (rotation,brightness): every training measures NV per layer at "
             "epoch 0 and every --track-every epochs (invariance_by_epoch.csv in its folder, "
             "combined per model); a finished training is trained again to track it")] = None,
    track_every: Annotated[int | None, typer.Option(
        help="epochs between --track-invariance measurements (and after the last)")] = None,
    explain: Annotated[str | None, typer.Option(
        help="an attribution method (gradcam): every cell also measures how well its maps "
             "move with the image (explanation.csv: mean correlation, higher = more "
             "equivariant); trainings and NV cells are kept")] = None,
) -> None:
    """Train one model per augmentation family and measure each against every family."""
    overrides = parse_kv(set_, "--set")
    if devices is not None:
        overrides["devices"] = devices
    for key, value in (("track_invariance", track_invariance), ("track_every", track_every),
                       ("explain", explain)):
        if value is not None:
            overrides[key] = value
    if dataset_root is not None:
        if not Path(dataset_root).exists():
            raise ViscopeError(f"--dataset-root {dataset_root} does not exist; give a folder "
                               f"in ImageFolder layout (root/<class>/<image>) or a CSV file.")
        overrides["dataset"] = dataset_root
    if submit is not None:
        from viscope.experiments.submit import submit as submit_jobs

        jobs = submit_jobs(config, out, tasks, overrides, cluster=submit,
                           devices=int(overrides.get("devices", 1)))
        console().print(f"submitted {len(jobs)} task(s): {', '.join(j.job_id for j in jobs)}; "
                        f"then: viscope matrix --config {config} --out {out} --collect")
        return
    run_matrix_command(config, out, overrides, progress, shard, balance, lock_timeout, collect)


def demo(
    out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/demo"),
    set_: Overrides = None,
) -> None:
    """The main job on built-in data: the train × eval invariance matrix of two tiny
    models (11 training families × 10 evaluation families; a few minutes on a laptop CPU).
    Re-running resumes and skips finished cells."""
    run_matrix_command("matrix-demo", out, parse_kv(set_, "--set"), progress=False)
