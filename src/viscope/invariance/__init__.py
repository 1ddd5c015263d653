"""Invariance measures (Normalized Variance family, ANOVA, Goodfellow, distance).

>>> from viscope.invariance import list_measures
>>> "nv" in list_measures()
True
"""

from viscope.lazy import attach

# imported on first use (viscope.lazy): `viscope --help` must not import torch
_EXPORTS = {
    "measure": "viscope.invariance.engine",
    "MEASURES": "viscope.invariance.measures",
    "LayerState": "viscope.invariance.measures",
    "MeasureOptions": "viscope.invariance.measures",
    "list_measures": "viscope.invariance.measures",
    "InvarianceResult": "viscope.invariance.result",
    "plot_results": "viscope.invariance.result",
    "Moments": "viscope.invariance.stats",
    "safe_divide": "viscope.invariance.stats",
}
__all__ = attach(__name__, _EXPORTS)
