"""Segmentation metrics per image: Dice and IoU of binary masks against reference masks
whose pixels may be ignored (:data:`viscope.data.base.IGNORE`: a pseudo-mask's uncertain
band, or an image without a real mask).

The counts (true/false positives, false negatives per image, ignored pixels left out) are
taken here, vectorised, rather than by torchmetrics: its ``binary_stat_scores`` with
``multidim_average="samplewise"`` gives the same counts (tests) but fails for a batch of one
image (1.9: its ``squeeze()`` drops the batch dimension), and its ``binary_jaccard_index``
and Dice score reduce over the batch and score an image with nothing to find as 0 rather
than a chosen value.

Unlike :func:`viscope.evaluate.dice` (a *map* thresholded, for localisation), these take
masks that are already binary.

>>> pred = torch.tensor([[[1, 1], [0, 0]]])
>>> target = torch.tensor([[[1.0, -1.0], [1.0, 0.0]]])  # one pixel ignored
>>> round(dice(pred, target).item(), 4), iou(pred, target).item()  # TP 1, FP 0, FN 1
(0.6667, 0.5)
"""

from __future__ import annotations

import math

import torch

from viscope.data.base import IGNORE
from viscope.errors import ViscopeError

__all__ = ["dice", "iou", "stat_scores", "summarise"]


def as_bhw(x: object, name: str) -> torch.Tensor:
    """``x`` as a (B, H, W) tensor (a (B, 1, H, W) one squeezed); one-line errors naming
    ``name`` otherwise. Shared with the pseudo-mask thresholds."""
    if not isinstance(x, torch.Tensor):
        raise ViscopeError(f"Expected {name} as a torch tensor (B, 1, H, W) or (B, H, W); got "
                           f"{type(x).__name__}. Convert it with torch.as_tensor.")
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        one = "map" if name == "maps" else "mask"
        raise ViscopeError(f"Expected {name} of shape (B, 1, H, W) or (B, H, W); got "
                           f"{tuple(x.shape)}. For a single {one} pass {one}[None].")
    return x


def stat_scores(
    pred: torch.Tensor, target: torch.Tensor, *, ignore: float | None = IGNORE
) -> torch.Tensor:
    """Per-image counts of true positives, false positives and false negatives.

    Args:
        pred: (B, 1, H, W) or (B, H, W) binary masks (bool, or numbers in {0, 1}).
        target: the reference masks, same shape, values in {0, 1} and ``ignore``.
        ignore: the value of pixels left out of every count (``None``: none are).

    Returns:
        (B, 3) int64: tp, fp, fn per image.

    Raises:
        ViscopeError: tensors of other shapes, values outside {0, 1} (and ``ignore``), NaN.
    """
    p, t = as_bhw(pred, "pred"), as_bhw(target, "target")
    if p.shape != t.shape:
        raise ViscopeError(f"Expected pred and target of one shape; got {tuple(pred.shape)} "
                           f"and {tuple(target.shape)}. Resize one to the other first.")
    t = t.to(p.device)
    if not ((p == 0) | (p == 1)).all():
        raise ViscopeError("Expected pred masks in {0, 1} (bool); got other values. Binarise "
                           "maps first, e.g. viscope.weakseg.threshold(maps, 'fixed', 0.5).")
    ignored = (t == ignore) if ignore is not None else torch.zeros_like(t, dtype=torch.bool)
    if not ((t == 0) | (t == 1) | ignored).all():
        extra = f" and {ignore} (ignored)" if ignore is not None else ""
        raise ViscopeError(f"Expected target masks in {{0, 1}}{extra}; got other values (or "
                           "NaN). Binarise them first, e.g. (target > 0.5).")
    p = p.bool().flatten(1)
    pos = ((t == 1) & ~ignored).flatten(1)
    neg = ((t == 0) & ~ignored).flatten(1)  # ignored pixels are neither
    tp = (p & pos).sum(1)
    return torch.stack([tp, (p & neg).sum(1), pos.sum(1) - tp], dim=1)


def dice(
    pred: torch.Tensor, target: torch.Tensor, *, ignore: float | None = IGNORE,
    empty: float = 1.0,
) -> torch.Tensor:
    """Dice coefficient 2 TP / (2 TP + FP + FN) of each image's mask.

    Args:
        pred: (B, 1, H, W) or (B, H, W) binary masks.
        target: reference masks of the same shape in {0, 1}; pixels equal to ``ignore``
            are left out.
        ignore: the value of ignored pixels (default :data:`~viscope.data.base.IGNORE`).
        empty: the score of an image where prediction and reference are both empty (no
            positive among the pixels that count).

    Returns:
        (B,) float32 scores in [0, 1].

    Raises:
        ViscopeError: as :func:`stat_scores`.

    Example:
        >>> same = torch.ones(2, 1, 3, 3)
        >>> dice(same, same).tolist(), dice(same * 0, same * 0, empty=0.0).tolist()
        ([1.0, 1.0], [0.0, 0.0])
    """
    tp, fp, fn = stat_scores(pred, target, ignore=ignore).float().unbind(1)
    return _ratio(2 * tp, 2 * tp + fp + fn, empty)


def iou(
    pred: torch.Tensor, target: torch.Tensor, *, ignore: float | None = IGNORE,
    empty: float = 1.0,
) -> torch.Tensor:
    """Intersection over union TP / (TP + FP + FN) of each image's mask (Jaccard index).

    Args and Raises as :func:`dice`.

    Returns:
        (B,) float32 scores in [0, 1].
    """
    tp, fp, fn = stat_scores(pred, target, ignore=ignore).float().unbind(1)
    return _ratio(tp, tp + fp + fn, empty)


def _ratio(num: torch.Tensor, den: torch.Tensor, empty: float) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(den, float(empty)))


def summarise(scores: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation of per-image scores.

    The standard deviation is the population one (``ddof=0``, ``torch.std(correction=0)``),
    so one image gives 0, as the run's ``results.csv`` reports it.

    Args:
        scores: (B,) scores, B >= 1, finite.

    Returns:
        ``(mean, std)`` as Python floats.

    Raises:
        ViscopeError: no score, or a NaN/inf score.

    Example:
        >>> summarise(torch.tensor([0.5, 1.0]))
        (0.75, 0.25)
    """
    s = torch.as_tensor(scores).double().flatten()
    if s.numel() == 0:
        raise ViscopeError("Expected at least one score to summarise; got none. Score images "
                           "that have reference masks.")
    if not torch.isfinite(s).all():
        raise ViscopeError("Expected finite scores; got NaN or inf. Check the masks scored.")
    mean, std = float(s.mean()), float(s.std(correction=0))
    return mean, (0.0 if math.isnan(std) else std)
