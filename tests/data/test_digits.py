"""The ``digits`` dataset against scikit-learn's own arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.transform import resize
from sklearn.datasets import load_digits

from viscope.data import DigitsDataset
from viscope.errors import ViscopeError


@pytest.fixture(scope="module")
def digits() -> DigitsDataset:
    return DigitsDataset()


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, np.ndarray]:
    bunch = load_digits()
    return bunch.images, bunch.target


def test_count_labels_and_classes(digits: DigitsDataset, reference: tuple) -> None:
    _, target = reference
    assert len(digits) == 1797
    assert digits.targets == target.tolist()
    assert [digits[i][1] for i in (0, 1, 500, 1796)] == target[[0, 1, 500, 1796]].tolist()
    assert digits.classes == [str(d) for d in range(10)]
    assert not digits.has_masks
    assert len(digits[0]) == 2


def test_images_are_grey_rgb_in_unit_range(digits: DigitsDataset) -> None:
    images = torch.stack([digits[i][0] for i in range(0, 1797, 7)])
    assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.float32
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    assert images.min() >= 0 and images.max() <= 1
    assert images.max() > 0.9  # 16/16 strokes reach (nearly) white


def test_upsampling_matches_skimage_bilinear(digits: DigitsDataset, reference: tuple) -> None:
    images, _ = reference
    for i in (0, 10, 1000):
        ref = resize(images[i] / 16, (32, 32), order=1, mode="edge", anti_aliasing=False)
        assert np.abs(digits[i][0][0].numpy() - ref).max() < 1e-5


def test_size_and_seeded_subset(reference: tuple) -> None:
    images, target = reference
    small = DigitsDataset(size=16, n=100, seed=3)
    again = DigitsDataset(size=16, n=100, seed=3)
    other = DigitsDataset(size=16, n=100, seed=4)
    assert small[0][0].shape == (3, 16, 16)
    assert len(small) == 100
    assert np.array_equal(small.source_indices, again.source_indices)
    assert not np.array_equal(small.source_indices, other.source_indices)
    assert small.targets == target[small.source_indices].tolist()
    i = int(small.source_indices[5])
    ref = resize(images[i] / 16, (16, 16), order=1, mode="edge", anti_aliasing=False)
    assert np.abs(small[5][0][0].numpy() - ref).max() < 1e-5


@pytest.mark.parametrize("kw", [{"size": 2}, {"n": 0}, {"n": 5000}])
def test_bad_arguments_raise_viscope_error(kw: dict) -> None:
    with pytest.raises(ViscopeError, match="Expected digits"):
        DigitsDataset(**kw)
