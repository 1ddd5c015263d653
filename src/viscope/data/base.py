"""The dataset protocol every viscope dataset follows, and a subset that keeps it.

A viscope dataset is a map-style :class:`torch.utils.data.Dataset` whose items are
``(image, label)`` or ``(image, label, mask)``: ``image`` is float32 (3, H, W) in [0, 1],
``label`` an ``int`` and ``mask`` float32 (1, H, W) in {0, 1}. It also carries
``classes`` (names, indexed by label), ``has_masks`` and ``targets`` (the label of every
item, so that splits never have to load an image).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from viscope.errors import ViscopeError

Item = tuple[torch.Tensor, int] | tuple[torch.Tensor, int, torch.Tensor]

#: Mask value of a pixel that a segmentation loss and metric ignore (pseudo-masks'
#: uncertain band; an image without a real mask is all IGNORE). Masks are otherwise
#: {0, 1}; -1 can never be a probability, so no valid pixel reads as ignored.
IGNORE: float = -1.0


class VisionDataset(Dataset):
    """Base class of viscope datasets: ``classes``, ``has_masks``, ``targets``, items.

    Subclasses set the three attributes in ``__init__`` and implement ``__len__`` and
    ``_item`` (for an index already checked to be in ``range(len(self))``).
    """

    classes: list[str]
    has_masks: bool
    targets: list[int]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Item:
        return self._item(normalise_index(index, len(self)))

    def _item(self, index: int) -> Item:
        raise NotImplementedError

    def __repr__(self) -> str:
        masks = ", with masks" if self.has_masks else ""
        return f"{type(self).__name__}({len(self)} items, {len(self.classes)} classes{masks})"


def normalise_index(index: Any, length: int) -> int:
    """Turn ``index`` (an int, possibly negative, or a 0-d integer tensor/array) into 0..length-1.

    Raises:
        IndexError: ``index`` is out of range (as sequences do, so that iteration stops).
        TypeError: ``index`` is not an integer.
    """
    try:
        i = int(index.__index__())
    except AttributeError:
        raise TypeError(f"Dataset index must be an integer; got {type(index).__name__}") from None
    if i < 0:
        i += length
    if not 0 <= i < length:
        raise IndexError(f"Index {index} is out of range for a dataset of {length} items")
    return i


class SubsetDataset(VisionDataset):
    """Some items of a viscope dataset, in a given order; keeps ``classes`` and ``has_masks``.

    Args:
        dataset: The dataset to take items from.
        indices: Indices into ``dataset``.
        name: What this subset is (``"train"``, ``"val"``, ``"test"``, ``"subset"``).
        seed: The seed the indices were drawn with, recorded for reproducibility.
        fractions: The split fractions the indices came from, recorded likewise.

    Raises:
        ViscopeError: An index is outside ``range(len(dataset))``.

    Example:
        >>> from viscope.data import create
        >>> part = SubsetDataset(create("digits"), [0, 5, 7], name="mine")
        >>> len(part), part[1][1], part.indices.tolist()
        (3, 5, [0, 5, 7])
    """

    def __init__(
        self,
        dataset: Dataset,
        indices: Sequence[int] | np.ndarray,
        name: str = "subset",
        seed: int | None = None,
        fractions: dict[str, float] | None = None,
    ) -> None:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(dataset)  # type: ignore[arg-type]
        bad = idx[(idx < 0) | (idx >= n)]
        if bad.size:
            raise ViscopeError(
                f"Expected subset indices in 0..{n - 1} for a dataset of {n} items; got "
                f"{bad[:5].tolist()}. Take indices from split_indices() of the same dataset."
            )
        self.dataset = dataset
        self.indices = idx
        self.split = name
        self.seed = seed
        self.fractions = dict(fractions) if fractions is not None else None
        self.classes = list(getattr(dataset, "classes", []))
        self.has_masks = bool(getattr(dataset, "has_masks", False))
        all_targets = labels_of(dataset)
        self.targets = [int(t) for t in all_targets[idx]]

    def _item(self, index: int) -> Item:
        return self.dataset[int(self.indices[index])]

    def __repr__(self) -> str:
        return f"{self.split} subset of {len(self)} items of {self.dataset!r}"


def check_seed(seed: Any) -> int:
    """Return ``seed`` as an int, or raise unless it is a non-negative integer.

    Raises:
        ViscopeError: ``seed`` is not a non-negative integer.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ViscopeError(f"Expected seed to be a non-negative integer; got {seed!r}.")
    return int(seed)


def labels_of(dataset: Dataset | Sequence[int] | np.ndarray) -> np.ndarray:
    """The integer label of every item, from ``.targets`` when present, else by loading items.

    Args:
        dataset: A dataset (with ``.targets`` or items ``(image, label, ...)``) or the labels.

    Returns:
        int64 array of shape (len(dataset),).

    Raises:
        ViscopeError: The labels are not integers.
    """
    if isinstance(dataset, Dataset):
        targets = getattr(dataset, "targets", None)
        if targets is None:
            targets = [dataset[i][1] for i in range(len(dataset))]  # type: ignore[arg-type]
    else:
        targets = dataset
    arr = np.asarray(targets)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ViscopeError(
                f"Expected integer class labels; got dtype {arr.dtype} "
                f"(first values {arr.reshape(-1)[:3].tolist()}). Map labels to 0..K-1 first."
            )
    return arr.astype(np.int64).reshape(-1)
