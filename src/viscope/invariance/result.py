"""The result of an invariance measurement: per-unit arrays, per-layer table, plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from viscope.errors import ViscopeError, suggest
from viscope.invariance.stats import finite_mean
from viscope.io import atomic_write, atomic_write_json, atomic_write_text


@dataclass
class InvarianceResult:
    """Per-unit values of one measure on each layer, with what is needed to read them.

    Attributes:
        measure: the measure's registered name (``nv``, ``anova``, ...).
        primary: the quantity a layer reports (``nv`` for ``nv``).
        layers: measured layer names, in network order.
        values: ``values[layer][quantity]`` is a per-unit array (e.g. ``tv``, ``sv``, ``nv``).
        layouts: ``chw``, ``hwc``, ``tokens`` or ``flat`` per layer.
        shapes: the unit shape per layer (before any spatial averaging).
        lower_is_invariant: how to read the primary quantity.
        meta: model, transformation, parameter grid, samples, options.
    """

    measure: str
    primary: str
    layers: list[str]
    values: dict[str, dict[str, np.ndarray]]
    layouts: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    lower_is_invariant: bool = True
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def quantities(self) -> list[str]:
        """The per-unit quantities this measure reports."""
        return list(self.values[self.layers[0]]) if self.layers else []

    def depth(self) -> np.ndarray:
        """Relative depth of each layer, 0 (first measured) to 1 (last)."""
        n = len(self.layers)
        return np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(n)

    def per_layer(self) -> pd.DataFrame:
        """One row per layer: ``layer``, ``depth`` (0-1), each quantity's mean over the
        layer's finite unit values (e.g. ``tv``, ``sv``, ``nv``), and ``units``."""
        rows = []
        for layer, d in zip(self.layers, self.depth(), strict=True):
            row: dict[str, Any] = {"layer": layer, "depth": float(d)}
            for q, v in self.values[layer].items():
                row[q] = finite_mean(v)
            row["units"] = int(np.size(self.values[layer][self.primary]))
            rows.append(row)
        return pd.DataFrame(rows)

    def average(self, quantity: str | None = None) -> float:
        """The mean over layers of the per-layer values (the matrix-cell summary)."""
        col = self.per_layer()[quantity or self.primary].to_numpy(dtype=float)
        return finite_mean(col)

    def per_unit(self, layer: str, quantity: str | None = None) -> np.ndarray:
        """The per-unit array of ``quantity`` (default: the primary one) at ``layer``."""
        if layer not in self.values:
            raise ViscopeError(
                f"Layer {layer!r} was not measured.{suggest(layer, self.layers)} "
                f"Measured layers: {', '.join(self.layers)}."
            )
        q = quantity or self.primary
        if q not in self.values[layer]:
            raise ViscopeError(f"Unknown quantity {q!r}; this result has {self.quantities}.")
        return self.values[layer][q]

    # -- persistence -------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``per_layer.csv``, ``per_unit.npz`` and ``result.json`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "per_layer.csv", self.per_layer().to_csv(index=False))
        arrays = {f"{layer}::{q}": v for layer in self.layers
                  for q, v in self.values[layer].items()}
        atomic_write(folder / "per_unit.npz", lambda p: _savez(p, arrays))
        atomic_write_json(folder / "result.json", {
            "measure": self.measure, "primary": self.primary, "layers": self.layers,
            "layouts": self.layouts, "shapes": self.shapes,
            "lower_is_invariant": self.lower_is_invariant, "meta": self.meta,
        })
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> InvarianceResult:
        """Read a result written by :meth:`save`."""
        folder = Path(folder)
        if not (folder / "result.json").exists():
            raise ViscopeError(
                f"No invariance result in {folder}: expected result.json and per_unit.npz "
                f"written by InvarianceResult.save()."
            )
        info = json.loads((folder / "result.json").read_text())
        values: dict[str, dict[str, np.ndarray]] = {layer: {} for layer in info["layers"]}
        with np.load(folder / "per_unit.npz") as z:
            for key in z.files:
                layer, q = key.rsplit("::", 1)
                values[layer][q] = z[key]
        return cls(values=values, **info)

    # -- figures -----------------------------------------------------------------------
    def label(self) -> str:
        """A short legend label: model · transformation."""
        return f"{self.meta.get('model', 'model')} · {self.meta.get('transform', '')}"

    def plot(self, ax=None, quantity: str | None = None, label: str | None = None,
             relative: bool = False):
        """Plot the per-layer value against the layer (or relative depth, 0-100 %)."""
        return plot_results([self], labels=[label] if label else None, quantity=quantity,
                            ax=ax, relative=relative)


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


QUANTITY_LABELS = {
    "nv": "Normalized Variance (TV/SV)", "tv": "Transformational variance TV",
    "sv": "Sample variance SV", "variant": "Fraction of units varying (ANOVA)",
    "invariance": "Goodfellow invariance L/G", "nd": "Normalized distance TD/SD",
}


def _start_at_zero(ax) -> None:
    """Start a non-negative y axis at 0: zoomed to the data (0.677-0.680, say), a 0.5 %
    difference would fill the plot. The top keeps matplotlib's margin above the data."""
    low, high = ax.dataLim.y0, ax.dataLim.y1  # every line on the axes, NaNs left out
    if ax.get_yscale() != "linear" or not np.isfinite([low, high]).all() or low < 0:
        return
    top = max(ax.get_ylim()[1], high * (1 + ax.margins()[1]))
    ax.set_ylim(0, top)


def plot_results(results: Sequence[InvarianceResult], labels: Sequence[str] | None = None,
                 quantity: str | None = None, ax=None, relative: bool | None = None):
    """Plot several results on one axis; with different layer counts (two models) the
    x axis is the relative depth in %, so that first and last layers line up.

    Returns:
        The matplotlib ``Axes``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    if relative is None:  # layer names when all share them, else relative depth
        relative = any(r.layers != results[0].layers for r in results)
    q = quantity or results[0].primary
    for i, r in enumerate(results):
        df = r.per_layer()
        x = df["depth"] * 100 if relative else np.arange(len(df))
        lab = labels[i] if labels else r.label()
        ax.plot(x, df[q], marker="o", label=lab)
    _start_at_zero(ax)
    if not relative and all(r.layers == results[0].layers for r in results):
        names = results[0].layers
        step = max(1, len(names) // 16)
        ax.set_xticks(np.arange(len(names))[::step], names[::step], rotation=45, ha="right",
                      fontsize=8)
        ax.set_xlabel("layer")
    else:
        ax.set_xlabel("relative depth of layer (%)" if relative else "layer index")
    ylabel = QUANTITY_LABELS.get(q, q)
    hint = ""  # only the primary quantity reads as (in)variance (a large SV does not)
    if q == results[0].primary:
        hint = " (lower = more invariant)" if results[0].lower_is_invariant else \
            " (higher = more invariant)"
    ax.set_ylabel(ylabel + (" [unitless]" if q in ("nv", "nd") else ""))
    ax.set_title(f"{ylabel} per layer{hint}")
    ax.grid(alpha=0.3)
    ax.legend(title="model · transformation", fontsize=8)
    return ax
