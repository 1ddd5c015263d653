"""Deterministic, stratified train/val/test splits.

Each class is shuffled with the seed and cut into floor/ceil shares, so every split
holds each class's share to within one item, and the same seed always gives the same
split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from torch.utils.data import Dataset

from viscope.data.base import check_seed, labels_of
from viscope.errors import ViscopeError

SPLIT_NAMES = ("train", "val", "test")
DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.15, "test": 0.15}


def resolve_fractions(fractions: Sequence[float] | Mapping[str, float]) -> dict[str, float]:
    """Turn ``(train, val, test)`` or ``{name: fraction}`` into a checked ``{name: fraction}``.

    Raises:
        ViscopeError: Wrong number of fractions, negative ones, or a sum other than 1.
    """
    if isinstance(fractions, Mapping):
        named = {str(k): float(v) for k, v in fractions.items()}
    else:
        values = list(fractions)
        if len(values) != len(SPLIT_NAMES):
            raise ViscopeError(
                f"Expected 3 split fractions (train, val, test); got {len(values)}: {values}. "
                "Pass e.g. (0.7, 0.15, 0.15), or a dict {name: fraction} for other splits."
            )
        named = dict(zip(SPLIT_NAMES, (float(v) for v in values), strict=True))
    if not named or any(not np.isfinite(v) or v < 0 for v in named.values()):
        raise ViscopeError(f"Expected non-negative split fractions; got {named}.")
    total = sum(named.values())
    if abs(total - 1.0) > 1e-6:
        raise ViscopeError(
            f"Expected split fractions that sum to 1; got {named} (sum {total:g}). "
            "Rescale them, e.g. (0.7, 0.15, 0.15)."
        )
    return named


def split_indices(
    dataset: Dataset | Sequence[int] | np.ndarray,
    fractions: Sequence[float] | Mapping[str, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Split a dataset's indices into disjoint, stratified, seeded parts.

    For every class with ``n_c`` items, split ``s`` gets ``floor(n_c * f_s)`` or
    ``ceil(n_c * f_s)`` of them, so label proportions hold to within one item; the
    rounded-up shares go to the splits furthest below their running total, so split sizes
    also stay within about one item of ``n * f_s``.

    Args:
        dataset: A viscope dataset (its ``.targets`` are used), any dataset of
            ``(image, label, ...)`` items, or the labels themselves.
        fractions: ``(train, val, test)`` fractions, or ``{split name: fraction}``;
            they must sum to 1.
        seed: Seed of the per-class shuffles.

    Returns:
        ``{split name: sorted int64 indices}``; together the parts cover every index once.

    Raises:
        ViscopeError: The fractions or the seed are invalid, or the labels are not integers.

    Example:
        >>> parts = split_indices([0, 0, 0, 0, 1, 1, 1, 1], (0.5, 0.25, 0.25), seed=0)
        >>> [len(parts[s]) for s in ("train", "val", "test")]
        [4, 2, 2]
    """
    named = resolve_fractions(fractions)
    names = list(named)
    frac = np.array([named[s] for s in names])
    labels = labels_of(dataset)
    rng = np.random.default_rng(check_seed(seed))
    parts: list[list[np.ndarray]] = [[] for _ in names]
    given = np.zeros(len(names))  # items handed out so far, per split
    wanted = np.zeros(len(names))  # running target, per split
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        ideal = len(members) * frac
        counts = np.floor(ideal + 1e-9).astype(np.int64)
        wanted += ideal
        left = len(members) - int(counts.sum())
        if left > 0:
            # Only a split whose share of this class is fractional may round up (else it
            # would get ceil + 1); among those, the extra items go to the splits furthest
            # below their running target, which keeps the totals close too.
            rest = ideal - counts
            deficit = np.where(rest > 1e-9, np.round(wanted - given - counts, 9), -np.inf)
            order = np.lexsort((-rest, -deficit))
            counts[order[:left]] += 1
        given += counts
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for k in range(len(names)):
            parts[k].append(members[bounds[k] : bounds[k + 1]])
    return {
        name: np.sort(np.concatenate(chunks)) if chunks else np.zeros(0, dtype=np.int64)
        for name, chunks in zip(names, parts, strict=True)
    }
