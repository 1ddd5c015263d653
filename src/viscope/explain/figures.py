"""``overlay_grid``: attribution maps over their images, one row per image.

>>> import torch
>>> maps = {"gradcam": torch.rand(2, 32, 32), "layercam": torch.rand(2, 32, 32)}
>>> fig = overlay_grid(torch.rand(2, 3, 32, 32), maps, masks=torch.rand(2, 32, 32) > 0.5)
>>> len(fig.axes)  # 2 rows x (image + 2 maps), plus the colour bar
7
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from viscope.errors import ViscopeError
from viscope.io import atomic_write

#: Short labels of the metrics written under each map (other names are shown as they are).
SHORT = {
    "deletion_auc": "del",
    "insertion_auc": "ins",
    "pointing_game": "PG",
    "energy_pointing_game": "EPG",
    "iou": "IoU",
    "dice": "Dice",
}
#: What the short labels mean, for the figure's footnote.
LEGEND = {
    "del": "deletion AUC (lower = more faithful)",
    "ins": "insertion AUC (higher = more faithful)",
    "PG": "pointing game (map's peak within 15 px @ 224 px of the mask)",
    "EPG": "share of the map's energy inside the mask",
    "IoU": "IoU of map ≥ 0.5 with the mask",
    "Dice": "Dice of map ≥ 0.5 with the mask",
}
CBAR_LABEL = "attribution (normalised 0–1)"


def overlay_grid(
    images: torch.Tensor,
    maps: Mapping[str, torch.Tensor],
    masks: torch.Tensor | None = None,
    scores: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    titles: Sequence[str] | None = None,
    path: str | os.PathLike[str] | None = None,
    *,
    title: str = "Attribution maps",
    cmap: str = "jet",
    alpha: float = 0.5,
) -> Figure:
    """Draw each method's map as a heat overlay on its image, one row per image.

    Columns: the image, then one per method (titled with its name). A white line outlines
    the ground-truth mask where ``masks`` are given; each map's scores are written under
    it (``del 0.21 · ins 0.64 · PG ✓``) and explained in a footnote.

    Args:
        images: (B, C, H, W) images in [0, 1] (C = 1 or 3).
        maps: method name -> (B, H, W) maps in [0, 1] (as ``attribute`` returns them).
        masks: (B, H, W) or (B, 1, H, W) ground-truth masks, or ``None``.
        scores: method name -> metric name -> (B,) values (booleans are drawn ✓ / ✗).
        titles: one label per row (e.g. ``"#12 circle"``), shown left of the image.
        path: write the figure there as a PNG (atomically), if given.
        title: the figure's title.
        cmap: matplotlib colour map of the heat overlay.
        alpha: opacity of the overlay.

    Returns:
        The matplotlib ``Figure`` (not attached to pyplot; nothing stays open).

    Raises:
        ViscopeError: no maps, or maps, masks, scores or titles that do not match the images.
    """
    imgs = _images(images)
    n, h, w = imgs.shape[:3]
    if not maps:
        raise ViscopeError("Expected at least one map (a dict method name -> (B, H, W)).")
    arrays = {m: _array(v, (n, h, w), f"maps[{m!r}]") for m, v in maps.items()}
    mask = None if masks is None else _masks(masks, (n, h, w))
    if titles is not None and len(titles) != n:
        raise ViscopeError(f"Expected {n} titles, one per image; got {len(titles)}.")
    cols = 1 + len(arrays)
    fig = Figure(figsize=(1.9 * cols + 1.0, 2.25 * n + 1.3), layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    for r in range(n):
        ax = axes[r, 0]
        ax.imshow(imgs[r], cmap="gray" if imgs.shape[-1] == 1 else None, vmin=0, vmax=1,
                  interpolation="nearest")
        _plain(ax)
        if mask is not None:
            ax.contour(mask[r], levels=[0.5], colors="white", linewidths=1.2)
        if titles is not None:
            ax.set_ylabel(titles[r], fontsize=9)
        if r == 0:
            ax.set_title("image", fontsize=10)
        for c, (method, arr) in enumerate(arrays.items(), start=1):
            ax = axes[r, c]
            ax.imshow(imgs[r].mean(-1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.imshow(arr[r], cmap=cmap, vmin=0, vmax=1, alpha=alpha,
                             interpolation="bilinear")
            if mask is not None:
                ax.contour(mask[r], levels=[0.5], colors="white", linewidths=1.2)
            _plain(ax)
            if r == 0:
                ax.set_title(method, fontsize=10, fontweight="bold")
            if scores and method in scores:
                ax.set_xlabel(score_line(scores[method], r, n), fontsize=8)
    # An opaque colour bar: the overlay's alpha would wash out the scale being read.
    heat = ScalarMappable(Normalize(0, 1), cmap)
    cbar = fig.colorbar(heat, ax=axes, shrink=min(0.9, 0.35 + 0.15 * n), pad=0.02)
    cbar.set_label(CBAR_LABEL)
    fig.suptitle(title, fontsize=12, fontweight="bold")
    note = _footnote(scores, mask is not None)
    if note:
        fig.text(0.01, 0.0, note, fontsize=7, ha="left", va="bottom", wrap=True)
        bottom = (0.2 + 0.11 * note.count("\n")) / fig.get_figheight()
        fig.get_layout_engine().set(rect=(0, bottom, 1, 1 - bottom))
    if path is not None:
        atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    return fig


def overlay_title(title: str, shown: int, total: int) -> str:
    """``title``, saying which images a grid shows when it draws fewer than were explained.

    The note goes on a line of its own: a narrow grid (one method) would clip a long title.

    Example:
        >>> overlay_title("gradcam on shapes", 8, 16)
        'gradcam on shapes\\n(first 8 of 16 images)'
        >>> overlay_title("gradcam on shapes", 4, 4)
        'gradcam on shapes'
    """
    if shown < total:
        return f"{title}\n(first {shown} of {total} images)"
    return title


def score_line(
    metrics: Mapping[str, torch.Tensor], row: int, n: int = 0, width: int = 27
) -> str:
    """One image's scores as ``"del 0.21 · ins 0.64 · PG ✓"``, in lines of ~``width`` chars.

    Example:
        >>> score_line({"deletion_auc": torch.tensor([0.2]),
        ...             "pointing_game": torch.tensor([True])}, 0)
        'del 0.20 · PG ✓'
    """
    parts = []
    for name, values in metrics.items():
        v = torch.as_tensor(values)
        if n and v.shape[0] != n:
            raise ViscopeError(f"Expected {n} values of score {name!r}; got {tuple(v.shape)}.")
        x = v[row]
        label = SHORT.get(name, name)
        text = ("✓" if bool(x) else "✗") if x.dtype == torch.bool else f"{float(x):.2f}"
        parts.append(f"{label} {text}")
    return _wrap(parts, " · ", width)


def _footnote(scores: Mapping[str, Mapping[str, torch.Tensor]] | None, masks: bool) -> str:
    names = {SHORT.get(k, k) for s in (scores or {}).values() for k in s}
    items = [f"{k} = {v}" for k, v in LEGEND.items() if k in names]
    if masks:
        items.append("white line = ground-truth mask")
    return _wrap(items, "; ", 110)


def _wrap(items: Sequence[str], sep: str, width: int) -> str:
    """Join ``items`` with ``sep``, starting a new line before one that would pass ``width``."""
    lines: list[str] = []
    line = ""
    for item in items:
        if line and len(line) + len(sep) + len(item) > width:
            lines.append(line)
            line = ""
        line = f"{line}{sep}{item}" if line else item
    return "\n".join([*lines, line]) if line else ""


def _plain(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _images(images: torch.Tensor) -> np.ndarray:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
        raise ViscopeError(f"Expected images (B, 1 or 3, H, W) in [0, 1]; got {shape}.")
    return images.detach().float().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy()


def _array(x: torch.Tensor, shape: tuple[int, int, int], what: str) -> np.ndarray:
    arr = torch.as_tensor(x).detach().float().cpu().numpy()
    if arr.shape != shape:
        raise ViscopeError(f"Expected {what} of shape {shape} like the images; got {arr.shape}.")
    return arr


def _masks(masks: torch.Tensor, shape: tuple[int, int, int]) -> np.ndarray:
    m = torch.as_tensor(masks)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    return _array(m.float(), shape, "masks")


__all__ = ["overlay_grid", "overlay_title", "score_line"]
