"""Section of a training run folder (``viscope train``): curves, accuracy, history."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from viscope.errors import ViscopeError
from viscope.report.html.blocks import figure_block, read_json, table_block
from viscope.report.html.page import command_line
from viscope.report.html.registry import register_comparison, register_section

RECORD = "train.json"  # viscope.train.run.RECORD: what a training folder records
SUMMARY = ("status", "epochs_run", "best_epoch", "monitor", "best_score", "best_val_acc",
           "test_acc", "images_per_second")


def _record(folder: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    record = read_json(folder / RECORD, "the training record")
    if not isinstance(record, dict) or not isinstance(record.get("history", []), list):
        raise ViscopeError(f"Expected {folder / RECORD} to hold a training record (a mapping "
                           "with a 'history' list); it does not. Run `viscope train` again.")
    return record, pd.DataFrame(record.get("history") or [])


def _curves(runs: Sequence[tuple[str, pd.DataFrame]], caption: str) -> dict[str, Any]:
    from viscope.report.figures import pyplot

    plt = pyplot()
    fig, (loss, acc) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for name, h in runs:
        prefix = f"{name}: " if len(runs) > 1 else ""
        for col, style in (("train_loss", "-"), ("val_loss", "--")):
            if col in h:
                loss.plot(h["epoch"], h[col], style, marker="o", label=prefix + col)
        if "val_acc" in h:
            acc.plot(h["epoch"], h["val_acc"], marker="o", label=prefix + "val_acc")
    loss.set(xlabel="epoch", ylabel="loss", title="loss")
    acc.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    for ax in (loss, acc):
        if ax.lines:
            ax.legend(fontsize=8)
    return figure_block(fig, caption)


@register_section("train", detect=lambda f: (f / RECORD).is_file())
def train_section(folder: Path) -> dict[str, Any]:
    """Curves, the summary and the per-epoch history of one training."""
    record, history = _record(folder)
    cfg = record.get("config") or {}
    summary = pd.DataFrame([{k: record.get(k) for k in SUMMARY}])
    blocks = [table_block(summary, "Result"),
              table_block(history, "History (one row per epoch)")]
    if not history.empty and "epoch" in history:
        blocks.insert(0, _curves([(folder.name, history)], "Loss and validation accuracy "
                                 "per epoch"))
    missing = [] if record.get("status") == "finished" else [
        f"The training is {record.get('status', 'unfinished')}: run the command below again "
        "to resume it."]
    seconds = record.get("seconds")
    return {"title": f"Training: {cfg.get('model', folder.name)} on "
                     f"{cfg.get('dataset', '?')}", "blocks": blocks, "missing": missing,
            "environment": record.get("environment") or {},
            "timings": [("fit", f"{seconds:.1f} s")] if isinstance(seconds, (int, float))
            else [],
            "rerun": command_line("viscope", "train", "--config", folder / "config.yaml",
                                  "--out", folder)}


@register_comparison("train")
def train_comparison(folders: Sequence[Path]) -> dict[str, Any]:
    """The trainings' curves on one plot and their results in one table."""
    runs, rows = [], []
    for f in folders:
        record, history = _record(f)
        runs.append((f.name, history))
        rows.append({"run": str(f), **{k: record.get(k) for k in SUMMARY}})
    return {"title": f"{len(folders)} trainings compared",
            "blocks": [_curves(runs, "Loss and validation accuracy of each run"),
                       table_block(pd.DataFrame(rows), "Results")]}
