"""Stratified, seeded splits and the subsets ``create(split=...)`` returns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from viscope.data import SubsetDataset, create, labels_of, split_indices
from viscope.errors import ViscopeError

LABEL_SETS = {
    "balanced": np.arange(600) % 5,
    "unbalanced": np.repeat(np.arange(4), [3, 40, 101, 7]),
    "digits": create("digits").targets,
    "tiny": np.array([0, 1, 1, 2, 2, 2]),
}


@pytest.mark.parametrize("name", LABEL_SETS)
@pytest.mark.parametrize("fractions", [(0.7, 0.15, 0.15), (0.5, 0.5, 0.0), (0.6, 0.3, 0.1)])
def test_disjoint_complete_and_stratified(name: str, fractions: tuple) -> None:
    labels = np.asarray(LABEL_SETS[name])
    parts = split_indices(labels, fractions, seed=2)
    assert list(parts) == ["train", "val", "test"]
    joined = np.concatenate(list(parts.values()))
    assert np.array_equal(np.sort(joined), np.arange(len(labels)))  # disjoint and complete
    for f, idx in zip(fractions, parts.values(), strict=True):
        assert idx.dtype == np.int64
        assert abs(len(idx) - f * len(labels)) < 1.5
        for c in np.unique(labels):
            n_c = (labels == c).sum()
            assert abs((labels[idx] == c).sum() - f * n_c) < 1, (name, c)


def test_deterministic_per_seed() -> None:
    labels = LABEL_SETS["digits"]
    a, b = split_indices(labels, seed=5), split_indices(labels, seed=5)
    c = split_indices(labels, seed=6)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])


def test_named_fractions_and_dataset_input() -> None:
    ds = create("shapes", n=100)
    parts = split_indices(ds, {"fit": 0.8, "holdout": 0.2}, seed=0)
    assert {k: len(v) for k, v in parts.items()} == {"fit": 80, "holdout": 20}
    assert np.array_equal(labels_of(ds), np.arange(100) % 5)


@pytest.mark.parametrize(
    "fractions, match",
    [((0.5, 0.5), "3 split fractions"), ((0.7, 0.2, 0.2), "sum to 1"), ((1.2, -0.1, -0.1), "non")],
)
def test_bad_fractions(fractions: tuple, match: str) -> None:
    with pytest.raises(ViscopeError, match=match):
        split_indices([0, 1, 2], fractions)


def test_non_integer_labels_are_refused() -> None:
    with pytest.raises(ViscopeError, match="integer class labels"):
        split_indices(np.array([0.5, 1.0]))


def test_create_split_returns_a_recorded_subset() -> None:
    full = create("shapes", n=200, seed=1)
    parts = split_indices(full, seed=1)
    sizes = 0
    for name in ("train", "val", "test"):
        part = create("shapes", split=name, n=200, seed=1)
        assert isinstance(part, SubsetDataset)
        assert np.array_equal(part.indices, parts[name])
        assert part.split == name and part.seed == 1
        assert part.fractions == {"train": 0.7, "val": 0.15, "test": 0.15}
        assert part.classes == full.classes and part.has_masks
        assert part.targets == [full.targets[i] for i in part.indices]
        i = int(part.indices[3])
        assert torch.equal(part[3][0], full[i][0]) and part[3][1] == full[i][1]
        sizes += len(part)
    assert sizes == len(full)


def test_create_split_with_custom_fractions() -> None:
    part = create("digits", split="val", fractions=(0.5, 0.25, 0.25))
    assert abs(len(part) - 1797 / 4) < 2
    assert not part.has_masks and part.classes[0] == "0"


def test_unknown_split() -> None:
    with pytest.raises(ViscopeError, match="Unknown split 'trian'.*'train'"):
        create("digits", split="trian")


def test_subset_rejects_bad_indices() -> None:
    with pytest.raises(ViscopeError, match="Expected subset indices in 0..99"):
        SubsetDataset(create("shapes", n=100), [0, 100])


def test_a_class_never_gets_more_than_the_ceiling_of_its_share() -> None:
    # Class 1 has 2 items and train's share of it is exactly 1: it must not get both.
    labels = np.array([0, 0, 0, 1, 1])
    parts = split_indices(labels, (0.5, 0.25, 0.25), seed=0)
    assert (labels[parts["train"]] == 1).sum() == 1
    rng = np.random.default_rng(0)
    for _ in range(300):
        counts = rng.integers(1, 12, size=int(rng.integers(1, 6)))
        labels = np.repeat(np.arange(len(counts)), counts)
        f = np.round(rng.dirichlet(np.ones(3)), 2)
        fractions = (f[0], f[1], 1 - f[0] - f[1])
        if fractions[2] < 0:
            continue
        parts = split_indices(labels, fractions, seed=int(rng.integers(100)))
        for share, idx in zip(fractions, parts.values(), strict=True):
            assert abs(len(idx) - share * len(labels)) < 1.5
            for c, n_c in enumerate(counts):
                got = (labels[idx] == c).sum()
                assert np.floor(n_c * share + 1e-9) <= got <= np.ceil(n_c * share - 1e-9)
