"""The figures of ``viscope init-study``: validation accuracy per epoch (mean ± std band per
method, one panel per condition) and the first-layer filters right after the init next
to the learned ones."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from viscope.report.figures import pyplot, save_figure

#: filters shown per method (the first ones: data-driven filters fill the layer from 0)
SHOWN = 16


def curves(history: pd.DataFrame, target: float, path: Path, title: str) -> None:
    """One panel per condition: mean validation accuracy per epoch of each method over its
    seeds, a ± std band, and the target as a dashed line."""
    plt = pyplot()
    conds = list(dict.fromkeys(history["condition"]))
    methods = list(dict.fromkeys(history["method"]))
    cols = min(3, len(conds))
    rows = -(-len(conds) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows + 0.5),
                             squeeze=False, sharey=True)
    for ax, cond in zip(axes.ravel(), conds, strict=False):
        for j, m in enumerate(methods):
            h = history[(history["condition"] == cond) & (history["method"] == m)]
            if h.empty:
                continue
            stats = h.groupby("epoch")["val_acc"].agg(["mean", "std", "count"])
            x = stats.index.to_numpy() + 1
            ax.plot(x, stats["mean"], color=f"C{j}", label=f"{m} (n={stats['count'].max()})")
            ax.fill_between(x, stats["mean"] - stats["std"].fillna(0),
                            stats["mean"] + stats["std"].fillna(0), color=f"C{j}", alpha=0.2)
        ax.axhline(target, color="k", ls="--", lw=0.8, label=f"target {target:g}")
        ax.set_title(cond, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(conds):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7, title="init", title_fontsize=7)
    fig.suptitle(title + " — mean ± std over seeds", fontsize=10)
    save_figure(fig, path)


def tiles(filters: np.ndarray, n: int = SHOWN) -> np.ndarray:
    """The first ``n`` filters (out, C, k, k) as images (n, k, k, 3) in [0, 1], each
    min-max normalised on its own (a constant filter is grey); one channel is grey."""
    w = filters[:n].astype(np.float64)
    lo = w.min(axis=(1, 2, 3), keepdims=True)
    span = w.max(axis=(1, 2, 3), keepdims=True) - lo
    w = np.where(span > 0, (w - lo) / np.where(span > 0, span, 1), 0.5)
    w = w.transpose(0, 2, 3, 1)
    if w.shape[-1] == 1:
        w = np.repeat(w, 3, axis=-1)
    return w[..., :3]


def filters(files: Mapping[str, Path], path: Path, title: str) -> None:
    """Two rows per method, initial then learned filters (from ``filters.npz`` files with
    arrays ``initial`` and ``learned``)."""
    plt = pyplot()
    loaded = {m: np.load(f) for m, f in files.items() if Path(f).exists()}
    if not loaded:
        return
    n = min(SHOWN, min(len(d["initial"]) for d in loaded.values()))
    fig, axes = plt.subplots(2 * len(loaded), n, figsize=(0.7 * n + 1.2, 1.5 * len(loaded)),
                             squeeze=False, gridspec_kw={"wspace": 0.05, "hspace": 0.1})
    for i, (m, d) in enumerate(loaded.items()):
        for r, which in enumerate(("initial", "learned")):
            row = axes[2 * i + r]
            for j, im in enumerate(tiles(d[which], n)):
                row[j].imshow(im, interpolation="nearest")
                row[j].set_xticks([])
                row[j].set_yticks([])
            row[0].set_ylabel(f"{m}\n{which}", fontsize=7, rotation=0, ha="right",
                              va="center")
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
