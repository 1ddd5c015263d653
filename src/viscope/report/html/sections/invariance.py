"""Section of an invariance run folder (``viscope invariance``): the per-layer curve, one
line per family, and the per-layer table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from viscope.report.html.blocks import (
    figure_block,
    png_block,
    read_csv,
    read_json,
    read_yaml,
    table_block,
)
from viscope.report.html.page import command_line
from viscope.report.html.registry import register_comparison, register_section


def _config(folder: Path) -> dict[str, Any]:
    return read_yaml(folder / "config.yaml") or {}


def _is_invariance(folder: Path) -> bool:
    return _config(folder).get("command") == "invariance"


def _families(cfg: dict[str, Any]) -> list[str]:
    t = cfg.get("transform")
    return list(t) if isinstance(t, list) else [str(t)]


def per_layer(folder: Path) -> tuple[pd.DataFrame, str, list[str]]:
    """The per-layer values of a folder: ``(table, primary measure, families)``; a
    folder of several families gives one column per family (``<primary>_by_transform.csv``),
    one family its ``per_layer.csv``."""
    cfg = _config(folder)
    families = _families(cfg)
    if cfg.get("per_family_folders"):
        found = sorted(folder.glob("*_by_transform.csv"))
        primary = found[0].name[: -len("_by_transform.csv")] if found else str(
            cfg.get("measure", "nv"))
        df = read_csv(folder / f"{primary}_by_transform.csv", "per-layer values per family",
                      required=("layer",))
        return df, primary, families
    primary = read_json(folder / "result.json", "the measurement").get("primary", "nv")
    df = read_csv(folder / "per_layer.csv", "per-layer values", required=("layer", primary))
    return df, primary, families


def _rerun(folder: Path, cfg: dict[str, Any]) -> str:
    words = ["viscope", "invariance", "--model", cfg.get("model"), "--dataset",
             cfg.get("dataset"), "--image-size", cfg.get("image_size"), "--transform",
             ",".join(_families(cfg)), "--samples", cfg.get("samples"), "--params",
             cfg.get("params"), "--measure", cfg.get("measure"), "--seed", cfg.get("seed")]
    if isinstance(cfg.get("layers"), list):
        words += ["--layers", ",".join(cfg["layers"])]
    for flag in ("spatial", "variance"):
        if cfg.get(flag):
            words.append(f"--{flag}")
    return command_line(*words, "--out", folder)


@register_section("invariance", detect=_is_invariance)
def invariance_section(folder: Path) -> dict[str, Any]:
    """The plot the job drew, the per-layer table and each family's average."""
    cfg = _config(folder)
    df, primary, families = per_layer(folder)
    measure = cfg.get("measure", primary)
    blocks = [png_block(folder / f"{measure}.png", f"{primary} per layer "
                        f"({', '.join(families)}); lower = more invariant")]
    missing = []
    if cfg.get("per_family_folders"):
        done = [f for f in families if f in df.columns]
        missing = [f"Not measured yet: {', '.join(f for f in families if f not in done)}. "
                   "Run the command below again to finish."] if len(done) < len(families) \
            else []
        avg = pd.DataFrame({"transformation": done,
                            f"average {primary}": [df[f].mean() for f in done]})
        blocks.append(table_block(avg, f"Average {primary} over layers per family"))
        blocks.append(table_block(df, f"{primary} per layer (one column per family)"))
    else:
        blocks.append(table_block(df, f"{primary} per layer; average over layers "
                                  f"{df[primary].mean():.4f}"))
    return {"title": f"Invariance: {cfg.get('model', '?')} under {', '.join(families)}",
            "blocks": blocks, "missing": missing, "rerun": _rerun(folder, cfg)}


@register_comparison("invariance")
def invariance_comparison(folders: Sequence[Path]) -> dict[str, Any]:
    """Every run's per-layer curves on one plot (x: relative depth), one line per run and
    family, and their averages in one table."""
    from viscope.report.figures import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
    rows = []
    primaries = set()
    for f in folders:
        df, primary, families = per_layer(f)
        primaries.add(primary)
        x = df["depth"] if "depth" in df else range(len(df))
        cols = [c for c in families if c in df.columns] or [primary]
        for col in cols:
            label = f"{f.name} · {col if col != primary else families[0]}"
            ax.plot(x, df[col], marker="o", label=label)
            rows.append({"run": str(f), "transformation": label.split(" · ")[1],
                         "layers": len(df), f"average {primary}": df[col].mean()})
    ax.set(xlabel="relative depth", ylabel=" / ".join(sorted(primaries)),
           title="per-layer invariance (lower = more invariant)")
    ax.legend(fontsize=8)
    return {"title": f"{len(folders)} invariance runs compared",
            "blocks": [figure_block(fig, "Per-layer values of every run"),
                       table_block(pd.DataFrame(rows), "Averages over layers")]}
