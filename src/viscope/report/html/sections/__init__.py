"""The report's sections, one module per kind of run folder; importing this package
registers them (a new job adds a module here and one import line)."""

from viscope.report.html.sections import explain, invariance, matrix, ssl_study, train

__all__ = ["explain", "invariance", "matrix", "ssl_study", "train"]
