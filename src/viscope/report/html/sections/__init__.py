"""The report's sections, one module per kind of run folder; importing this package
registers them (a new job adds a module here and one import line)."""

from viscope.report.html.sections import (
    explain,
    init_study,
    invariance,
    matrix,
    quality,
    ssl_study,
    train,
    weakseg,
)

__all__ = ["explain", "init_study", "invariance", "matrix", "quality", "ssl_study", "train",
           "weakseg"]
