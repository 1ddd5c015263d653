"""What the sections of staged jobs share (``viscope quality``, ``viscope weakseg``,
``viscope init-study``): which of a run's stages are finished, and a job's findings text.

A stage is finished when its folder holds ``stage.json`` (:mod:`viscope.stages` writes it
last); this module only reads that marker, it never runs a stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from viscope.report.html.blocks import Block, markdown_block, read_csv, table_block
from viscope.stages import STAGE_FILE


def finished(folder: Path) -> bool:
    """Whether the stage in ``folder`` is finished (its ``stage.json`` is written)."""
    return (folder / STAGE_FILE).is_file()


def missing_stages(out: Path, names: Sequence[str]) -> list[str]:
    """Those of the stage sub-folders ``names`` of ``out`` that are not finished."""
    return [n for n in names if not finished(out / n)]


def missing_line(job: str, missing: Sequence[str], total: int, rerun: str) -> str:
    """One line saying which stages are not finished and how to finish them."""
    shown = ", ".join(missing[:12]) + (f" and {len(missing) - 12} more"
                                       if len(missing) > 12 else "")
    return (f"{job}: {len(missing)} of {total} stages not finished ({shown}); what follows "
            f"shows only the finished ones. Run `{rerun}` to finish: finished stages are "
            "kept.")


def findings(path: Path, table_after: str | None = None) -> Block | None:
    """The job's ``summary.md`` without its tables (the page shows those as sortable
    tables from the CSVs), or ``None`` when there is none.

    Args:
        path: the ``summary.md``.
        table_after: a line starting with this text introduces a table written as plain
            text (pandas ``to_string``); the paragraph after it is dropped too.
    """
    if not path.is_file():
        return None
    kept, skipping, after = [], False, False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("|"):  # a Markdown table: already dropped
            after = False
            continue
        if after and line.strip():
            skipping, after = True, False
        if skipping:
            skipping = bool(line.strip())
            continue
        kept.append(line)
        if table_after is not None and line.startswith(table_after):
            after = True
    return markdown_block("\n".join(kept))


def csv_table(path: Path, what: str, caption: str, required: tuple[str, ...] = (),
              note: str = "") -> Block:
    """The CSV at ``path`` as a table block (a missing or corrupt file: ViscopeError)."""
    return table_block(read_csv(path, what, required), caption, note=note)
