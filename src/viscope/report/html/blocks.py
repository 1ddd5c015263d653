"""The pieces a section is made of (figures, tables, text), and the readers of a run
folder's files that turn a missing or corrupt file into one clear :class:`ViscopeError`.

A block is a plain dict that the page template renders by its ``type``: ``figure``
(a PNG as a ``data:`` URI, so the page needs no other file), ``table`` (cells with the
value to sort by and, for matrices, a heatmap colour and the best row per column),
``markdown`` (rendered by markdown-it, raw HTML off) and ``text``.
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from viscope.errors import ViscopeError

Block = dict[str, Any]


def _missing(path: Path, what: str) -> ViscopeError:
    return ViscopeError(f"Expected {path.name} ({what}) in {path.parent}; it is missing. "
                        "Run the job again into this folder to finish it.")


def _corrupt(path: Path, what: str, e: Exception) -> ViscopeError:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    return ViscopeError(f"Expected {path} to be a readable {what}; it is not ({reason}). "
                        "Run the job again into this folder to rewrite it.")


def read_csv(path: Path, what: str, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """``path`` as a DataFrame; a missing, empty or unparsable file, or one without the
    ``required`` columns, is a one-line :class:`ViscopeError`."""
    if not path.is_file():
        raise _missing(path, what)
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise _corrupt(path, f"CSV file ({what})", e) from None
    absent = [c for c in required if c not in df.columns]
    if absent:
        raise _corrupt(path, f"CSV file ({what})",
                       ValueError(f"no column {', '.join(absent)}"))
    return df


def read_json(path: Path, what: str) -> Any:
    """``path`` parsed as JSON (a missing or corrupt file: :class:`ViscopeError`)."""
    if not path.is_file():
        raise _missing(path, what)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _corrupt(path, f"JSON file ({what})", e) from None


def read_yaml(path: Path) -> dict[str, Any] | None:
    """``path`` parsed as a YAML mapping, or ``None`` when absent or not a mapping (used
    to recognise a folder's kind, where an unreadable config means "not this kind")."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (yaml.YAMLError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def png_block(path: Path, caption: str) -> Block:
    """A PNG file as an embedded figure (a missing one: a note saying so)."""
    if not path.is_file():
        return text_block(f"{caption}: {path.name} is missing from {path.parent}.")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return {"type": "figure", "src": f"data:image/png;base64,{data}", "caption": caption}


def figure_block(fig: Any, caption: str, dpi: int = 100) -> Block:
    """A matplotlib figure as an embedded PNG (the figure is closed)."""
    from viscope.report.figures import pyplot

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return {"type": "figure", "src": f"data:image/png;base64,{data}", "caption": caption}


def text_block(text: str) -> Block:
    """A paragraph of plain text."""
    return {"type": "text", "text": text}


def markdown_block(text: str) -> Block:
    """Markdown (e.g. a study's ``summary.md``) rendered to HTML; raw HTML in it is
    escaped, so a run folder cannot inject script into the page."""
    from markdown_it import MarkdownIt

    return {"type": "markdown", "html": MarkdownIt("commonmark", {"html": False})
            .enable("table").render(text)}


def _number(v: Any) -> float | None:
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    return None


def _fmt(v: Any, digits: int) -> str:
    x = _number(v)
    if x is None:
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
    if not math.isfinite(x):
        return "—"
    if float(x).is_integer() and isinstance(v, (int, np.integer)):
        return str(int(x))
    return f"{x:.{digits}g}" if abs(x) >= 10 ** digits or (0 < abs(x) < 1e-3) \
        else f"{x:.{digits}f}"


def best_rows(values: np.ndarray, digits: int, lower_is_better: bool) -> np.ndarray:
    """Mask of the best cell(s) per column at the precision shown: ties all marked, none
    where every row ties (the rule of :func:`viscope.report.tables.heatmap`)."""
    best = np.zeros(values.shape, dtype=bool)
    for j in range(values.shape[1]):
        col = np.round(values[:, j], digits)
        finite = np.isfinite(col)
        if not finite.any():
            continue
        target = np.nanmin(col) if lower_is_better else np.nanmax(col)
        ties = finite & (col == target)
        if ties.sum() == finite.sum() and ties.sum() > 1:
            continue
        best[:, j] = ties
    return best


def _heat(values: np.ndarray, lower_is_better: bool) -> list[list[str]]:
    """CSS background/foreground per cell, the colour map of the PNG heatmaps."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis_r" if lower_is_better else "viridis"]
    finite = values[np.isfinite(values)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    span = (hi - lo) or 1.0
    styles = []
    for row in values:
        out = []
        for v in row:
            if not np.isfinite(v):
                out.append("")
                continue
            r, g, b, _ = cmap((v - lo) / span)
            light = 0.299 * r + 0.587 * g + 0.114 * b > 0.5
            out.append(f"background:rgb({r * 255:.0f},{g * 255:.0f},{b * 255:.0f});"
                       f"color:{'#000' if light else '#fff'}")
        styles.append(out)
    return styles


def table_block(df: pd.DataFrame, caption: str, *, index: bool = False, digits: int = 3,
                heat: str | None = None, note: str = "") -> Block:
    """A DataFrame as a sortable table block.

    Args:
        df: the table; one block row per DataFrame row.
        caption: the table's caption.
        index: show the index as the first column (a matrix's training family).
        digits: decimals shown for floats.
        heat: ``"low"`` or ``"high"``: colour the numeric cells as a heatmap and mark the
            best row per column (lowest or highest); ``None``: no colouring.
        note: a line under the caption.
    """
    frame = df.reset_index() if index else df
    columns = [str(c) for c in frame.columns]
    numeric = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c])]
    styles = best = None
    if heat is not None and numeric:
        values = df[numeric].to_numpy(dtype=float)
        styles = _heat(values, heat == "low")
        best = best_rows(values, 2, heat == "low")
    rows = []
    for i, rec in enumerate(frame.itertuples(index=False)):
        cells = []
        for name, v in zip(frame.columns, rec, strict=True):
            x = _number(v)
            cell = {"text": _fmt(v, digits), "num": x is not None,
                    "sort": "" if x is None or not math.isfinite(x) else repr(x),
                    "style": "", "best": False}
            if styles is not None and name in numeric:
                j = numeric.index(name)
                cell["style"], cell["best"] = styles[i][j], bool(best[i, j])
            cells.append(cell)
        rows.append(cells)
    return {"type": "table", "caption": caption, "note": note, "columns": columns,
            "rows": rows, "heat": heat is not None}
