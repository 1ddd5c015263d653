"""The HTML report: one self-contained page per run folder (or several of one kind).

>>> from viscope.report.html import SECTIONS, detect_kind
>>> sorted(SECTIONS)
['explain', 'init-study', 'invariance', 'matrix', 'quality', 'ssl-study', 'train', 'weakseg']
"""

from viscope.report.html import sections  # noqa: F401  (registers the sections)
from viscope.report.html.page import REPORT_NAME, render, section, write_report
from viscope.report.html.registry import (
    SECTIONS,
    detect_kind,
    register_comparison,
    register_section,
)

__all__ = ["REPORT_NAME", "SECTIONS", "detect_kind", "register_comparison",
           "register_section", "render", "section", "write_report"]
