"""Section of a train x eval matrix run folder (``viscope matrix`` / ``viscope demo``):
per model the two heatmaps, the tables (coloured, best row per column marked) and the
findings of ``summary.md``; a partially finished matrix shows what is finished and says
what is missing."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from viscope.report.html.blocks import (
    markdown_block,
    png_block,
    read_csv,
    read_yaml,
    table_block,
    text_block,
)
from viscope.report.html.page import command_line
from viscope.report.html.registry import register_comparison, register_section

#: the keys a matrix config records (viscope.experiments.config.MatrixConfig)
KEYS = ("models", "train_families", "eval_families")


def _config(folder: Path) -> dict[str, Any]:
    return read_yaml(folder / "config.yaml") or {}


def _is_matrix(folder: Path) -> bool:
    cfg = _config(folder)
    return all(k in cfg for k in KEYS) and isinstance(cfg.get("models"), list)


def _tag(model: dict[str, Any]) -> str:
    """The model's folder name (ModelConfig.tag)."""
    return str(model.get("label") or model.get("name")).replace("/", "_").replace(":", "_")


def _cells(folder: Path) -> list[dict[str, Any]]:
    """Every finished cell of one model's matrix (unreadable ones are not finished)."""
    out = []
    for path in sorted((folder / "cells").glob("*/seed*/*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
    return out


def _from_cells(cells: list[dict[str, Any]], value: str, rows: list[str],
                cols: list[str]) -> pd.DataFrame:
    """Mean over seeds of the finished cells (NaN where none): the table so far."""
    df = pd.DataFrame([c for c in cells if c.get(value) is not None])
    table = pd.DataFrame(np.nan, index=rows, columns=cols)
    if not df.empty and value in df:
        means = df.groupby(["train", "eval"])[value].mean()
        for (r, c), v in means.items():
            if r in table.index and c in table.columns:
                table.loc[r, c] = v
    table.index.name = "train"
    return table


def _model_blocks(cfg: dict[str, Any], model: dict[str, Any], folder: Path
                  ) -> tuple[list[dict[str, Any]], list[str], float]:
    rows, cols = list(cfg["train_families"]), list(cfg["eval_families"])
    seeds = cfg.get("seeds") or [0]
    cells = _cells(folder)
    expected = len(rows) * (len(cols) + 1) * len(seeds)  # + the clean-accuracy cell
    missing, blocks = [], []
    tag = _tag(model)
    finished = (folder / "invariance.csv").is_file() and len(cells) >= expected
    if finished:
        inv = read_csv(folder / "invariance.csv", "invariance table", ("train",))
        acc = read_csv(folder / "accuracy.csv", "accuracy table", ("train",))
        inv, acc = inv.set_index("train"), acc.set_index("train")
        blocks += [png_block(folder / "invariance.png", f"{tag}: NV, train x eval"),
                   table_block(inv, f"{tag}: NV (lower = more invariant)", index=True,
                               heat="low", note="Outlined: the best row in each column."),
                   png_block(folder / "accuracy.png", f"{tag}: test accuracy, train x eval"),
                   table_block(acc, f"{tag}: test accuracy (higher = better)", index=True,
                               heat="high", note="Outlined: the best row in each column.")]
        if (folder / "summary.md").is_file():
            blocks.append(markdown_block((folder / "summary.md").read_text()))
    else:
        missing.append(f"{tag}: {len(cells)} of {expected} cells finished; the tables below "
                       "hold only those (— where none). Run the same `viscope matrix` again "
                       "to finish: finished cells are kept.")
        if cells:
            inv = _from_cells(cells, "nv", rows, cols)
            acc = _from_cells(cells, "accuracy", rows, ["clean", *cols])
            blocks += [table_block(inv, f"{tag}: NV so far", index=True, heat="low"),
                       table_block(acc, f"{tag}: accuracy so far", index=True, heat="high")]
        else:
            blocks.append(text_block(f"{tag}: no cell finished yet."))
    seconds = sum(float(c.get("seconds") or 0) for c in cells)
    return blocks, missing, seconds


@register_section("matrix", detect=_is_matrix)
def matrix_section(folder: Path) -> dict[str, Any]:
    """One block group per model of the config, in its order."""
    cfg = _config(folder)
    blocks, missing, timings = [], [], []
    for model in cfg["models"]:
        b, m, seconds = _model_blocks(cfg, model, folder / _tag(model))
        blocks += b
        missing += m
        timings.append((f"{_tag(model)}: measuring (sum over cells)", f"{seconds:.1f} s"))
    return {"title": f"Invariance matrix: {cfg.get('name', folder.name)} "
                     f"({', '.join(_tag(m) for m in cfg['models'])})",
            "blocks": blocks, "missing": missing, "timings": timings,
            "rerun": command_line("viscope", "matrix", "--config", folder / "config.yaml",
                                  "--out", folder)}


@register_comparison("matrix")
def matrix_comparison(folders: Sequence[Path]) -> dict[str, Any]:
    """For each model tag in the first two matrices: the NV difference (second - first)
    over their common rows and columns, as a heatmap and a table."""
    from viscope.report.tables import heatmap

    a, b = folders[0], folders[1]
    blocks = []
    tags = [_tag(m) for m in _config(a)["models"]]
    for tag in tags:
        fa, fb = a / tag / "invariance.csv", b / tag / "invariance.csv"
        if not (fa.is_file() and fb.is_file()):
            blocks.append(text_block(f"{tag}: not finished in both {a.name} and {b.name}."))
            continue
        ta = read_csv(fa, "invariance table", ("train",)).set_index("train")
        tb = read_csv(fb, "invariance table", ("train",)).set_index("train")
        rows = [r for r in ta.index if r in tb.index]
        cols = [c for c in ta.columns if c in tb.columns]
        diff = tb.loc[rows, cols] - ta.loc[rows, cols]
        with tempfile.TemporaryDirectory() as tmp:
            png = heatmap(diff, Path(tmp) / "diff.png", title=f"{tag}: NV {b.name} - {a.name}",
                          colorbar="NV difference (negative: second more invariant)")
            blocks.append(png_block(png, f"{tag}: NV difference, {b.name} minus {a.name}"))
        blocks.append(table_block(diff, f"{tag}: NV difference ({b.name} - {a.name})",
                                  index=True, heat="low"))
    note = [] if len(folders) == 2 else [text_block(
        f"Differences between the first two of {len(folders)} matrices.")]
    return {"title": f"Matrices compared: {b.name} - {a.name}", "blocks": note + blocks}
