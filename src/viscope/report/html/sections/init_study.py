"""Section of an initialisation study run folder (``viscope init-study``): the table per
condition and method (epochs and seconds to the target, accuracies, p against
``default``), the curves and filters, the verdict per condition; a run whose trainings are
not all finished shows the table of the finished ones (computed by the job's own
:mod:`viscope.experiments.init_study.report`) and says what is missing."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from viscope.report.html.blocks import png_block, read_csv, read_yaml, table_block, text_block
from viscope.report.html.page import command_line
from viscope.report.html.registry import register_section
from viscope.report.html.sections.staged import (
    csv_table,
    findings,
    finished,
    missing_line,
    missing_stages,
)

#: what an init-study config records (InitStudyConfig) and no other job's does
KEYS = ("methods", "conditions", "target")


def _config(folder: Path) -> dict[str, Any]:
    return read_yaml(folder / "config.yaml") or {}


def _is_init_study(folder: Path) -> bool:
    cfg = _config(folder)
    return all(k in cfg for k in KEYS) and isinstance(cfg.get("conditions"), dict)


def _tag(fraction: float, patch: int | None, lr: float | None) -> str:
    """Condition.tag of :mod:`viscope.experiments.init_study.config`."""
    from viscope.experiments.init_study.config import Condition

    return Condition(train_fraction=fraction, patch_size=patch, lr=lr).tag


def _runs(folder: Path, cfg: dict[str, Any]) -> list[tuple[str, str, int]]:
    """Every (condition, method, seed) the config asks for, in the job's order; a method
    whose folder exists in no condition (``mimetic`` on a CNN is skipped) is left out
    once the study's report is written."""
    c = cfg["conditions"]
    conds = [_tag(f, p, lr) for f, p, lr in itertools.product(
        c.get("train_fraction") or [1.0], c.get("patch_size") or [None], c.get("lr") or [None])]
    methods = [m.get("label") or m["name"] for m in cfg["methods"]]
    seeds = cfg.get("seeds") or [0]
    done = finished(folder / "report") or (folder / "report" / "table.csv").is_file()
    if done:
        methods = [m for m in methods if any((folder / c / f"{m}-s{s}").is_dir()
                                             for c in conds for s in seeds)]
    return [(c, m, s) for c in conds for m in methods for s in seeds]


def _so_far(folder: Path, runs: list[tuple[str, str, int]], target: float) -> pd.DataFrame:
    """The study's table over the finished runs (the job's per_run / summarise_runs)."""
    from viscope.experiments.init_study.report import HISTORY, per_run, summarise_runs

    parts = []
    for c, m, s in runs:
        stage = folder / c / f"{m}-s{s}"
        if finished(stage):
            h = read_csv(stage / "history.csv", "per-epoch history", ("epoch", "val_acc"))
            parts.append(h.assign(condition=c, method=m, seed=s))
    if not parts:
        return pd.DataFrame()
    history = pd.concat(parts, ignore_index=True)[HISTORY]
    with warnings.catch_warnings():  # a group where no run reached the target: NaN, said
        warnings.simplefilter("ignore", RuntimeWarning)
        return summarise_runs(per_run(history, target))


@register_section("init-study", detect=_is_init_study)
def init_study_section(folder: Path) -> dict[str, Any]:
    """``report/table.csv``, ``report/curves.png``, ``report/filters.png``,
    ``report/history.csv``, ``summary.md`` (with the verdicts)."""
    cfg = _config(folder)
    runs = _runs(folder, cfg)
    names = [f"{c}/{m}-s{s}" for c, m, s in runs]
    rerun = command_line("viscope", "init-study", "--config", folder / "config.yaml",
                         "--out", folder)
    rep = folder / "report"
    # the report has no stage.json (init_study.report writes it after every run)
    missing = missing_stages(folder, names) + ([] if (rep / "table.csv").is_file()
                                               else ["report"])
    if not missing:
        blocks = [csv_table(rep / "table.csv", "study table",
                            "Per condition and method: mean, std and paired p against "
                            "default", ("condition", "method"),
                            note="Epochs / seconds to target: over the runs that reached "
                            "it (reached counts them)."),
                  png_block(rep / "curves.png", "Validation accuracy per epoch"),
                  png_block(rep / "filters.png", "First-layer filters: initial and learned")]
        summary = findings(folder / "summary.md")
        if summary is not None:
            blocks.append(summary)
        blocks.append(csv_table(rep / "history.csv", "per-epoch history",
                                "Every epoch of every run", ("condition", "method", "seed")))
    else:
        table = _so_far(folder, runs, float(cfg["target"]))
        blocks = [table_block(table, "Table of the finished runs so far")] if len(table) \
            else [text_block("No training finished yet.")]
    return {"title": f"Initialisation study: {cfg.get('name', folder.name)} "
                     f"({(cfg.get('model') or {}).get('name', '?')})",
            "blocks": blocks,
            "missing": [missing_line("init-study", missing, len(names) + 1, rerun)]
            if missing else [],
            "rerun": rerun}
