"""Section of an SSL study run folder (``viscope ssl-study``): table, figure, findings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from viscope.report.html.blocks import (
    markdown_block,
    png_block,
    read_csv,
    read_yaml,
    table_block,
)
from viscope.report.html.page import command_line
from viscope.report.html.registry import register_section


def _is_ssl_study(folder: Path) -> bool:
    cfg = read_yaml(folder / "config.yaml") or {}
    return "backbones" in cfg and "variants" in cfg


@register_section("ssl-study", detect=_is_ssl_study)
def ssl_study_section(folder: Path) -> dict[str, Any]:
    """``report/ssl_study.png``, ``report/table.csv``, ``report/runs.csv``, ``summary.md``."""
    cfg = read_yaml(folder / "config.yaml") or {}
    table = read_csv(folder / "report" / "table.csv", "per-variant table",
                     ("backbone", "variant"))
    runs = read_csv(folder / "report" / "runs.csv", "per-run table", ("backbone", "variant"))
    blocks = [png_block(folder / "report" / "ssl_study.png", "Study overview"),
              table_block(table, "Mean, std and paired t-test p against supervised"),
              table_block(runs, "Every run")]
    if (folder / "summary.md").is_file():
        blocks.append(markdown_block((folder / "summary.md").read_text()))
    return {"title": f"SSL study: {cfg.get('name', folder.name)}", "blocks": blocks,
            "rerun": command_line("viscope", "ssl-study", "--config",
                                  folder / "config.yaml", "--out", folder)}
