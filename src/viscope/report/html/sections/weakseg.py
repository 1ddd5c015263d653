"""Section of a weak-label segmentation run folder (``viscope weakseg``): the results
(Dice / IoU per method), the classifier's and the threshold sweep's tables, percent
density, the galleries and figures, and ``summary.md``'s findings; a run whose stages are
not all finished shows the finished ones and says what is missing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from viscope.report.html.blocks import png_block, read_yaml, text_block
from viscope.report.html.page import command_line
from viscope.report.html.registry import register_section
from viscope.report.html.sections.staged import (
    csv_table,
    findings,
    finished,
    missing_line,
    missing_stages,
)

#: the sections of a weakseg config (viscope.weakseg.config.WeaksegConfig)
KEYS = ("classifier", "cam", "pseudo", "unet")


def _config(folder: Path) -> dict[str, Any]:
    return read_yaml(folder / "config.yaml") or {}


def _is_weakseg(folder: Path) -> bool:
    cfg = _config(folder)
    return all(isinstance(cfg.get(k), dict) for k in KEYS)


def _stages(folder: Path, cfg: dict[str, Any]) -> list[str]:
    """The job's stages in order; ``unet-supervised`` only where it is configured and the
    run did not already leave it out (no real masks for training images)."""
    names = ["classifier", "cam", "pseudo", "unet-pseudo"]
    if cfg["unet"].get("supervised", True) and (
            (folder / "unet-supervised").is_dir() or not finished(folder / "evaluate")):
        names.append("unet-supervised")
    return [*names, "evaluate"]


def _threshold(folder: Path) -> float | None:
    try:
        result = json.loads((folder / "pseudo" / "stage.json").read_text()).get("result", {})
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    t = result.get("threshold") if isinstance(result, dict) else None
    return float(t) if isinstance(t, (int, float)) else None


@register_section("weakseg", detect=_is_weakseg)
def weakseg_section(folder: Path) -> dict[str, Any]:
    """``results.csv``, ``classifier/classifier.csv``, ``pseudo/sweep.csv``,
    ``density.csv``, the figures of ``pseudo/`` and ``evaluate/``, ``summary.md``."""
    cfg = _config(folder)
    names = _stages(folder, cfg)
    rerun = command_line("viscope", "weakseg", "--config", folder / "config.yaml",
                         "--out", folder)
    missing = missing_stages(folder, names)
    blocks: list[dict[str, Any]] = []
    if finished(folder / "evaluate"):
        blocks.append(csv_table(folder / "results.csv", "results table",
                                "Dice and IoU on the test images with real masks (mean, std "
                                "over images; per class)", ("method",)))
    if finished(folder / "classifier"):
        blocks.append(csv_table(folder / "classifier" / "classifier.csv", "classifier table",
                                f"Classifier ({cfg['classifier'].get('model')}): share of "
                                "each true class of the test split predicted as each trained "
                                "class", ("class",)))
    if finished(folder / "pseudo"):
        chosen = _threshold(folder)
        if (folder / "pseudo" / "sweep.csv").is_file():
            blocks += [csv_table(folder / "pseudo" / "sweep.csv", "threshold sweep",
                                 "Threshold sweep on the validation images with real masks",
                                 ("threshold",),
                                 note="" if chosen is None else f"Chosen: {chosen:g}."),
                       png_block(folder / "pseudo" / "sweep.png", "Threshold sweep")]
        elif chosen is not None:
            blocks.append(text_block(f"Threshold: {chosen:g} ({cfg['pseudo'].get('threshold')})."))
        blocks.append(png_block(folder / "pseudo" / "gallery.png",
                                "Validation images: CAM and pseudo-masks"))
    if finished(folder / "evaluate"):
        blocks.append(png_block(folder / "evaluate" / "gallery.png",
                                "Test images: CAM and the pseudo-mask UNet's mask"))
        if (folder / "density.csv").is_file():
            blocks += [png_block(folder / "evaluate" / "density.png",
                                 "Percent density of the pseudo-mask UNet per class"),
                       csv_table(folder / "density.csv", "density table",
                                 "Percent density per test image", ("class",))]
        summary = findings(folder / "summary.md", table_after="Dice and IoU")
        if summary is not None:
            blocks.append(summary)
    if not blocks:
        blocks.append(text_block("No stage finished yet."))
    return {"title": f"Weak labels → segmentation: {cfg.get('name', folder.name)}",
            "blocks": blocks,
            "missing": [missing_line("weakseg", missing, len(names), rerun)] if missing else [],
            "rerun": rerun}
