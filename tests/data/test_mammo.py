"""The ``mammo`` dataset: determinism, geometry and density bands against known answers,
the weakness of mean brightness as a cue, class subsets, errors and speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from viscope import data
from viscope.data.density import breast_side
from viscope.data.mammo import BANDS, BIRADS, MammoDataset, render, sample_params
from viscope.errors import ViscopeError

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def mammo() -> MammoDataset:
    return MammoDataset(n=400, size=64, seed=0)


@pytest.fixture(scope="module")
def arrays(mammo: MammoDataset) -> Arrays:
    return _arrays(mammo)


def _arrays(ds: MammoDataset) -> Arrays:
    """Greyscale images, dense masks, breast masks (N, H, W) and labels, read item by item."""
    items = [ds[i] for i in range(len(ds))]
    images = np.stack([it[0].numpy() for it in items])
    assert np.array_equal(images[:, 0], images[:, 1]) and np.array_equal(images[:, 0], images[:, 2])
    dense = np.stack([it[2][0].numpy() for it in items])
    breast = ds.breast_masks(range(len(ds)))[:, 0].numpy()
    return images[:, 0], dense, breast, np.array([it[1] for it in items])


def test_items_types_and_protocol(mammo: MammoDataset) -> None:
    image, label, mask = mammo[5]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert mask.shape == (1, 64, 64) and mask.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}
    assert mammo.classes == ["A", "B", "C", "D"] and mammo.has_masks
    assert label == mammo.targets[5] == 5 % 4
    assert np.bincount(mammo.targets).tolist() == [100] * 4
    breast = mammo.breast_mask(5)
    assert breast.shape == (1, 64, 64) and breast.dtype == torch.float32


def test_same_seed_same_pixels_and_item_alone_equals_item_in_batch(mammo: MammoDataset) -> None:
    small = MammoDataset(n=13, size=64, seed=0)
    lazy = MammoDataset(n=400, size=64, seed=0, cache=False)
    for i in (0, 7, 12):
        for ds in (small, lazy):
            assert torch.equal(ds[i][0], mammo[i][0]) and torch.equal(ds[i][2], mammo[i][2])
            assert torch.equal(ds.breast_mask(i), mammo.breast_mask(i))
    assert torch.equal(lazy[399][0], mammo[399][0])
    # render one item alone and inside a batch of others, in another order
    params = [sample_params(0, i) for i in (3, 1, 2)]
    alone = render(params[:1], 64)
    batch = render(params, 64)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(alone, batch, strict=True))
    other = MammoDataset(n=13, size=64, seed=1)
    assert (other[0][0] - small[0][0]).abs().mean() > 0.02


def test_dense_fraction_lies_in_the_class_band(mammo: MammoDataset, arrays: Arrays) -> None:
    _, dense, breast, labels = arrays
    measured = dense.sum((1, 2)) / breast.sum((1, 2))  # brute force: pixel counts
    for k, name in enumerate(mammo.classes):
        lo, hi = BANDS[name]
        part = measured[labels == k]
        assert part.size == 100
        assert part.min() >= lo - 0.01 and part.max() <= hi + 0.01
        b_lo, b_hi = BIRADS[name]
        assert part.min() > b_lo + 0.03 and part.max() < b_hi - 0.03  # never ambiguous
    given = np.array([mammo.dense_fraction(i) for i in range(len(mammo))])
    np.testing.assert_allclose(given, measured, atol=1e-6)
    drawn = np.array([mammo.params(i).dense_fraction for i in range(len(mammo))])
    # the rendered fraction misses the drawn one by at most half a pixel of the breast
    assert np.all(np.abs(measured - drawn) <= 0.5 / breast.sum((1, 2)) + 1e-9)


def test_masks_and_geometry(arrays: Arrays) -> None:
    images, dense, breast, _ = arrays
    assert np.all(dense <= breast)  # dense tissue only inside the breast
    assert breast.sum((1, 2)).min() > 0.2 * 64 * 64
    w = images.shape[-1]
    # the breast lies against the LEFT edge: it reaches column 0, not the last column,
    # and the left half holds most of it; the flip rule of real data agrees
    assert np.all(breast[:, :, 0].sum(1) > 10)
    assert np.all(breast[:, :, -1].sum(1) == 0)
    assert np.all(breast[:, :, : w // 2].sum((1, 2)) > 2 * breast[:, :, w // 2 :].sum((1, 2)))
    assert all(breast_side(torch.from_numpy(im)[None]) == "left" for im in images)
    # pectoral muscle: the top-left pixel is outside the breast mask and bright
    assert not breast[:, 0, 0].any()
    tissue_mean = (images * breast).sum((1, 2)) / breast.sum((1, 2))
    assert np.all(images[:, 1, 1] > tissue_mean - 0.1)
    # dark background: the top-right corner (8x8, outside every breast)
    corner = images[:, :8, -8:].mean((1, 2))
    assert corner.max() < 0.1 and np.all(corner < tissue_mean - 0.25)


def test_dense_tissue_is_brighter_than_fat(arrays: Arrays) -> None:
    images, dense, breast, _ = arrays
    fat = (breast > 0) & (dense == 0)
    for im, d, f in zip(images, dense > 0, fat, strict=True):
        assert im[d].mean() > im[f].mean() + 0.1


def test_mean_brightness_barely_separates_a_from_d() -> None:
    """Exposure is set per image; the best threshold on the mean breast intensity (chosen
    on the very images it is scored on, so an upper bound for any 1-D rule) stays well
    below 1, while the dense fraction separates A and D perfectly."""
    ds = MammoDataset(n=400, size=64, seed=2, classes=("A", "D"))
    images, dense, breast, labels = _arrays(ds)
    mean = (images * breast).sum((1, 2)) / breast.sum((1, 2))

    def best_threshold_accuracy(x: np.ndarray) -> float:
        return max(
            max(np.mean((x > t) == labels), np.mean((x <= t) == labels)) for t in np.unique(x)
        )

    acc = best_threshold_accuracy(mean)
    assert acc <= 0.7, acc  # measured 0.55 (seed 2, 400 images)
    assert best_threshold_accuracy(dense.sum((1, 2)) / breast.sum((1, 2))) == 1.0


def test_class_subset_is_reindexed() -> None:
    ds = MammoDataset(n=40, size=64, seed=0, classes=("A", "D"))
    assert ds.classes == ["A", "D"] and set(ds.targets) == {0, 1}
    assert np.bincount(ds.targets).tolist() == [20, 20]
    fractions = np.array([ds.dense_fraction(i) for i in range(40)])
    labels = np.array(ds.targets)
    assert np.all(fractions[labels == 0] < 0.25) and np.all(fractions[labels == 1] > 0.75)
    flipped = MammoDataset(n=4, size=64, seed=0, classes=("d", "a"))
    assert flipped.classes == ["D", "A"] and flipped.dense_fraction(0) > 0.75
    assert MammoDataset(n=4, size=64, classes="AD").classes == ["A", "D"]


def test_create_and_stratified_split() -> None:
    train = data.create("mammo", split="train", n=200, size=64, seed=0)
    assert isinstance(train.dataset, MammoDataset) and train.dataset.size == 64
    assert np.bincount(train.targets).tolist() == [35, 35, 35, 35]
    roi = train.dataset.breast_masks(train.indices[:4])
    assert roi.shape == (4, 1, 64, 64)
    assert torch.equal(roi[1], train.dataset.breast_mask(int(train.indices[1])))
    two = data.create("mammo", n=20, size=64, classes=["A", "D"])
    assert two.classes == ["A", "D"]
    assert len(data.create("mammo", size=32)) == 800  # the default n, at create's default size


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seed": -1}, "seed to be a non-negative integer"),
        ({"size": 4}, "size to be an int >= 8"),
        ({"size": 64.0}, "size to be an int >= 8"),
        ({"size": None}, "size to be an int >= 8"),
        ({"n": 0}, "n to be a positive int"),
        ({"classes": ("A", "E")}, "distinct names among A, B, C, D"),
        ({"classes": ("A", "A")}, "distinct names among A, B, C, D"),
        ({"classes": ()}, "distinct names among A, B, C, D"),
        ({"noise": -0.1}, "noise in"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ViscopeError, match=match):
        MammoDataset(**{"n": 4, "size": 64, **kwargs})


def test_render_1000_images_at_64px_under_2s() -> None:
    """Measured 0.4 to 1.5 s on 2 shared CPU cores; the minimum of up to 3 runs counts."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        MammoDataset(n=1000, size=64, seed=0)
        best = min(best, time.perf_counter() - start)
        if best < 2.0:
            break
    assert best < 2.0
