"""Section of an image-quality run folder (``viscope quality``): the comparison and per-run
tables, energy and cluster tables, the job's figures and the findings of ``summary.md``;
a run whose stages are not all finished shows the finished trainings and says what is
missing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from viscope.report.html.blocks import png_block, read_yaml, table_block, text_block
from viscope.report.html.page import command_line
from viscope.report.html.registry import register_section
from viscope.report.html.sections.staged import (
    csv_table,
    findings,
    finished,
    missing_line,
    missing_stages,
)


def _config(folder: Path) -> dict[str, Any]:
    return read_yaml(folder / "config.yaml") or {}


def _is_quality(folder: Path) -> bool:
    """A quality config (QualityConfig) has ``validation`` and a ``train`` section that
    weights the reconstruction loss (FGR-Net's)."""
    cfg = _config(folder)
    train = cfg.get("train")
    return "validation" in cfg and isinstance(train, dict) and "recon_weight" in train


def _variants(cfg: dict[str, Any]) -> list[str]:
    """The variants in the job's order (QualityConfig.variants)."""
    return (["plain"] if cfg["train"].get("compare", True) else []) + ["fgrnet"]


def _finished_runs(folder: Path, stages: list[tuple[str, int]]) -> pd.DataFrame:
    """Test accuracy and macro-F1 of the finished trainings (their ``metrics.json``)."""
    rows = []
    for variant, seed in stages:
        stage = folder / f"train-{variant}-s{seed}"
        if not finished(stage):
            continue
        try:
            m = json.loads((stage / "metrics.json").read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        rows.append({"variant": variant, "seed": seed, "acc": m.get("acc"),
                     "macro_f1": m.get("macro_f1"), "best_epoch": m.get("best_epoch"),
                     "train_seconds": m.get("train_seconds")})
    return pd.DataFrame(rows)


def _report_blocks(folder: Path, variants: list[str]) -> list[dict[str, Any]]:
    rep = folder / "report"
    blocks = [csv_table(rep / "comparison.csv", "comparison table",
                        "Per variant: mean and std over seeds (test split)", ("variant",)),
              png_block(rep / "comparison.png", "Plain classifier vs FGR-Net"),
              csv_table(rep / "runs.csv", "per-run table", "Every run", ("variant", "seed")),
              png_block(rep / "confusion.png", "Test-split confusion matrices")]
    if "fgrnet" in variants:
        blocks.append(png_block(rep / "reconstructions.png",
                                "FGR-Net: test images and their reconstructions"))
    blocks.append(csv_table(rep / "energy.csv", "energy table",
                            "Per method and grade (first seed): energy on the masks, their "
                            "area, deletion AUC", ("variant", "method", "grade")))
    for v in variants:
        blocks.append(png_block(rep / f"class_maps_{v}.png", f"{v}: maps per true grade"))
    blocks.append(csv_table(rep / "clusters.csv", "clusters table",
                            "Clusters of the test images' maps and their grades",
                            ("variant", "method", "cluster")))
    for v in variants:
        blocks.append(png_block(rep / f"clusters_{v}.png", f"{v}: clusters of the maps"))
    return blocks


@register_section("quality", detect=_is_quality)
def quality_section(folder: Path) -> dict[str, Any]:
    """``report/*.csv`` and ``report/*.png``, ``summary.md``; partial: the finished
    trainings' ``metrics.json`` and which stages are missing."""
    cfg = _config(folder)
    variants = _variants(cfg)
    seeds = list(cfg["train"].get("seeds") or [0])
    pairs = [(v, s) for v in variants for s in seeds]
    names = [f"{kind}-{v}-s{s}" for v, s in pairs for kind in ("train", "maps")] + ["report"]
    rerun = command_line("viscope", "quality", "--config", folder / "config.yaml",
                         "--out", folder)
    missing = missing_stages(folder, names)
    runs = _finished_runs(folder, pairs)
    seconds = float(runs["train_seconds"].fillna(0).sum()) if len(runs) else 0.0
    if not missing:
        blocks = _report_blocks(folder, variants)
    else:
        blocks = [table_block(runs, "Finished trainings (test split)")] if len(runs) else [
            text_block("No training finished yet.")]
    summary = findings(folder / "summary.md") if not missing else None
    if summary is not None:
        blocks.append(summary)
    return {"title": f"Image quality: {cfg.get('name', folder.name)} "
                     f"({', '.join(variants)}; seeds {seeds})",
            "blocks": blocks,
            "missing": [missing_line("quality", missing, len(names), rerun)] if missing else [],
            "timings": [(f"training ({len(runs)} runs, sum)", f"{seconds:.1f} s")],
            "rerun": rerun}
