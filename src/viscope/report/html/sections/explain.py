"""Section of an explanation run folder (``viscope explain``): overlays and metrics."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from viscope.report.html.blocks import png_block, read_csv, read_yaml, table_block
from viscope.report.html.page import command_line
from viscope.report.html.registry import register_comparison, register_section


def _is_explain(folder: Path) -> bool:
    return (read_yaml(folder / "config.yaml") or {}).get("command") == "explain"


@register_section("explain", detect=_is_explain)
def explain_section(folder: Path) -> dict[str, Any]:
    """The overlay grid, the mean metrics per method and the per-image metrics."""
    cfg = read_yaml(folder / "config.yaml") or {}
    summary = read_csv(folder / "metrics_summary.csv", "mean metrics per method",
                       required=("method",))
    per_image = read_csv(folder / "metrics.csv", "metrics per image and method",
                         required=("method",))
    methods = cfg.get("methods") or []
    words = ["viscope", "explain", "--model", cfg.get("model"), "--dataset",
             cfg.get("dataset"), "--method", ",".join(methods), "--samples",
             cfg.get("samples"), "--image-size", cfg.get("image_size"), "--seed",
             cfg.get("seed"), "--out", folder]
    if cfg.get("target") is not None:
        words[2:2] = ["--target", cfg["target"]]
    if cfg.get("layer") not in (None, "auto"):
        words[2:2] = ["--layer", cfg["layer"]]
    return {"title": f"Explanations: {cfg.get('model', '?')} on {cfg.get('dataset', '?')}",
            "blocks": [png_block(folder / "overlays.png", "Maps over the first images"),
                       table_block(summary, "Mean metrics per method"),
                       table_block(per_image, "Metrics per image and method")],
            "rerun": command_line(*words)}


@register_comparison("explain")
def explain_comparison(folders: Sequence[Path]) -> dict[str, Any]:
    """The runs' mean metrics in one table, one row per run and method."""
    frames = [read_csv(f / "metrics_summary.csv", "mean metrics per method",
                       required=("method",)).assign(run=str(f)) for f in folders]
    table = pd.concat(frames, ignore_index=True)
    table = table[["run", *[c for c in table.columns if c != "run"]]]
    return {"title": f"{len(folders)} explanation runs compared",
            "blocks": [table_block(table, "Mean metrics per run and method")]}
