"""Figures and tables: train x eval heatmaps, Markdown/LaTeX tables."""

from viscope.report.tables import formatted, heatmap, to_latex, to_markdown, write_table_set

__all__ = ["formatted", "heatmap", "to_latex", "to_markdown", "write_table_set"]
