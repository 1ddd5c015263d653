"""``viscope report``: one self-contained HTML page of one run folder, or of several of
one kind side by side (:mod:`viscope.report.html`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from viscope.cli_common import console


def report(
    runs: Annotated[list[Path], typer.Argument(help="run folder(s) of one kind",
                                                show_default=False)],
    out: Annotated[Path | None, typer.Option(
        help="HTML file to write", show_default="RUN/report.html for one run folder")] = None,
) -> None:
    """Write one HTML page (figures, tables, config, environment, how to run it again)
    of a run folder, or of several of one kind compared; it opens without network."""
    from viscope.report.html import write_report

    path = write_report(runs, out)
    console().print(f"Report in {path} (open it in a browser; no network needed)")
