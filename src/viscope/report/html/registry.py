"""The section registry: one HTML section per kind of run folder.

A kind is found by what the folder records, never by its name: a training writes
``train.json``; ``viscope invariance`` and ``viscope explain`` write ``command:`` into
``config.yaml``; a study writes its resolved config, whose keys name the study (a
matrix has ``train_families`` and ``eval_families``, an SSL study ``backbones`` and
``variants``). Each section registers the test that recognises its folders with
:func:`register_section`, so a new job plugs in one module, not a branch of a switch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from viscope.errors import ViscopeError

#: a section: run folder -> template context (``title``, ``blocks``, ``missing`` ...)
SectionFn = Callable[[Path], dict[str, Any]]
#: a comparison: several run folders of one kind -> template context
CompareFn = Callable[[Sequence[Path]], dict[str, Any]]


@dataclass
class Section:
    """One kind of run folder: how to recognise it, and how to show one or several."""

    kind: str
    detect: Callable[[Path], bool]
    build: SectionFn
    compare: CompareFn | None = None


SECTIONS: dict[str, Section] = {}


def register_section(kind: str, detect: Callable[[Path], bool]
                     ) -> Callable[[SectionFn], SectionFn]:
    """Register ``fn(folder) -> context`` as the section of run folders of ``kind``.

    Args:
        kind: the run kind (``"train"``, ``"matrix"``, ...), as the report names it.
        detect: ``detect(folder)`` is true for a folder of this kind; it reads what the
            folder records (a file, a ``command:`` or the keys of ``config.yaml``).

    Returns:
        A decorator that registers the function and returns it unchanged.

    Example:
        >>> @register_section("doctest-kind", detect=lambda f: (f / "doctest.json").is_file())
        ... def _doctest_section(folder):
        ...     return {"title": "doctest", "blocks": []}
        >>> SECTIONS.pop("doctest-kind").kind
        'doctest-kind'
    """
    def decorate(fn: SectionFn) -> SectionFn:
        SECTIONS[kind] = Section(kind, detect, fn, SECTIONS.get(kind, Section(
            kind, detect, fn)).compare)
        return fn
    return decorate


def register_comparison(kind: str) -> Callable[[CompareFn], CompareFn]:
    """Register ``fn(folders) -> context``: several folders of ``kind`` side by side.

    Raises:
        ViscopeError: ``kind`` has no section yet (register the section first).
    """
    def decorate(fn: CompareFn) -> CompareFn:
        if kind not in SECTIONS:
            raise ViscopeError(f"Expected a registered section for {kind!r} before its "
                               "comparison; register the section first.")
        SECTIONS[kind].compare = fn
        return fn
    return decorate


def detect_kind(folder: str | Path) -> str:
    """The kind of run folder ``folder`` is, from what it records.

    Raises:
        ViscopeError: not a folder, or no registered kind recognises it.
    """
    from viscope.report.html import sections  # noqa: F401  (registers the sections)

    folder = Path(folder)
    if not folder.is_dir():
        raise ViscopeError(f"Expected a run folder; got {str(folder)!r}, which is not a "
                           "folder. Pass the --out folder of a viscope job.")
    for section in SECTIONS.values():
        if section.detect(folder):
            return section.kind
    raise ViscopeError(
        f"Expected a viscope run folder ({', '.join(SECTIONS)}); {folder} holds none of "
        "their records (train.json, or a config.yaml written by a job). Pass the --out "
        "folder of a viscope job.")
