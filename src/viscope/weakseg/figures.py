"""Figures and files of ``viscope weakseg``: the threshold sweep, the gallery (image, CAM,
pseudo-mask, real mask), the percent-density box plot, mask PNGs and ``summary.md``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from viscope.data.base import IGNORE
from viscope.io import atomic_write, atomic_write_text
from viscope.report.figures import pyplot, save_figure

#: PNG values of a pseudo-mask: background, foreground, ignored band
PNG_BACKGROUND, PNG_FOREGROUND, PNG_IGNORED = 0, 255, 128


_pyplot, _save = pyplot, save_figure


def write_mask_pngs(masks: Tensor, folder: Path) -> None:
    """One 8-bit PNG per mask (0 background, 255 foreground, 128 ignored), ``00000.png``
    ... in the split's order."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    m = masks[:, 0]
    arr = np.full(m.shape, PNG_BACKGROUND, dtype=np.uint8)
    arr[(m > 0.5).numpy()] = PNG_FOREGROUND
    arr[(m == IGNORE).numpy()] = PNG_IGNORED
    for i, a in enumerate(arr):
        atomic_write(folder / f"{i:05d}.png", lambda p, a=a: Image.fromarray(a).save(p, "PNG"))


def plot_sweep(table: pd.DataFrame, chosen: float, path: Path, n: int) -> None:
    """Mean Dice (± std band) against the threshold, the chosen one marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    t, m, s = table["threshold"], table["dice_mean"], table["dice_std"]
    ax.plot(t, m, marker="o", ms=3, label="mean Dice")
    ax.fill_between(t, m - s, m + s, alpha=0.2, label="± 1 std over images")
    best = float(table.loc[table["threshold"] == chosen, "dice_mean"].iloc[0])
    ax.axvline(chosen, color="C3", ls="--", lw=1, label=f"chosen {chosen:.2f} (Dice {best:.3f})")
    ax.set(xlabel="threshold of the normalised map (0–1)", ylabel="Dice with the real mask",
           title=f"Threshold sweep on {n} validation images with real masks", ylim=(0, 1))
    ax.legend(loc="lower center", fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_gallery(images: Tensor, maps: Tensor, masks: Tensor, real: Tensor | None,
                 available: Tensor, path: Path, *, n: int, classes: Sequence[str],
                 labels: Tensor, title: str) -> None:
    """Rows of image, map, mask (ignored band grey), real mask (where there is one),
    spread over the classes."""
    plt = _pyplot()
    order = _spread(labels, n)
    cols = ["image", "class map (0–1)", "mask", "real mask"]
    fig, axes = plt.subplots(len(order), 4, figsize=(7.2, 1.9 * len(order) + 0.5),
                             squeeze=False)
    for r, i in enumerate(order):
        img = images[i].permute(1, 2, 0).clamp(0, 1).numpy()
        shown = masks[i, 0].clone()
        shown[shown == IGNORE] = 0.5
        panels = [(img, None), (maps[i].numpy(), "inferno"), (shown.numpy(), "gray")]
        if real is not None and bool(available[i]):
            panels.append((real[i, 0].clamp(0, 1).numpy(), "gray"))
        else:
            panels.append((None, None))
        for c, (data, cmap) in enumerate(panels):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if data is None:
                ax.text(0.5, 0.5, "no real mask", ha="center", va="center", fontsize=7)
            else:
                ax.imshow(data, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            if r == 0:
                ax.set_title(cols[c], fontsize=8)
        axes[r, 0].set_ylabel(f"class {classes[int(labels[i])]}", fontsize=8)
    fig.suptitle(title + "\n(mask: white foreground, grey ignored band)", fontsize=9)
    _save(fig, path)


def _spread(labels: Tensor, n: int) -> list[int]:
    """Up to ``n`` indices taking the classes in turn (first images of each)."""
    by_class = [(labels == k).nonzero().flatten().tolist() for k in torch.unique(labels)]
    out: list[int] = []
    while len(out) < n and any(by_class):
        for items in by_class:
            if items and len(out) < n:
                out.append(items.pop(0))
    return out


def plot_density(table: pd.DataFrame, classes: Sequence[str], path: Path,
                 rho: float | None) -> None:
    """Box plot of the UNet's percent density per density class (real masks' beside it
    when there are)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    present = [c for c in classes if (table["class"] == c).any()]
    pos = np.arange(len(present))
    data = [table.loc[table["class"] == c, "percent_density"].to_numpy() for c in present]
    width = 0.35 if "percent_density_true" in table else 0.6
    shift = width / 2 + 0.02 if "percent_density_true" in table else 0
    b1 = ax.boxplot(data, positions=pos - shift, widths=width, patch_artist=True)
    for patch in b1["boxes"]:
        patch.set_facecolor("C0")
    handles, names = [b1["boxes"][0]], ["UNet on pseudo-masks"]
    if "percent_density_true" in table:
        truth = [table.loc[table["class"] == c, "percent_density_true"].dropna().to_numpy()
                 for c in present]
        if all(len(t) for t in truth):
            b2 = ax.boxplot(truth, positions=pos + shift, widths=width, patch_artist=True)
            for patch in b2["boxes"]:
                patch.set_facecolor("C1")
            handles.append(b2["boxes"][0])
            names.append("real masks")
    ax.set_xticks(pos, present)
    rho_text = f" (Spearman ρ = {rho:.3f})" if rho is not None else ""
    ax.set(xlabel="density class", ylabel="percent density (dense / breast area, %)",
           title=f"Percent density per class, test images{rho_text}", ylim=(0, 100))
    ax.legend(handles, names, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)


def write_summary(path: Path, cfg, results: pd.DataFrame, threshold: float | None,
                  rho: float | None) -> None:
    """``summary.md``: what was run and the results table."""
    shown = results.copy()
    lines = [
        f"# {cfg.name}: weak labels → CAM → pseudo-masks → UNet",
        "",
        f"- data: {cfg.data.csv or cfg.data.dataset}, {cfg.data.image_size} px",
        f"- classifier: {cfg.classifier.model} on "
        f"{', '.join(cfg.classifier.classes or ['all classes'])}",
        f"- maps: {cfg.cam.method} (layer {cfg.cam.layer}, target {cfg.cam.target}, "
        f"scales {cfg.cam.scales}, flip {cfg.cam.flip}), region {cfg.pseudo.roi}",
        f"- threshold: {cfg.pseudo.threshold}"
        + (f" = {threshold:.2f} (chosen on validation images)" if threshold is not None else ""),
        f"- UNet: {cfg.unet.model} {cfg.unet.args}",
        "",
        "Dice and IoU on the test images with real masks (mean ± std over images):",
        "",
        shown.to_markdown(index=False, floatfmt=".3f") if _has_tabulate() else
        shown.to_string(index=False),
        "",
    ]
    if rho is not None:
        lines.append(f"Percent density of the pseudo-mask UNet against the density class: "
                     f"Spearman ρ = {rho:.3f} (density.csv, evaluate/density.png).")
    atomic_write_text(path, "\n".join(lines) + "\n")


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
