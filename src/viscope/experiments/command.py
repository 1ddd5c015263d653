"""``viscope matrix`` and ``viscope demo``: the train x eval invariance matrix from a config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from viscope.cli_common import Overrides, config_path, console, parse_kv
from viscope.errors import ViscopeError


def run_matrix_command(config: str, out: Path, overrides: dict[str, Any], progress: bool) -> None:
    """Run the matrix of ``config`` (a file or a shipped name) into ``out`` and say where the
    tables are."""
    from viscope.experiments import load_config, run_matrix

    cfg = load_config(config_path(config), overrides)
    out_console = console()
    out_console.print(f"[bold]{cfg.name}[/]: {len(cfg.models)} model(s) × "
                  f"{len(cfg.train_families)} training families × {len(cfg.eval_families)} "
                  f"evaluation families → {out}/")
    results = run_matrix(cfg, out, log=out_console.print, progress=progress)
    for tag, r in results.items():
        out_console.print(f"\n[bold]{tag}[/]: trained {r.trained}, measured {r.measured} new cells")
        out_console.print(f"  invariance table: {r.folder / 'invariance.csv'} "
                      f"(heatmap {r.folder / 'invariance.png'})")
        out_console.print(f"  accuracy table:   {r.folder / 'accuracy.csv'} "
                      f"(heatmap {r.folder / 'accuracy.png'})")
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
) -> None:
    """Train one model per augmentation family and measure each against every family."""
    overrides = parse_kv(set_, "--set")
    if dataset_root is not None:
        if not Path(dataset_root).exists():
            raise ViscopeError(f"--dataset-root {dataset_root} does not exist; give a folder "
                               f"in ImageFolder layout (root/<class>/<image>) or a CSV file.")
        overrides["dataset"] = dataset_root
    run_matrix_command(config, out, overrides, progress)


def demo(
    out: Annotated[Path, typer.Option(help="run folder")] = Path("runs/demo"),
    set_: Overrides = None,
) -> None:
    """The main job on built-in data: the train × eval invariance matrix of two tiny
    models (11 training families × 10 evaluation families; a few minutes on a laptop CPU).
    Re-running resumes and skips finished cells."""
    run_matrix_command("matrix-demo", out, parse_kv(set_, "--set"), progress=False)
