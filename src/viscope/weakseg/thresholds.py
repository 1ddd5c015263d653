"""From maps to masks: fixed, percentile and Otsu thresholds per image, the confident
foreground / background split with an ignored band, and the threshold sweep against real
masks. Everything is batched on the maps' device (no per-image Python loop).

Maps are (B, H, W) (or (B, 1, H, W)) per-image maps in [0, 1], as
:func:`viscope.weakseg.class_maps` returns them; a region of interest (ROI) is a
(B, 1, H, W) or (B, H, W) boolean mask; masks come back as (B, 1, H, W), always 0 outside
the ROI.

>>> maps = torch.tensor([[[0.1, 0.4], [0.6, 0.9]]])
>>> threshold(maps, "fixed", 0.5).flatten().tolist()
[False, False, True, True]
>>> confident(maps, 0.3, 0.7).flatten().tolist()  # -1 = IGNORE, the uncertain band
[0.0, -1.0, -1.0, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch

from viscope.data.base import IGNORE
from viscope.errors import ViscopeError, suggest
from viscope.evaluate.segmentation import as_bhw

#: the binarisations :func:`threshold` knows
METHODS = ("otsu", "fixed", "percentile")


# -- checks ---------------------------------------------------------------------------------

def check_maps(maps: object) -> torch.Tensor:
    """``maps`` as a floating (B, H, W) tensor, finite.

    Raises:
        ViscopeError: not a tensor, another shape, or NaN/inf values (naming the maps).
    """
    maps = as_bhw(maps, "maps")
    if not maps.is_floating_point():
        maps = maps.float()
    bad = ~torch.isfinite(maps.flatten(1)).all(dim=1)
    if bool(bad.any()):
        raise ViscopeError(f"Expected finite maps; maps {bad.nonzero()[:, 0].tolist()} hold NaN "
                           "or inf. Recompute them, or replace the values with "
                           "torch.nan_to_num(maps).")
    return maps


def check_roi(roi: torch.Tensor | None, maps: torch.Tensor) -> torch.Tensor:
    """The region of interest as a (B, H, W) bool tensor on the maps' device (``None``: the
    whole image).

    Raises:
        ViscopeError: a shape other than the maps' (B, H, W) or (B, 1, H, W), or values
            other than {0, 1}.
    """
    if roi is None:
        return torch.ones(maps.shape, dtype=torch.bool, device=maps.device)
    if not isinstance(roi, torch.Tensor):
        raise ViscopeError(f"Expected roi as a bool tensor (B, 1, H, W); got "
                           f"{type(roi).__name__}. Convert it with torch.as_tensor.")
    r = roi[:, 0] if roi.ndim == 4 and roi.shape[1] == 1 else roi
    if tuple(r.shape) != tuple(maps.shape):
        raise ViscopeError(f"Expected roi of shape {(maps.shape[0], 1, *maps.shape[1:])} (one "
                           f"region per map); got {tuple(roi.shape)}.")
    if r.dtype != torch.bool:
        if not ((r == 0) | (r == 1)).all():
            raise ViscopeError("Expected roi in {0, 1} (bool); got other values. Binarise it "
                               "first, e.g. roi > 0.5.")
        r = r == 1
    return r.to(maps.device)


def check_unit(value: object, name: str) -> float:
    """``value`` as a float in [0, 1] (a threshold on maps normalised per image)."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ViscopeError(f"Expected {name} as a number in [0, 1]; got {value!r}.") from None
    if not 0.0 <= v <= 1.0:
        raise ViscopeError(f"Expected {name} in [0, 1] (maps are normalised to [0, 1] per "
                           f"image); got {value!r}.")
    return v


# -- per-image thresholds -------------------------------------------------------------------

def otsu_thresholds(
    values: torch.Tensor, valid: torch.Tensor | None = None, nbins: int = 256
) -> torch.Tensor:
    """Otsu's threshold of each row's values (those marked ``valid``), batched.

    Written here because no library computes Otsu per row of a batch on the tensors'
    device; it replicates :func:`skimage.filters.threshold_otsu` step by step (NumPy's
    histogram of ``nbins`` equal bins over the row's [min, max], bin centres, the argmax of
    the between-class variance, ``bin_centers[idx]``; a constant row gives its value), in
    float64, and equals it on the float64 values (tests). Pixels above the threshold are
    foreground, as in scikit-image.

    Args:
        values: (B, ...) values; each image's row is everything after dim 0.
        valid: the same shape, bool; ``None``: all valid.
        nbins: histogram bins (scikit-image's default 256).

    Returns:
        (B,) float64 thresholds; ``+inf`` for a row with no valid value.
    """
    x = values.flatten(1).double()
    ok = torch.ones_like(x, dtype=torch.bool) if valid is None else valid.flatten(1).to(x.device)
    lo = torch.where(ok, x, math.inf).amin(1)
    hi = torch.where(ok, x, -math.inf).amax(1)
    empty, flat = ~ok.any(1), lo == hi
    plain = ~(empty | flat)
    lo_ = torch.where(plain, lo, 0.0)[:, None]
    hi_ = torch.where(plain, hi, 1.0)[:, None]
    # numpy.histogram's binning: edges as numpy.linspace makes them (last = max exactly);
    # the index from the scaled value, then corrected by the edges (exact at bin borders)
    step = (hi_ - lo_) / nbins
    edges = torch.arange(nbins + 1, device=x.device, dtype=x.dtype) * step + lo_
    edges[:, -1:] = hi_
    xs = torch.where(ok & plain[:, None], x, lo_)
    idx = (((xs - lo_) / (hi_ - lo_)) * nbins).long().clamp(max=nbins - 1)
    idx = idx - (xs < edges.gather(1, idx)).long()
    idx = idx + ((xs >= edges.gather(1, idx + 1)) & (idx != nbins - 1)).long()
    counts = torch.zeros(x.shape[0], nbins, device=x.device, dtype=x.dtype)
    counts.scatter_add_(1, idx, (ok & plain[:, None]).to(x.dtype))
    centres = (edges[:, :-1] + edges[:, 1:]) / 2.0
    # skimage.filters.threshold_otsu, on each row
    w1 = counts.cumsum(1)
    w2 = counts.flip(1).cumsum(1).flip(1)
    m1 = (counts * centres).cumsum(1) / w1
    m2 = ((counts * centres).flip(1).cumsum(1) / w2.flip(1)).flip(1)
    between = w1[:, :-1] * w2[:, 1:] * (m1[:, :-1] - m2[:, 1:]) ** 2
    between = torch.nan_to_num(between, nan=-1.0)  # rows with no histogram (empty, flat): 0/0
    best = centres.gather(1, between.argmax(1, keepdim=True))[:, 0]
    return torch.where(plain, best, torch.where(empty, math.inf, lo))


def percentile_thresholds(
    values: torch.Tensor, q: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """The ``q``-th percentile of each row's valid values, as :func:`numpy.percentile`'s
    default (``method="linear"``) computes it, in float64, batched.

    By hand (a sort and a gather) because :func:`torch.nanquantile` refuses inputs of more
    than 2**24 values (512 maps of 256² already are).

    Args:
        values: (B, ...) values.
        q: the percentile, in [0, 100].
        valid: the same shape, bool; ``None``: all valid.

    Returns:
        (B,) float64 thresholds; ``+inf`` for a row with no valid value.
    """
    x = values.flatten(1).double()
    ok = torch.ones_like(x, dtype=torch.bool) if valid is None else valid.flatten(1).to(x.device)
    ordered = torch.where(ok, x, math.inf).sort(1).values
    n = ok.sum(1)
    virtual = (n - 1).clamp(min=0).double() * (float(q) / 100)
    prev = virtual.floor()
    gamma = (virtual - prev)[:, None]
    below = prev.long().clamp(min=0)[:, None]
    above = torch.minimum(below + 1, (n - 1).clamp(min=0)[:, None])
    a, b = ordered.gather(1, below), ordered.gather(1, above)
    diff = b - a
    # numpy's _lerp: from the nearer end, so that gamma = 0 or 1 gives a value exactly
    value = torch.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)[:, 0]
    return torch.where(n > 0, value, math.inf)


# -- masks ----------------------------------------------------------------------------------

def threshold(
    maps: torch.Tensor, method: str = "otsu", value: float | None = None,
    roi: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binarise each map inside its region of interest.

    Args:
        maps: (B, H, W) or (B, 1, H, W) maps in [0, 1].
        method: ``"fixed"``: ``map >= value``; ``"percentile"``: ``map >=`` the
            ``value``-th percentile (0-100, :func:`numpy.percentile`'s linear method) of
            the map's values inside the ROI; ``"otsu"``: ``map >`` Otsu's threshold of the
            map's values inside the ROI (:func:`otsu_thresholds`; scikit-image's
            convention, ``value`` must be ``None``).
        value: the threshold in [0, 1] (fixed) or percentile in [0, 100].
        roi: (B, 1, H, W) or (B, H, W) bool; ``None``: the whole image. An image with an
            empty ROI gets an empty mask.

    Returns:
        (B, 1, H, W) bool masks, False outside the ROI.

    Raises:
        ViscopeError: an unknown method, a missing or out-of-range value (or one given to
            Otsu), maps or ROI of the wrong shape, NaN in the maps.
    """
    m = check_maps(maps)
    r = check_roi(roi, m)
    if method not in METHODS:
        raise ViscopeError(f"Expected threshold method one of {', '.join(METHODS)}; got "
                           f"{method!r}.{suggest(str(method), METHODS)}")
    if method == "otsu":
        if value is not None:
            raise ViscopeError(f"Otsu's threshold is computed per image and takes no value; got "
                               f"value={value!r}. Leave value=None or use method='fixed'.")
        cut = otsu_thresholds(m, r).to(m.device)
        out = m.double() > cut[:, None, None]
    elif value is None:
        raise ViscopeError(f"Expected a value for threshold method {method!r} (a threshold in "
                           "[0, 1] for fixed, a percentile in [0, 100] for percentile); got "
                           "None.")
    elif method == "fixed":
        out = m >= check_unit(value, "the fixed threshold")
    else:
        q = float(value)
        if not 0.0 <= q <= 100.0:
            raise ViscopeError(f"Expected a percentile in [0, 100]; got {value!r}.")
        out = m.double() >= percentile_thresholds(m, q, r)[:, None, None]
    return (out & r)[:, None]


def confident(
    maps: torch.Tensor, low: float, high: float, roi: torch.Tensor | None = None
) -> torch.Tensor:
    """Confident foreground and background, with the uncertain band between ignored.

    Bounds outside [0, 1] are allowed (a band placed around a threshold may reach past
    them): ``low < 0`` leaves no confident background inside the ROI, ``high > 1`` no
    foreground.

    Args:
        maps: (B, H, W) or (B, 1, H, W) maps in [0, 1].
        low: map values ``<= low`` are background (0).
        high: map values ``>= high`` are foreground (1); ``low < high``.
        roi: where the masks may be foreground; outside it everything is 0.

    Returns:
        (B, 1, H, W) float masks in {0, 1, :data:`~viscope.data.base.IGNORE`}.

    Raises:
        ViscopeError: ``low >= high``, non-finite bounds, maps or ROI as in :func:`threshold`.
    """
    m = check_maps(maps)
    r = check_roi(roi, m)
    lo, hi = float(low), float(high)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ViscopeError(f"Expected finite band bounds with low < high; got low={low!r}, "
                           f"high={high!r}.")
    out = torch.full_like(m, IGNORE)
    out = torch.where(m >= hi, 1.0, torch.where(m <= lo, 0.0, out))
    return torch.where(r, out, 0.0)[:, None]


# -- choosing a threshold on images with real masks -----------------------------------------

def sweep(
    maps: torch.Tensor, true_masks: torch.Tensor, thresholds: Sequence[float],
    roi: torch.Tensor | None = None,
) -> pd.DataFrame:
    """Dice and IoU of ``threshold(maps, "fixed", t, roi)`` against real masks, for every t.

    All thresholds at once: each image's positive (and negative) pixels' map values are
    sorted once, and the number at or above each threshold is a binary search
    (:func:`torch.searchsorted`); the scores equal :func:`viscope.evaluate.segmentation.dice`
    of each thresholded mask (tests). An image where both are empty scores 1.

    Args:
        maps: (B, H, W) maps in [0, 1] (validation images only: the threshold chosen here
            must not see the test set).
        true_masks: (B, 1, H, W) or (B, H, W) real masks in {0, 1}; pixels equal to
            :data:`~viscope.data.base.IGNORE` are left out.
        thresholds: values in [0, 1].
        roi: the region of interest (pixels outside it are predicted 0).

    Returns:
        One row per threshold, in the given order: ``threshold, dice_mean, dice_std,
        iou_mean`` (std over images, population, as
        :func:`~viscope.evaluate.segmentation.summarise`).

    Raises:
        ViscopeError: no threshold or one outside [0, 1], masks of another shape or with
            other values, an image whose real mask is all IGNORE (it has none: leave it
            out), maps or ROI as in :func:`threshold`.
    """
    m = check_maps(maps)
    r = check_roi(roi, m)
    ts = [check_unit(t, "each sweep threshold") for t in thresholds]
    if not ts:
        raise ViscopeError("Expected at least one threshold to sweep; got none.")
    t = true_masks[:, 0] if true_masks.ndim == 4 and true_masks.shape[1] == 1 else true_masks
    if tuple(t.shape) != tuple(m.shape):
        raise ViscopeError(f"Expected true masks of shape {(m.shape[0], 1, *m.shape[1:])} like "
                           f"the maps; got {tuple(true_masks.shape)}.")
    t = t.to(m.device)
    pos, neg = t == 1, t == 0
    if not (pos | neg | (t == IGNORE)).all():
        raise ViscopeError(f"Expected true masks in {{0, 1}} and {IGNORE} (ignored); got other "
                           "values. Binarise them first, e.g. (masks > 0.5).float().")
    none = ~(pos | neg).flatten(1).any(1)
    if bool(none.any()):
        raise ViscopeError(f"Expected a real mask for every image swept; images "
                           f"{none.nonzero()[:, 0].tolist()} are all IGNORE (no mask). Pass "
                           "only the images that have one.")
    score = torch.where(r, m, -math.inf).flatten(1)
    cuts = torch.tensor(ts, dtype=m.dtype, device=m.device).expand(m.shape[0], -1).contiguous()

    def at_or_above(which: torch.Tensor) -> torch.Tensor:  # (B, T) counts of map >= t
        ordered = torch.where(which.flatten(1), score, -math.inf).sort(1).values
        return ordered.shape[1] - torch.searchsorted(ordered, cuts)

    tp, fp = at_or_above(pos).double(), at_or_above(neg).double()
    fn = pos.flatten(1).sum(1, keepdim=True).double() - tp
    den_d, den_i = 2 * tp + fp + fn, tp + fp + fn
    d = torch.where(den_d > 0, 2 * tp / den_d.clamp(min=1), 1.0)
    j = torch.where(den_i > 0, tp / den_i.clamp(min=1), 1.0)
    return pd.DataFrame({"threshold": ts, "dice_mean": d.mean(0).cpu().numpy(),
                         "dice_std": d.std(0, correction=0).cpu().numpy(),
                         "iou_mean": j.mean(0).cpu().numpy()})


def best_threshold(table: pd.DataFrame) -> float:
    """The threshold of :func:`sweep`'s table with the highest mean Dice (ties: the lowest).

    Raises:
        ViscopeError: a table without rows or without the ``threshold`` and ``dice_mean``
            columns.

    Example:
        >>> best_threshold(pd.DataFrame({"threshold": [0.3, 0.1, 0.2],
        ...                              "dice_mean": [0.5, 0.7, 0.7]}))
        0.1
    """
    if not isinstance(table, pd.DataFrame) or not {"threshold", "dice_mean"} <= set(table):
        raise ViscopeError("Expected the table of viscope.weakseg.sweep (columns threshold, "
                           "dice_mean); got another object.")
    if table.empty or table["dice_mean"].isna().all():
        raise ViscopeError("Expected a sweep table with at least one scored threshold; got an "
                           "empty one. Sweep at least one threshold.")
    ordered = table.sort_values("threshold", kind="stable")
    return float(ordered["threshold"].iloc[int(ordered["dice_mean"].to_numpy().argmax())])
