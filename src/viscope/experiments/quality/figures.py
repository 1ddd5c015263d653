"""Figures of ``viscope quality``: confusion matrices, reconstructions next to their
inputs, mean maps per class, map clusters, and the plain-vs-FGR-Net comparison."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from torch import Tensor

from viscope.evaluate.clusters import MapClusters
from viscope.report.figures import pyplot, save_figure


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _rgb(image: Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).clamp(0, 1).numpy()


def plot_confusion(matrices: Mapping[str, np.ndarray], classes: Sequence[str], path: Path,
                   title: str) -> None:
    """One confusion matrix per variant (rows: true grade, columns: predicted), counts in
    the cells and row-normalised colour."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(matrices), figsize=(3.6 * len(matrices), 3.4),
                             squeeze=False)
    for ax, (name, cm) in zip(axes[0], matrices.items(), strict=True):
        cm = np.asarray(cm)
        rate = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        im = ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, f"{cm[i, j]}", ha="center", va="center", fontsize=9,
                        color="white" if rate[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(classes)), classes, fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set(xlabel="predicted grade", ylabel="true grade", title=name)
    fig.colorbar(im, ax=list(axes[0]), fraction=0.04, label="share of the true grade")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def plot_reconstructions(images: Tensor, recon: Tensor, labels: Tensor,
                         classes: Sequence[str], path: Path, title: str) -> None:
    """Inputs (top row) above FGR-Net's reconstructions (bottom row), with the grade and
    each image's reconstruction MSE."""
    plt = pyplot()
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.6), squeeze=False)
    mse = ((recon - images) ** 2).flatten(1).mean(1)
    for i in range(n):
        axes[0, i].imshow(_rgb(images[i]))
        axes[1, i].imshow(_rgb(recon[i]))
        axes[0, i].set_title(classes[int(labels[i])], fontsize=8)
        axes[1, i].set_title(f"MSE {float(mse[i]):.4f}", fontsize=7)
        _bare(axes[0, i])
        _bare(axes[1, i])
    axes[0, 0].set_ylabel("input", fontsize=8)
    axes[1, 0].set_ylabel("reconstruction", fontsize=8)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def plot_class_maps(examples: Tensor, example_maps: Mapping[str, Tensor],
                    means: Mapping[str, Tensor], classes: Sequence[str], counts: Sequence[int],
                    path: Path, title: str, structures: Tensor | None = None,
                    degradation: Tensor | None = None) -> None:
    """Per grade, two columns: one test image and its map, and the mean map of all the
    grade's test images (each map normalised to [0, 1] before averaging). Row 0 shows the
    example images with their retinal structures (cyan) and degradation (yellow) outlined
    where the data have masks; one row per method below."""
    plt = pyplot()
    rows, k = 1 + len(means), len(classes)
    fig, axes = plt.subplots(rows, 2 * k, figsize=(1.9 * 2 * k + 0.8, 1.9 * rows + 0.6),
                             squeeze=False)
    for c in range(k):
        ax = axes[0, 2 * c]
        ax.imshow(_rgb(examples[c]))
        for masks, colour in ((structures, "cyan"), (degradation, "yellow")):
            if masks is not None and float(masks[c].max()) > 0:
                ax.contour(masks[c, 0].numpy(), levels=[0.5], colors=colour, linewidths=0.6)
        ax.set_title(f"{classes[c]}: example", fontsize=8)
        axes[0, 2 * c + 1].axis("off")
        axes[0, 2 * c + 1].text(0.5, 0.5, f"{classes[c]}\n{counts[c]} test images",
                                ha="center", va="center", fontsize=9)
        _bare(ax)
    im = None
    for r, method in enumerate(means, start=1):
        for c in range(k):
            left, right = axes[r, 2 * c], axes[r, 2 * c + 1]
            left.imshow(_rgb(examples[c]))
            left.imshow(example_maps[method][c].numpy(), cmap="inferno", vmin=0, vmax=1,
                        alpha=0.6)
            im = right.imshow(means[method][c].numpy(), cmap="inferno", vmin=0, vmax=1)
            _bare(left)
            _bare(right)
            if r == 1:
                left.set_title("its map", fontsize=8)
                right.set_title("grade mean", fontsize=8)
        axes[r, 0].set_ylabel(method, fontsize=8)
    if im is not None:
        fig.colorbar(im, ax=axes[1:, :].ravel().tolist(), fraction=0.025,
                     label="map value (0–1)")
    outline = " Outlines: cyan retinal structures, yellow degradation." \
        if structures is not None else ""
    fig.suptitle(title + "." + outline, fontsize=9)
    save_figure(fig, path)


def plot_clusters(found: Mapping[str, MapClusters], composition: Mapping[str, pd.DataFrame],
                  path: Path, title: str) -> None:
    """One row per (method, clustering): each cluster's mean map, titled with its share of
    the images and the grades it holds."""
    plt = pyplot()
    rows = len(found)
    k = max(c.k for c in found.values())
    fig, axes = plt.subplots(rows, k, figsize=(2.0 * k + 0.8, 2.1 * rows + 0.4), squeeze=False)
    im = None
    for r, (name, c) in enumerate(found.items()):
        comp = composition[name]
        for j in range(k):
            ax = axes[r, j]
            _bare(ax)
            if j >= c.k:
                ax.axis("off")
                continue
            m = c.means[j]
            top = float(m.max())
            im = ax.imshow((m / top if top > 0 else m).numpy(), cmap="inferno", vmin=0, vmax=1)
            mix = ", ".join(f"{g} {int(v)}" for g, v in comp.loc[j].items() if v)
            ax.set_title(f"{100 * float(c.shares[j]):.0f}% of images\n{mix or 'empty'}",
                         fontsize=7)
        axes[r, 0].set_ylabel(name, fontsize=8)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.03,
                     label="cluster mean map (scaled to its max)")
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def plot_comparison(runs: pd.DataFrame, metrics: Mapping[str, str], path: Path,
                    title: str, chance: Mapping[str, float] | None = None) -> None:
    """Mean ± std over seeds of each metric, one bar per variant (seeds as dots); where
    ``chance`` gives a metric's value for a uniform map, a dashed line marks it."""
    plt = pyplot()
    names = [m for m in metrics if m in runs and runs[m].notna().any()]
    variants = list(dict.fromkeys(runs["variant"]))
    fig, axes = plt.subplots(1, len(names), figsize=(2.8 * len(names) + 0.4, 3.2),
                             squeeze=False, gridspec_kw={"wspace": 0.45})
    for ax, m in zip(axes[0], names, strict=True):
        for v, variant in enumerate(variants):
            vals = runs.loc[runs["variant"] == variant, m].dropna().to_numpy(float)
            if not len(vals):
                continue
            ax.bar(v, vals.mean(), yerr=vals.std(ddof=1) if len(vals) > 1 else 0,
                   color=f"C{v}", alpha=0.7, capsize=4, label=variant)
            ax.scatter(np.full(len(vals), v), vals, color="k", s=8, zorder=3)
        if chance and m in chance:
            ax.axhline(chance[m], color="k", ls="--", lw=1,
                       label=f"uniform map {chance[m]:.2f}")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xticks(range(len(variants)), variants, fontsize=8)
        ax.set_title(metrics[m], fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title + " (bars: mean ± std over seeds; dots: seeds)", fontsize=9)
    save_figure(fig, path)
