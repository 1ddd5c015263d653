"""The ``faces`` dataset against scikit-image's own ``lfw_subset`` array."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.data import lfw_subset

from viscope.data import create
from viscope.data.faces import FacesDataset
from viscope.errors import ViscopeError


@pytest.fixture(scope="module")
def faces() -> FacesDataset:
    return FacesDataset()


def test_count_labels_and_classes(faces: FacesDataset) -> None:
    assert len(faces) == 200
    assert faces.classes == ["non-face", "face"]
    assert faces.targets == [1] * 100 + [0] * 100  # lfw_subset: faces first
    assert sum(faces.targets) == 100
    assert not faces.has_masks
    assert len(faces[0]) == 2 and faces[0][1] == 1 and faces[199][1] == 0


def test_images_are_grey_rgb_bilinear_upsamples(faces: FacesDataset) -> None:
    images = torch.stack([faces[i][0] for i in range(200)])
    assert images.shape == (200, 3, 32, 32) and images.dtype == torch.float32
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0.05
    source = torch.from_numpy(np.asarray(lfw_subset(), dtype=np.float32))[:, None]
    if source.max() > 1:
        source = source / 255
    expected = F.interpolate(source, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(images[:, :1], expected.clamp(0, 1))


def test_size_subset_and_determinism() -> None:
    small = FacesDataset(size=16, n=50, seed=3)
    again = FacesDataset(size=16, n=50, seed=3)
    other = FacesDataset(size=16, n=50, seed=4)
    assert len(small) == 50 and small[0][0].shape == (3, 16, 16)
    assert np.array_equal(small.source_indices, again.source_indices)
    assert torch.equal(small[7][0], again[7][0])
    assert not np.array_equal(small.source_indices, other.source_indices)
    assert small.targets == [int(i < 100) for i in small.source_indices]


def test_registered_with_balanced_deterministic_splits() -> None:
    train = create("faces", split="train", seed=0)
    val = create("faces", split="val", seed=0)
    test = create("faces", split="test", seed=0)
    assert (len(train), len(val), len(test)) == (140, 30, 30)
    for part in (train, val, test):
        assert sum(part.targets) * 2 == len(part)  # stratified: half faces
    assert not set(train.indices) & set(test.indices)
    assert np.array_equal(train.indices, create("faces", split="train", seed=0).indices)


@pytest.mark.parametrize("kw", [{"size": 4}, {"size": 32.0}, {"n": 0}, {"n": 201}])
def test_bad_arguments(kw: dict) -> None:
    with pytest.raises(ViscopeError, match="faces"):
        FacesDataset(**kw)
