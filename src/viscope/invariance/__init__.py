"""Invariance measures (Normalized Variance family, ANOVA, Goodfellow, distance).

>>> from viscope.invariance import list_measures
>>> "nv" in list_measures()
True
"""

from viscope.invariance.engine import measure
from viscope.invariance.measures import MEASURES, LayerState, MeasureOptions, list_measures
from viscope.invariance.result import InvarianceResult, plot_results
from viscope.invariance.stats import Moments, safe_divide

__all__ = [
    "MEASURES",
    "InvarianceResult",
    "LayerState",
    "MeasureOptions",
    "Moments",
    "list_measures",
    "measure",
    "plot_results",
    "safe_divide",
]
