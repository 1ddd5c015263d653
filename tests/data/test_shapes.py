"""The ``shapes`` dataset: determinism, geometry against known answers, colours, speed."""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pytest
import torch
from skimage.draw import disk, polygon
from torch.utils.data import DataLoader

from viscope.data import SHAPES, UNIT_AREA, ShapesDataset, render, sample_params
from viscope.errors import ViscopeError


@pytest.fixture(scope="module")
def shapes() -> ShapesDataset:
    return ShapesDataset(size=32, n=2000, seed=0)


@pytest.fixture(scope="module")
def shapes64() -> ShapesDataset:
    return ShapesDataset(size=64, n=300, seed=3)


def _stack(ds: ShapesDataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    items = [ds[i] for i in range(n)]
    return torch.stack([it[0] for it in items]), torch.stack([it[2] for it in items])


def test_default_size_count_and_item_types(shapes: ShapesDataset) -> None:
    image, label, mask = shapes[7]
    assert len(shapes) == 2000
    assert shapes.classes == list(SHAPES) and len(SHAPES) == 5
    assert shapes.has_masks
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert mask.shape == (1, 32, 32) and mask.dtype == torch.float32
    assert isinstance(label, int) and label == 7 % 5


def test_same_seed_same_tensors_other_seed_different() -> None:
    a, b, c = (ShapesDataset(n=40, seed=s) for s in (0, 0, 1))
    ia, ma = _stack(a, 40)
    ib, mb = _stack(b, 40)
    ic, mc = _stack(c, 40)
    assert torch.equal(ia, ib) and torch.equal(ma, mb)
    assert not torch.equal(ia, ic)
    assert (ia - ic).abs().mean() > 0.05
    assert not torch.equal(ma, mc)


def test_item_does_not_depend_on_the_rest_of_the_set(shapes: ShapesDataset) -> None:
    small = ShapesDataset(n=12, seed=0)
    lazy = ShapesDataset(n=2000, seed=0, cache=False)
    for i in (0, 5, 11):
        assert torch.equal(small[i][0], shapes[i][0]) and torch.equal(small[i][2], shapes[i][2])
    for i in (0, 999, 1998):
        alone_img, alone_mask = render([sample_params(0, i, 32)], 32)
        assert torch.equal(alone_img[0], shapes[i][0])
        assert torch.equal(alone_mask[0], shapes[i][2])
        assert torch.equal(lazy[i][0], shapes[i][0])
    assert torch.equal(shapes[-1][0], shapes[1999][0])


def test_items_are_copies_of_the_cache(shapes: ShapesDataset) -> None:
    image = shapes[3][0]
    image.zero_()
    assert shapes[3][0].abs().sum() > 0


def test_ranges_and_binary_masks(shapes: ShapesDataset) -> None:
    images, masks = _stack(shapes, 400)
    assert images.min() >= 0 and images.max() <= 1
    assert images.std() > 0.1
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    area = masks.sum(dim=(1, 2, 3))
    assert area.min() >= 20  # never empty, never a speck
    assert area.max() < 0.6 * 32 * 32


def test_balanced_labels(shapes: ShapesDataset) -> None:
    for ds in (shapes, ShapesDataset(n=37)):
        counts = np.bincount(ds.targets, minlength=5)
        assert counts.max() - counts.min() <= 1
        assert [ds[i][1] for i in range(10)] == ds.targets[:10]


@pytest.mark.parametrize("size", [32, 64])
def test_mask_area_matches_the_shape(size: int) -> None:
    ds = ShapesDataset(size=size, n=250, seed=1)
    tolerance = 0.15 if size == 32 else 0.07
    for i in range(len(ds)):
        p = ds.params(i)
        expected = UNIT_AREA[p.shape] * p.radius**2
        assert abs(ds[i][2].sum().item() / expected - 1) < tolerance, (i, p.shape)


def test_shapes_lie_wholly_inside_the_image(shapes64: ShapesDataset) -> None:
    for i in range(len(shapes64)):
        p = shapes64.params(i)
        assert p.radius <= p.centre_x <= 64 - p.radius
        assert p.radius <= p.centre_y <= 64 - p.radius
        corners = p.vertices()
        if corners is not None:
            assert corners.min() >= -1e-9 and corners.max() <= 64 + 1e-9


@pytest.mark.parametrize("shape", SHAPES)
def test_masks_match_skimage_rasterisation(shape: str) -> None:
    label = SHAPES.index(shape)
    size = 64
    for i in range(label, 60, 5):
        p = sample_params(4, i, size)
        assert p.shape == shape
        ours = render([p], size)[1][0, 0].numpy().astype(bool)
        ref = np.zeros((size, size), dtype=bool)
        # skimage puts pixel centres at integers; ours are at j + 0.5.
        if shape == "circle":
            rr, cc = disk((p.centre_y - 0.5, p.centre_x - 0.5), p.radius, shape=ref.shape)
        else:
            xy = p.vertices()
            rr, cc = polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=ref.shape)
        ref[rr, cc] = True
        iou = (ours & ref).sum() / (ours | ref).sum()
        assert iou > 0.93, (shape, i, iou)


def test_unrotated_square_is_an_axis_aligned_block() -> None:
    p = dataclasses.replace(sample_params(0, 1, 64), angle_radians=0.0)
    assert p.shape == "square"
    mask = render([p], 64)[1][0, 0].numpy().astype(bool)
    rows, cols = mask.any(axis=1), mask.any(axis=0)
    assert np.array_equal(mask, rows[:, None] & cols[None, :])
    side = p.radius * math.sqrt(2)
    assert abs(rows.sum() - side) <= 1 and abs(cols.sum() - side) <= 1


def test_foreground_stands_out_from_a_textured_background(shapes: ShapesDataset) -> None:
    background_std = []
    for i in range(300):
        image, _, mask = shapes[i]
        fg, bg = image[:, mask[0] == 1], image[:, mask[0] == 0]
        assert (fg.mean(dim=1) - bg.mean(dim=1)).norm() > 0.2, i
        background_std.append(bg.std(dim=1).mean().item())
    # Pixel noise alone gives 0.02; the texture adds clearly more.
    assert np.median(background_std) > 0.04
    assert np.min(background_std) > 0.022


def test_size_64_and_dataloader_collation(shapes64: ShapesDataset) -> None:
    images, labels, masks = next(iter(DataLoader(shapes64, batch_size=8)))
    assert images.shape == (8, 3, 64, 64) and masks.shape == (8, 1, 64, 64)
    assert labels.tolist() == [i % 5 for i in range(8)]


def test_generation_time() -> None:
    start = time.perf_counter()
    ShapesDataset(size=32, n=2000, seed=11)
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("kw", [{"size": 4}, {"size": 32.0}, {"n": 0}, {"n": 2.5}])
def test_bad_arguments_raise_viscope_error(kw: dict) -> None:
    with pytest.raises(ViscopeError, match="Expected shapes"):
        ShapesDataset(**kw)


def test_out_of_range_index_raises_index_error(shapes: ShapesDataset) -> None:
    with pytest.raises(IndexError):
        shapes[2000]
    assert len(list(iter(ShapesDataset(n=3)))) == 3


def test_float32_whatever_the_default_dtype() -> None:
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        cached, lazy = ShapesDataset(n=3), ShapesDataset(n=3, cache=False)
    finally:
        torch.set_default_dtype(before)
    for ds in (cached, lazy):
        assert ds[1][0].dtype == torch.float32 and ds[1][2].dtype == torch.float32
    assert torch.equal(cached[1][0], lazy[1][0])
