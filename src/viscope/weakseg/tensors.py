"""The pipeline's data in memory: each split's images, labels, real masks and region of
interest as tensors, and the small datasets ``fit`` trains on (a class subset with its
labels re-indexed; images with pseudo-masks).

Everything is loaded once per run; at the demo's sizes (800 images of 64 px) that is
about 40 MB. Real data at 512 px and thousands of images would want a streaming loader
(noted as a limit in the README).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from viscope.data.base import IGNORE, Item, SubsetDataset, VisionDataset
from viscope.errors import ViscopeError


@dataclass
class SplitTensors:
    """One split in memory.

    Attributes:
        images: (B, 3, H, W) float32 in [0, 1].
        labels: (B,) int64, indices into ``classes``.
        masks: (B, 1, H, W) float32 in {0, 1, IGNORE} (IGNORE: no real mask), or ``None``
            when the dataset has no masks at all.
        available: (B,) bool, which images have a real mask.
        roi: (B, 1, H, W) bool region the dataset gives (mammo's breast), or ``None``.
        classes: the dataset's class names.
        indices: (B,) the items' indices in the dataset the split was drawn from.
    """

    images: Tensor
    labels: Tensor
    masks: Tensor | None
    available: Tensor
    roi: Tensor | None
    classes: list[str]
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, keep: Tensor) -> SplitTensors:
        """The images where ``keep`` (bool (B,)) is true."""
        idx = keep.nonzero().flatten()
        return SplitTensors(
            self.images[idx], self.labels[idx],
            None if self.masks is None else self.masks[idx], self.available[idx],
            None if self.roi is None else self.roi[idx], self.classes,
            self.indices[idx.numpy()],
        )


def root_of(dataset: VisionDataset) -> tuple[VisionDataset, np.ndarray]:
    """The dataset a chain of :class:`SubsetDataset` was drawn from, and the indices of
    ``dataset``'s items in it."""
    indices = np.arange(len(dataset))
    while isinstance(dataset, SubsetDataset):
        indices = dataset.indices[indices]
        dataset = dataset.dataset  # type: ignore[assignment]
    return dataset, indices


def load_split(dataset: VisionDataset) -> SplitTensors:
    """Read every item of ``dataset`` into tensors (see :class:`SplitTensors`).

    The given region of interest is the root dataset's ``breast_masks(indices)`` when it
    has one; which images have a real mask, its ``mask_available`` (default: all, when
    the dataset has masks).
    """
    root, indices = root_of(dataset)
    items = [dataset[i] for i in range(len(dataset))]
    if not items:
        raise ViscopeError("Expected a non-empty split; got 0 items. Use more data (data.n).")
    images = torch.stack([it[0] for it in items]).float()
    labels = torch.tensor([int(it[1]) for it in items], dtype=torch.long)
    masks = None
    available = torch.zeros(len(items), dtype=torch.bool)
    if getattr(dataset, "has_masks", False) and len(items[0]) > 2:
        masks = torch.stack([it[2] for it in items]).float()
        flags = getattr(root, "mask_available", None)
        available = (torch.as_tensor(np.asarray(flags, dtype=bool)[indices])
                     if flags is not None else torch.ones(len(items), dtype=torch.bool))
        masks[~available] = IGNORE
    roi = None
    if hasattr(root, "breast_masks"):
        roi = torch.as_tensor(root.breast_masks(indices)).float() > 0.5
    return SplitTensors(images, labels, masks, available, roi, list(dataset.classes), indices)


class TensorDataset(VisionDataset):
    """Items ``(image, label[, mask])`` from tensors, for ``fit``.

    Args:
        images: (B, C, H, W).
        labels: (B,) class indices into ``classes``.
        classes: class names.
        masks: (B, 1, H, W) in {0, 1, IGNORE}, or ``None``.
    """

    def __init__(self, images: Tensor, labels: Tensor, classes: Sequence[str],
                 masks: Tensor | None = None) -> None:
        self.images, self.labels, self.masks = images, labels.long(), masks
        self.classes = list(classes)
        self.has_masks = masks is not None
        self.targets = [int(t) for t in labels]

    def _item(self, index: int) -> Item:
        if self.masks is None:
            return self.images[index], self.targets[index]
        return self.images[index], self.targets[index], self.masks[index]


def class_subset(split: SplitTensors, names: Sequence[str] | None) -> TensorDataset:
    """The images of classes ``names`` (all when ``None``), labels re-indexed in that
    order: the classifier's training data (mammograms: A → 0, D → 1).

    Raises:
        ViscopeError: a name the dataset does not have, or fewer than two classes.
    """
    names = list(split.classes if names is None else names)
    unknown = [c for c in names if c not in split.classes]
    if unknown:
        raise ViscopeError(
            f"Expected classifier classes among the dataset's {split.classes}; got {unknown}. "
            "Set classifier.classes to names the dataset has (e.g. [A, D])."
        )
    if len(names) < 2:
        raise ViscopeError(f"Expected at least two classifier classes; got {names}.")
    old = torch.tensor([split.classes.index(c) for c in names])
    keep = (split.labels[:, None] == old[None]).any(1)
    new = (split.labels[keep][:, None] == old[None]).float().argmax(1)
    return TensorDataset(split.images[keep], new, names)
