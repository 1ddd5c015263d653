"""Render run folders into one self-contained HTML page (Jinja2).

Everything the page shows is inside the file: figures as ``data:`` URIs, the sorting
script and the styles inline, no font or script from the network, so it opens from a
``file://`` URL on a machine without network and can be sent as one attachment.
"""

from __future__ import annotations

import datetime as _dt
import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from viscope.errors import ViscopeError
from viscope.io import atomic_write_text
from viscope.report.html.registry import SECTIONS, detect_kind

#: the name the jobs give their report inside the run folder
REPORT_NAME = "report.html"


def _environment() -> Any:
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(loader=PackageLoader("viscope.report.html", "templates"),
                       autoescape=select_autoescape(["html", "j2"]),
                       trim_blocks=True, lstrip_blocks=True)


def run_info(folder: Path) -> dict[str, Any]:
    """What every run folder records: ``config.yaml`` (as text) and ``environment.json``
    (versions, git revision, device). A section adds its own timings and rerun command."""
    cfg = folder / "config.yaml"
    env_file = folder / "environment.json"
    env: dict[str, Any] = {}
    if env_file.is_file():
        try:
            env = json.loads(env_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            env = {"environment.json": "unreadable"}
    return {"config": cfg.read_text() if cfg.is_file() else "",
            "environment": env if isinstance(env, dict) else {}, "timings": [],
            "rerun": "", "missing": []}


def command_line(*words: Any) -> str:
    """A shell command line, each word quoted where the shell needs it."""
    return " ".join(shlex.quote(str(w)) for w in words)


def section(folder: str | Path, kind: str | None = None) -> dict[str, Any]:
    """The template context of one run folder: its kind's section plus :func:`run_info`.

    Raises:
        ViscopeError: not a run folder, or a file it needs is missing or corrupt.
    """
    folder = Path(folder)
    kind = kind or detect_kind(folder)
    ctx = {**run_info(folder), "kind": kind, "folder": str(folder)}
    ctx.update(SECTIONS[kind].build(folder))
    ctx.setdefault("title", f"{kind}: {folder.name}")
    return ctx


def render(folders: Sequence[str | Path], title: str | None = None) -> str:
    """The HTML page of one or several run folders of one kind.

    Args:
        folders: run folders; several are shown each in turn, after a comparison of them
            where their kind has one.
        title: the page title (default: the kind and folder names).

    Returns:
        The page as a string.

    Raises:
        ViscopeError: no folder, a folder that is not a run folder, folders of different
            kinds, or a file a section needs that is missing or corrupt.
    """
    paths = [Path(f) for f in folders]
    if not paths:
        raise ViscopeError("Expected at least one run folder; got none. Pass e.g. "
                           "`viscope report runs/matrix`.")
    kinds = [detect_kind(p) for p in paths]
    if len(set(kinds)) > 1:
        listed = ", ".join(f"{p} ({k})" for p, k in zip(paths, kinds, strict=True))
        raise ViscopeError(f"Expected run folders of one kind to compare; got {listed}. "
                           "Make one report per kind.")
    kind = kinds[0]
    sections = [section(p, kind) for p in paths]
    comparison = None
    if len(paths) > 1 and SECTIONS[kind].compare is not None:
        comparison = SECTIONS[kind].compare(paths)
    import viscope

    names = ", ".join(p.name or str(p) for p in paths)
    return _environment().get_template("page.html.j2").render(
        title=title or f"viscope {kind} report: {names}", kind=kind, sections=sections,
        comparison=comparison, version=viscope.__version__,
        made=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        command=command_line("viscope", "report", *[str(p) for p in paths]))


def write_report(folders: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Write the page of ``folders`` to ``out`` (default: ``report.html`` in the one run
    folder), atomically. Returns the path written."""
    if out is None:
        if len(folders) != 1:
            raise ViscopeError(f"Expected --out FILE when comparing {len(folders)} run "
                               "folders; pass e.g. --out compare.html.")
        out = Path(folders[0]) / REPORT_NAME
    out = Path(out)
    if out.is_dir():
        raise ViscopeError(f"Expected --out to be an HTML file; {out} is a folder. Pass "
                           f"e.g. --out {out / REPORT_NAME}.")
    return atomic_write_text(out, render(folders))
