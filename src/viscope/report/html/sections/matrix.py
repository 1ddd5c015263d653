"""Section of a train x eval matrix run folder (``viscope matrix`` / ``viscope demo``):
per model the two heatmaps, the tables (coloured, best row per column marked) and the
findings of ``summary.md``, the explanation-equivariance table (``--explain``) and the
invariance-during-training figure (``--track-invariance``) when the run has them; a
partially finished matrix shows what is finished and says what is missing."""

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
        if (folder / "summary.md").is_file():  # first: its heading names the model
            blocks.append(markdown_block((folder / "summary.md").read_text()))
        blocks += [png_block(folder / "invariance.png", f"{tag}: NV, train x eval"),
                   table_block(inv, f"{tag}: NV (lower = more invariant)", index=True,
                               heat="low", note="Outlined: the best row in each column."),
                   png_block(folder / "accuracy.png", f"{tag}: test accuracy, train x eval"),
                   table_block(acc, f"{tag}: test accuracy (higher = better)", index=True,
                               heat="high", note="Outlined: the best row in each column.")]
        blocks += _extra_blocks(folder, tag)
    else:
        missing.append(f"{tag}: {len(cells)} of {expected} cells finished; the tables below "
                       "hold only those (— where none). Run the same `viscope matrix` again "
                       "to finish: finished cells are kept.")
        if cells:
            inv = _from_cells(cells, "nv", rows, cols)
            acc = _from_cells(cells, "accuracy", rows, ["clean", *cols])
            blocks += [table_block(inv, f"{tag}: NV so far", index=True, heat="low"),
                       table_block(acc, f"{tag}: accuracy so far", index=True, heat="high")]
            expl = [{**c, "correlation": c["explanation"].get("correlation")} for c in cells
                    if isinstance(c.get("explanation"), dict)]
            if expl:
                blocks.append(table_block(_from_cells(expl, "correlation", rows, cols),
                                          f"{tag}: explanation correlation so far",
                                          index=True, heat="high"))
        else:
            blocks.append(text_block(f"{tag}: no cell finished yet."))
    seconds = sum(float(c.get("seconds") or 0) for c in cells)
    return blocks, missing, seconds


def _extra_blocks(folder: Path, tag: str) -> list[dict[str, Any]]:
    """The optional parts of a finished model: the explanation-equivariance heatmap and
    table (``--explain``) and the invariance-during-training figure
    (``--track-invariance``), each when its file exists."""
    blocks = []
    if (folder / "explanation.csv").is_file():
        expl = read_csv(folder / "explanation.csv", "explanation table", ("train",))
        blocks += [png_block(folder / "explanation.png",
                             f"{tag}: explanation equivariance, train x eval"),
                   table_block(expl.set_index("train"),
                               f"{tag}: explanation equivariance (correlation of the "
                               "transformed image's map with the transformed map; higher = "
                               "more equivariant)", index=True, heat="high",
                               note="Outlined: the best row in each column.")]
    if (folder / "invariance_by_epoch.png").is_file():
        blocks.append(png_block(folder / "invariance_by_epoch.png",
                                f"{tag}: NV of the last layer during training, per training "
                                "family (invariance_by_epoch.csv)"))
    return blocks


def _training_seconds(folder: Path) -> float:
    """The summed wall time of the model's finished trainings (their ``train.json``)."""
    total = 0.0
    for record in folder.glob("train/*/seed*/train.json"):
        try:
            total += float(json.loads(record.read_text()).get("seconds") or 0)
        except (OSError, ValueError):  # a training being written: counted when finished
            continue
    return total


@register_section("matrix", detect=_is_matrix)
def matrix_section(folder: Path) -> dict[str, Any]:
    """One block group per model of the config, in its order."""
    cfg = _config(folder)
    blocks, missing, timings = [], [], []
    for model in cfg["models"]:
        b, m, seconds = _model_blocks(cfg, model, folder / _tag(model))
        blocks += b
        missing += m
        timings += [(f"{_tag(model)}: training (sum over trainings)",
                     f"{_training_seconds(folder / _tag(model)):.1f} s"),
                    (f"{_tag(model)}: measuring (sum over cells)", f"{seconds:.1f} s")]
    return {"title": f"Invariance matrix: {cfg.get('name', folder.name)} "
                     f"({', '.join(_tag(m) for m in cfg['models'])})",
            "blocks": blocks, "missing": missing, "timings": timings,
            "rerun": command_line("viscope", "matrix", "--config", folder / "config.yaml",
                                  "--out", folder)}


#: what a comparison shows: (file stem, name, lower is better, colour-bar label)
COMPARED = (("invariance", "NV", True, "NV difference (negative: more invariant than the first)"),
            ("accuracy", "accuracy", False,
             "accuracy difference (positive: more accurate than the first)"))


def _table(folder: Path, tag: str, stem: str) -> pd.DataFrame | None:
    path = folder / tag / f"{stem}.csv"
    if not path.is_file():
        return None
    return read_csv(path, f"{stem} table", ("train",)).set_index("train")


def _left_out(a: pd.DataFrame, b: pd.DataFrame, an: str, bn: str) -> str:
    """Which rows / columns only one of the two tables has (empty: none)."""
    parts = []
    for what, xs, ys in (("training families", a.index, b.index),
                         ("evaluation columns", a.columns, b.columns)):
        only_a, only_b = [x for x in xs if x not in ys], [y for y in ys if y not in xs]
        if only_a:
            parts.append(f"{what} only in {an}: {', '.join(map(str, only_a))}")
        if only_b:
            parts.append(f"{what} only in {bn}: {', '.join(map(str, only_b))}")
    return "; ".join(parts)


def difference(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """``b - a`` on the rows and columns both have, in ``a``'s order; ``average`` (the
    job's mean over the evaluation columns) only where both average the same columns."""
    rows = [r for r in a.index if r in b.index]
    cols = [c for c in a.columns if c in b.columns]
    if "average" in cols and [c for c in a.columns if c != "average"] != [
            c for c in b.columns if c != "average"]:
        cols.remove("average")
    return b.loc[rows, cols] - a.loc[rows, cols]


def _pair_blocks(a: Path, b: Path, tag: str) -> list[dict[str, Any]]:
    from viscope.report.tables import heatmap

    blocks: list[dict[str, Any]] = []
    for stem, name, low, bar in COMPARED:
        ta, tb = _table(a, tag, stem), _table(b, tag, stem)
        if ta is None or tb is None:
            blocks.append(text_block(f"{tag}: {name} not finished in both {a.name} and "
                                     f"{b.name}; no {name} difference."))
            continue
        diff = difference(ta, tb)
        left = _left_out(ta, tb, a.name, b.name)
        note = f"Compared on the shared rows and columns; left out: {left}." if left else ""
        if diff.empty:
            blocks.append(text_block(f"{tag}: {a.name} and {b.name} share no {name} cell "
                                     f"({left})."))
            continue
        with tempfile.TemporaryDirectory() as tmp:
            png = heatmap(diff, Path(tmp) / "diff.png", lower_is_better=low,
                          title=f"{tag}: {name} {b.name} - {a.name}", colorbar=bar)
            blocks.append(png_block(png, f"{tag}: {name} difference, {b.name} minus {a.name}"))
        blocks.append(table_block(diff, f"{tag}: {name} difference ({b.name} - {a.name})",
                                  index=True, heat="low" if low else "high", note=note))
    return blocks


@register_comparison("matrix")
def matrix_comparison(folders: Sequence[Path]) -> dict[str, Any]:
    """Each matrix after the first against the first: for each model tag of the first,
    the NV and the accuracy difference (that one minus the first) over their shared rows
    and columns, as a heatmap and a table; the rows and columns left out are named."""
    first, others = folders[0], list(folders[1:])
    tags = [_tag(m) for m in _config(first)["models"]]
    blocks = [text_block(
        f"Each of {', '.join(o.name for o in others)} minus {first.name} (the first "
        "folder); NV: negative is more invariant; accuracy: positive is more accurate.")]
    for other in others:
        theirs = [_tag(m) for m in _config(other)["models"]]
        for tag in tags:
            if tag not in theirs:
                blocks.append(text_block(f"{tag}: not in {other.name} (its models: "
                                         f"{', '.join(theirs)}); left out."))
                continue
            blocks += _pair_blocks(first, other, tag)
        extra = [t for t in theirs if t not in tags]
        if extra:
            blocks.append(text_block(f"{other.name}: models not in {first.name}, left out: "
                                     f"{', '.join(extra)}."))
    names = ", ".join(o.name for o in others)
    return {"title": f"Matrices compared: {names} - {first.name}", "blocks": blocks}
