"""Matplotlib without a display, and figures written atomically: what every job's
figures share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from viscope.io import atomic_write


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 120) -> None:
    """Write ``fig`` as a PNG atomically (temp file + rename) and close it."""
    atomic_write(Path(path), lambda p: fig.savefig(p, dpi=dpi, bbox_inches="tight",
                                                   format="png"))
    pyplot().close(fig)


__all__ = ["pyplot", "save_figure"]
