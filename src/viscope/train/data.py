"""Splits, loaders and a seeded epoch sampler for training and evaluation."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from os import PathLike
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from viscope import data
from viscope.data import labels_of
from viscope.errors import ViscopeError
from viscope.train.augment import mix_seed

SPLITS = ("train", "val", "test")
DatasetArg = str | PathLike[str] | Mapping[str, Dataset]


def resolve_splits(
    dataset: DatasetArg, *, image_size: int, n: int | None, seed: int,
    skip_corrupt: bool = False,
) -> dict[str, Dataset]:
    """Return ``{"train": ..., "val": ..., "test": ...}`` for a name, a path or a dict.

    Args:
        dataset: a built-in name, a folder or CSV path (split with
            ``viscope.data.create(..., split=s, seed=seed)``), or a dict of datasets with
            ``"train"`` and ``"val"`` (and usually ``"test"``).
        image_size: image side for named/path datasets.
        n: number of items for named/path datasets (``None``: the default).
        seed: seed of generation and of the split for named/path datasets.
        skip_corrupt: skip unreadable files of a folder or CSV dataset (one warning).

    Returns:
        The splits; ``"test"`` is missing only when a dict without it was given.

    Raises:
        ViscopeError: a dict without train/val, an empty split, or any dataset error.
    """
    if isinstance(dataset, Mapping):
        unknown = sorted(set(dataset) - set(SPLITS))
        missing = [s for s in ("train", "val") if s not in dataset]
        if unknown or missing:
            raise ViscopeError(
                f"Expected a dict of datasets with keys 'train', 'val' and optionally 'test'; "
                f"got keys {sorted(dataset)}. Validation selects the checkpoint, so it must be "
                "a held-out split other than test."
            )
        splits = {s: dataset[s] for s in SPLITS if s in dataset}
    else:
        splits = {
            s: data.create(dataset, split=s, size=image_size, n=n, seed=seed,
                           skip_corrupt=skip_corrupt)
            for s in SPLITS
        }
    for name, part in splits.items():
        if len(part) == 0:  # type: ignore[arg-type]
            raise ViscopeError(
                f"Expected a non-empty {name} split; got 0 items. Use more data (n=...)."
            )
    return splits


def class_names(splits: Mapping[str, Dataset]) -> list[str]:
    """Class names shared by the splits (``.classes``, else ``"0"..."K-1"`` from the labels).

    Raises:
        ViscopeError: the splits name different classes.
    """
    named = [list(getattr(d, "classes", None) or []) for d in splits.values()]
    if named[0]:
        if any(c and c != named[0] for c in named):
            raise ViscopeError(
                f"Expected every split to have the same classes; got {named}. Build the "
                "splits from one dataset (viscope.data.create(..., split=...))."
            )
        return named[0]
    top = max(int(labels_of(d).max(initial=-1)) for d in splits.values())
    return [str(k) for k in range(top + 1)]


def split_record(part: Dataset, *, image_shape: bool = False) -> dict[str, Any]:
    """Size and SHA-256 of a split's indices (or of its labels when it has no indices),
    with ``image_shape`` also the shape of its first image (for datasets given as
    objects, whose image size is not otherwise recorded)."""
    indices = getattr(part, "indices", None)
    if indices is not None:
        arr, kind = np.asarray(indices, dtype=np.int64), "indices"
    else:
        arr, kind = labels_of(part), "labels"
    digest = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
    record = {"size": len(part), "sha256_of": kind, "sha256": digest}  # type: ignore[arg-type]
    if image_shape:
        record["image_shape"] = [int(d) for d in part[0][0].shape]
    return record


def collate(items: Sequence[tuple[Any, ...]], masks: bool = False) -> tuple[Tensor, ...]:
    """Stack ``(image, label[, mask])`` items into ``(images, labels)``, or with ``masks``
    into ``(images, labels, masks)`` (masks are dropped otherwise: stacking them costs
    time that classification does not need).

    Raises:
        ViscopeError: ``masks`` asked for items without one.
    """
    images = torch.stack([item[0] for item in items])
    labels = torch.as_tensor([int(item[1]) for item in items], dtype=torch.long)
    if not masks:
        return images, labels
    if any(len(item) < 3 for item in items):
        raise ViscopeError(
            "Expected items (image, label, mask) for an objective that reads masks; got "
            "items without a mask. Use a dataset with masks (e.g. 'shapes', or a CSV with a "
            "mask_path column)."
        )
    return images, labels, torch.stack([torch.as_tensor(item[2]) for item in items])


class EpochShuffleSampler(Sampler[int]):
    """A fresh permutation every epoch that depends only on ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` at the start of every epoch (as for a
    ``DistributedSampler``), so a run resumed at epoch ``k`` sees the same order as an
    uninterrupted one.

    Args:
        size: number of items.
        seed: base seed.

    Example:
        >>> s = EpochShuffleSampler(5, seed=0)
        >>> first = list(s); s.set_epoch(1); second = list(s); s.set_epoch(0)
        >>> sorted(first) == [0, 1, 2, 3, 4] and list(s) == first != second
        True
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = int(size)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of ``epoch`` from now on."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.size, generator=g).tolist())

    def __len__(self) -> int:
        return self.size


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle_seed: int | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    masks: bool = False,
) -> DataLoader:
    """A loader of ``(images, labels)`` batches (``(images, labels, masks)`` with ``masks``).

    Args:
        dataset: items ``(image, label[, mask])``.
        batch_size: items per batch.
        shuffle_seed: ``None`` keeps the order; an int shuffles every epoch with
            :class:`EpochShuffleSampler`.
        drop_last: drop the last incomplete batch.
        num_workers: loader worker processes.
        pin_memory: pin host memory (for CUDA).
        masks: keep the items' masks (see :func:`collate`).

    Returns:
        The loader.
    """
    sampler = None if shuffle_seed is None else EpochShuffleSampler(len(dataset), shuffle_seed)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        drop_last=drop_last,
        collate_fn=functools.partial(collate, masks=True) if masks else collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
