"""The dataset registry and :func:`create`: a built-in name, a folder or a CSV file."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from viscope.data.base import SubsetDataset, VisionDataset, check_seed
from viscope.data.density import DensityCSV, is_density_csv
from viscope.data.digits import ColorDigitsDataset, DigitsDataset
from viscope.data.faces import FacesDataset
from viscope.data.folder import ImageFolder
from viscope.data.mammo import MammoDataset
from viscope.data.retina import RetinaQuality
from viscope.data.shapes import ShapesDataset
from viscope.data.splits import SPLIT_NAMES, resolve_fractions, split_indices
from viscope.data.table import CSVDataset
from viscope.errors import ViscopeError, suggest
from viscope.registry import Registry

#: Built-in datasets: name -> ``factory(size=..., n=..., seed=..., **kw)``.
DATASETS: Registry[Callable[..., VisionDataset]] = Registry("dataset")
DATASETS.register("shapes", ShapesDataset)
DATASETS.register("digits", DigitsDataset)
DATASETS.register("color-digits", ColorDigitsDataset)
DATASETS.register("faces", FacesDataset)
DATASETS.register("mammo", MammoDataset)
DATASETS.register("retina-quality", RetinaQuality)

SPLITS = ("all", *SPLIT_NAMES)


def list_datasets() -> list[str]:
    """Names of the built-in datasets.

    Example:
        >>> list_datasets()
        ['shapes', 'digits', 'color-digits', 'faces', 'mammo', 'retina-quality']
    """
    return DATASETS.names()


def create(
    name_or_path: str | PathLike[str],
    split: str = "all",
    size: int | Sequence[int] | None = 32,
    n: int | None = None,
    seed: int = 0,
    skip_corrupt: bool = False,
    **kw: Any,
) -> VisionDataset:
    """Make a dataset from a built-in name, an image folder or a CSV file.

    Args:
        name_or_path: A name from :func:`list_datasets`, a folder laid out as
            ``root/<class>/<image>`` (:class:`ImageFolder`) or a ``.csv`` file: one whose
            header has a ``density`` column and no ``label`` column lists mammograms
            (:class:`~viscope.data.density.DensityCSV`, ``path,density[,mask_path]``),
            any other is a :class:`CSVDataset` (``path,label[,mask_path]``). A built-in
            name wins over a folder of the same name; write ``./shapes`` for the folder.
        split: ``"all"``, or ``"train"``, ``"val"`` or ``"test"`` of a stratified split
            (:func:`split_indices` with ``seed``; ``fractions=`` in ``kw`` changes the
            default 0.7/0.15/0.15, and a dict of fractions may name other splits).
        size: Image side in pixels (folders and CSV files also take ``(height, width)``
            or ``None`` to keep their files' size).
        n: Number of items: for ``shapes``, ``mammo`` and ``retina-quality`` how many to
            generate, otherwise a seeded random subset of that many (default all).
        seed: Seed of generation, of the ``n`` subset and of the split.
        skip_corrupt: For a folder or CSV file, check every file up front and skip the
            unreadable ones with one warning (for a density CSV: ``skip_invalid``).
            ``False`` is passed to no dataset, so it suits built-in names too.
        **kw: Passed on to the dataset (``cache`` for shapes; ``classes`` for mammo;
            ``skip_corrupt``, and ``root`` for CSV files; ``skip_invalid``, ``flip`` and
            ``classes`` for a density CSV).

    Returns:
        The dataset; for a split, a :class:`SubsetDataset` whose ``.indices`` index the
        full dataset and which records ``.split``, ``.seed`` and ``.fractions``.

    Raises:
        ViscopeError: Unknown name and no such path, an unknown split or option, or any
            error of the dataset itself.

    Example:
        >>> train = create("shapes", split="train", n=100)
        >>> len(train), train.classes[:2], train.has_masks
        (70, ['circle', 'square'], True)
    """
    seed = check_seed(seed)
    if skip_corrupt:
        kw["skip_corrupt"] = True
    fractions = resolve_fractions(kw.pop("fractions", (0.7, 0.15, 0.15)))
    splits = ("all", *fractions)
    if split not in splits:
        raise ViscopeError(
            f"Unknown split {split!r}.{suggest(str(split), splits)} "
            f"Expected one of: {', '.join(splits)}."
        )
    dataset = _build(name_or_path, size=size, n=n, seed=seed, **kw)
    if split == "all":
        return dataset
    parts = split_indices(dataset, fractions, seed)
    return _subset_of_subset(dataset, parts[split], split, seed, fractions)


def _build(
    name_or_path: str | PathLike[str], size: Any, n: int | None, seed: int, **kw: Any
) -> VisionDataset:
    if isinstance(name_or_path, str) and name_or_path in DATASETS:
        factory = DATASETS.get(name_or_path)
        return _call(factory, name_or_path, {"size": size, "n": n, "seed": seed}, kw)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        dataset: VisionDataset = _call(ImageFolder, str(path), {"root": path, "size": size}, kw)
    elif path.is_file() and path.suffix.lower() == ".csv" and is_density_csv(path):
        if kw.pop("skip_corrupt", False):
            kw["skip_invalid"] = True
        dataset = _call(DensityCSV, str(path), {"csv_path": path, "size": size}, kw)
    elif path.is_file() and path.suffix.lower() == ".csv":
        dataset = _call(CSVDataset, str(path), {"csv_path": path, "size": size}, kw)
    elif path.exists():
        raise ViscopeError(
            f"Expected a dataset name, a folder of images or a .csv file; got the file "
            f"'{path}'. Point to the folder that holds one sub-folder per class instead."
        )
    else:
        names = ", ".join(list_datasets())
        raise ViscopeError(
            f"Unknown dataset '{name_or_path}': not a built-in dataset ({names}) and no such "
            f"folder/CSV file.{suggest(str(name_or_path), list_datasets())} Use a built-in "
            "name, a folder laid out as root/<class>/<image>, or a CSV file with the header "
            "path,label[,mask_path]."
        )
    if n is not None:
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= len(dataset):
            raise ViscopeError(
                f"Expected n between 1 and {len(dataset)} (the items in '{path}'); got {n!r}."
            )
        keep = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:n])
        dataset = SubsetDataset(dataset, keep, name="subset", seed=seed)
    return dataset


def _call(
    factory: Callable[..., VisionDataset], label: str, fixed: dict[str, Any], kw: dict[str, Any]
) -> VisionDataset:
    """Call ``factory(**fixed, **kw)`` after checking ``kw`` against its signature (a clear
    error, not a TypeError, for an option the dataset does not take)."""
    params = inspect.signature(factory).parameters
    unknown = [k for k in kw if k not in params or k in fixed]
    if unknown:
        accepted = [p for p in params if p not in fixed]
        raise ViscopeError(
            f"Dataset '{label}' does not take the option(s) {', '.join(unknown)} here. "
            f"It takes: {', '.join(accepted) or 'no options'}."
        )
    return factory(**fixed, **kw)


def _subset_of_subset(
    dataset: VisionDataset,
    indices: np.ndarray,
    split: str,
    seed: int,
    fractions: Mapping[str, float],
) -> SubsetDataset:
    """A split of ``dataset``; if that is itself a subset, index its base dataset directly."""
    if isinstance(dataset, SubsetDataset):
        return SubsetDataset(
            dataset.dataset, dataset.indices[indices], split, seed, dict(fractions)
        )
    return SubsetDataset(dataset, indices, split, seed, dict(fractions))
