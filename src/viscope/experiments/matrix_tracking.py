"""Invariance during training across the matrix (``track_invariance``): every training's
``invariance_by_epoch.csv`` (written by :class:`viscope.train.tracking.InvarianceTracker`)
combined into the model's folder, and one figure comparing the training families.

Files, in ``OUT/<model>/``:

- ``invariance_by_epoch.csv``: the rows of every tracked training with its ``train``
  family and ``seed`` in front (epoch, family, layer, depth, tv, sv, nv, seconds);
- ``invariance_by_epoch.png``: a panel per tracked family, NV of the last measured layer
  against epoch, one line per training family (mean over seeds).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from viscope.experiments.config import MatrixConfig, ModelConfig
from viscope.experiments.matrix_unit import TRACKING, _plain, _read_json, _track_inputs
from viscope.io import atomic_write_text

#: the combined table and figure in the model's folder
TABLE = "invariance_by_epoch.csv"
FIGURE = "invariance_by_epoch.png"


def combined_tracking(cfg: MatrixConfig, folder: Path) -> pd.DataFrame:
    """The tracking rows of every training of ``folder`` made with ``cfg``'s tracking
    settings (a training tracked with other settings, or not at all, is left out)."""
    want = _plain(_track_inputs(cfg))
    frames = []
    for seed in cfg.seeds:
        for fam in cfg.train_families:
            tdir = folder / "train" / fam / f"seed{seed}"
            if want is None or _read_json(tdir / TRACKING) != want:
                continue
            try:
                rows = pd.read_csv(tdir / TABLE)
            except (OSError, ValueError):  # not measured yet
                continue
            rows.insert(0, "seed", seed)
            rows.insert(0, "train", fam)
            frames.append(rows)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def track_tables(cfg: MatrixConfig, mc: ModelConfig, folder: Path) -> Path | None:
    """Write the combined table and figure of one model (nothing when tracking is off or
    no training is tracked yet).

    Returns:
        The combined CSV's path, or ``None``.
    """
    table = combined_tracking(cfg, folder)
    if table.empty:
        return None
    atomic_write_text(folder / TABLE, table.to_csv(index=False))
    plot_last_layer(table, folder / FIGURE, f"{mc.label or mc.name} on {cfg.dataset}",
                    cfg.train_families)
    return folder / TABLE


def plot_last_layer(table: pd.DataFrame, path: Path, what: str,
                    order: list[str] | None = None) -> Path:
    """NV of the last measured layer against epoch: a panel per tracked family, one line
    per training family (mean over seeds)."""
    from matplotlib.ticker import MaxNLocator

    from viscope.report.figures import pyplot, save_figure

    plt = pyplot()
    last = table[table["depth"] == table.groupby("family")["depth"].transform("max")]
    curves = last.groupby(["family", "train", "epoch"])["nv"].mean()  # sorted: fast .loc
    families = list(dict.fromkeys(last["family"]))
    trains = [t for t in (order or []) if t in set(last["train"])] or list(
        dict.fromkeys(last["train"]))
    cols = min(len(families), 3)
    rows = -(-len(families) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols + 1.6, 3.2 * rows + 0.6),
                             squeeze=False)
    cmap = plt.get_cmap("tab20" if len(trains) > 10 else "tab10")
    for ax, family in zip(axes.flat, families, strict=False):
        for k, train in enumerate(trains):
            if (family, train) not in curves.index.droplevel("epoch"):
                continue
            c = curves.loc[(family, train)].sort_index()
            # the diagonal (trained with the family measured) drawn heavier
            ax.plot(c.index, c.to_numpy(), marker="o", ms=3, color=cmap(k % cmap.N),
                    lw=2.6 if train == family else 1.2, label=train)
        ax.set_title(f"eval: {family}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (0: before training)")
        ax.set_ylabel("NV, last layer")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(families):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, title="trained with", loc="center right", fontsize=8)
    fig.suptitle(f"NV of the last layer during training · {what} (lower = more invariant)")
    fig.subplots_adjust(right=1 - 1.5 / fig.get_figwidth(), top=1 - 0.75 / fig.get_figheight(),
                        hspace=0.45, wspace=0.3)
    save_figure(fig, path)
    return path
