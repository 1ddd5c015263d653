"""Thresholds per image against scikit-image's Otsu and NumPy's percentile, the ignored
band, and the sweep against a loop of Dice over thresholded masks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from skimage.filters import threshold_otsu

from viscope.data.base import IGNORE
from viscope.errors import ViscopeError
from viscope.evaluate.segmentation import dice, iou
from viscope.weakseg import thresholds as T


def _maps(b=5, h=20, w=16, seed=0, dtype=torch.float64):
    """Bimodal maps of varied shapes (and one nearly uniform), in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    fore = torch.rand(b, h, w, generator=g) < torch.linspace(0.1, 0.6, b)[:, None, None]
    noise = torch.rand(b, h, w, generator=g, dtype=torch.float64)
    maps = torch.where(fore, 0.6 + 0.4 * noise, 0.5 * noise ** 2)
    maps[-1] = torch.rand(h, w, generator=g, dtype=torch.float64)
    return maps.to(dtype)


def _roi(maps, seed=1):
    g = torch.Generator().manual_seed(seed)
    roi = torch.rand(maps.shape, generator=g) < 0.8
    roi[:, :, :2] = False  # a margin outside every region
    return roi[:, None]


def test_otsu_equals_skimage_per_image_inside_the_roi(device):
    maps, roi = _maps(), _roi(_maps())
    got = T.otsu_thresholds(maps.to(device), roi.to(device)).cpu()
    for i in range(len(maps)):
        want = threshold_otsu(maps[i][roi[i, 0]].numpy())
        assert got[i].item() == pytest.approx(want, abs=1e-12), i
    masks = T.threshold(maps.to(device), "otsu", roi=roi.to(device)).cpu()
    for i in range(len(maps)):
        want = (maps[i].numpy() > threshold_otsu(maps[i][roi[i, 0]].numpy())) & roi[i, 0].numpy()
        assert np.array_equal(masks[i, 0].numpy(), want), i


def test_otsu_on_float32_maps_equals_skimage_on_their_float64_values():
    maps = _maps(seed=4, dtype=torch.float32)
    got = T.otsu_thresholds(maps)
    want = [threshold_otsu(m.double().numpy()) for m in maps]
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)


def test_otsu_constant_and_empty_rows():
    maps = torch.rand(3, 6, 6, dtype=torch.float64)
    maps[1] = 0.25
    roi = torch.ones(3, 1, 6, 6, dtype=torch.bool)
    roi[2] = False
    cut = T.otsu_thresholds(maps, roi)
    assert cut[1] == threshold_otsu(maps[1].numpy()) == 0.25  # skimage returns the value
    assert cut[2] == float("inf")
    masks = T.threshold(maps, "otsu", roi=roi)
    assert not masks[1].any() and not masks[2].any()  # nothing above a constant, no region


@pytest.mark.parametrize("q", [0.0, 12.5, 50.0, 73.3, 100.0])
def test_percentile_equals_numpy_per_image_inside_the_roi(device, q):
    maps = _maps(seed=2)
    roi = _roi(maps, seed=3)
    got = T.percentile_thresholds(maps.to(device), q, roi.to(device)).cpu()
    masks = T.threshold(maps.to(device), "percentile", q, roi=roi.to(device)).cpu()
    for i in range(len(maps)):
        inside = maps[i][roi[i, 0]].numpy()
        want = np.percentile(inside, q)
        assert got[i].item() == want, i  # the same arithmetic, to the bit
        assert np.array_equal(masks[i, 0].numpy(), (maps[i].numpy() >= want) & roi[i, 0].numpy())


def test_percentile_of_an_empty_roi_is_an_empty_mask():
    roi = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    assert not T.threshold(torch.rand(1, 4, 4), "percentile", 50, roi=roi).any()


def test_fixed_threshold_known_answer_and_roi(device):
    maps = torch.tensor([[[0.1, 0.5], [0.7, 0.9]], [[0.5, 0.49], [1.0, 0.0]]], device=device)
    roi = torch.tensor([[[1, 1], [0, 1]], [[1, 1], [1, 1]]], device=device)  # {0, 1} numbers
    out = T.threshold(maps, "fixed", 0.5, roi=roi)
    assert out.shape == (2, 1, 2, 2) and out.dtype == torch.bool
    assert out.cpu().flatten().tolist() == [False, True, False, True, True, False, True, False]
    assert T.threshold(maps[:, None], "fixed", 0.0).all()  # (B, 1, H, W) maps too


def test_confident_band_known_answer(device):
    maps = torch.tensor([[[0.0, 0.2, 0.3, 0.5], [0.7, 0.8, 0.95, 1.0]]], device=device)
    roi = torch.ones(1, 1, 2, 4, dtype=torch.bool, device=device)
    roi[..., 1, 3] = False
    out = T.confident(maps, 0.2, 0.8, roi=roi).cpu()
    want = [[0.0, 0.0, IGNORE, IGNORE], [IGNORE, 1.0, 1.0, 0.0]]  # last pixel outside ROI
    assert out.dtype == torch.float32 and out[0, 0].tolist() == want
    # a band past [0, 1]: nothing is confidently background inside the region
    wide = T.confident(maps, -0.1, 0.9).cpu()[0, 0]
    assert (wide[maps.cpu()[0] < 0.9] == IGNORE).all() and (wide[maps.cpu()[0] >= 0.9] == 1).all()


def _true_masks(maps, seed=5):
    g = torch.Generator().manual_seed(seed)
    true = (maps + 0.3 * torch.rand(maps.shape, generator=g, dtype=maps.dtype) > 0.6).float()
    true[:, :, 5:7] = IGNORE
    true[0] = 0.0  # an image whose object is absent
    true[0, :, 5:7] = IGNORE
    return true[:, None]


def test_sweep_equals_dice_of_each_thresholded_mask(device):
    maps = _maps(seed=6, dtype=torch.float32)
    roi, true = _roi(maps, seed=7), _true_masks(maps)
    ts = [0.0, 0.1, 0.25, 0.3, 0.5, 0.55, 0.9, 1.0]
    table = T.sweep(maps.to(device), true.to(device), ts, roi=roi.to(device))
    assert list(table.columns) == ["threshold", "dice_mean", "dice_std", "iou_mean"]
    assert table["threshold"].tolist() == ts
    for row, t in zip(table.itertuples(), ts, strict=True):
        pred = T.threshold(maps, "fixed", t, roi=roi)
        d, j = dice(pred, true).double().numpy(), iou(pred, true).double().numpy()
        assert row.dice_mean == pytest.approx(d.mean(), abs=1e-6)
        assert row.dice_std == pytest.approx(d.std(ddof=0), abs=1e-6)
        assert row.iou_mean == pytest.approx(j.mean(), abs=1e-6)
    assert table["dice_mean"].nunique() > 3  # the thresholds do differ


def test_sweep_at_map_values_counts_ties_as_foreground():
    """A threshold equal to a map value includes that pixel (map >= t), as threshold()."""
    maps = torch.tensor([[[0.2, 0.4], [0.6, 0.8]]])
    true = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    table = T.sweep(maps, true, [0.4, 0.41])
    assert table["dice_mean"].tolist() == pytest.approx([1.0, 2 * 2 / (2 * 2 + 1)])


def test_best_threshold_max_dice_ties_to_the_lower():
    table = pd.DataFrame({"threshold": [0.5, 0.2, 0.3, 0.1],
                          "dice_mean": [0.8, 0.8, 0.6, 0.7]})
    assert T.best_threshold(table) == 0.2
    with pytest.raises(ViscopeError, match="at least one scored threshold"):
        T.best_threshold(table.iloc[:0])
    with pytest.raises(ViscopeError, match="table of viscope.weakseg.sweep"):
        T.best_threshold(pd.DataFrame({"t": [0.1]}))


MAPS = torch.rand(2, 4, 4)


@pytest.mark.parametrize("call, match", [
    (lambda: T.threshold(MAPS, "otsuu"), "Did you mean 'otsu'"),
    (lambda: T.threshold(MAPS, "fixed"), "Expected a value"),
    (lambda: T.threshold(MAPS, "fixed", 1.5), r"in \[0, 1\]"),
    (lambda: T.threshold(MAPS, "fixed", -0.1), r"in \[0, 1\]"),
    (lambda: T.threshold(MAPS, "percentile", 101), r"percentile in \[0, 100\]"),
    (lambda: T.threshold(MAPS, "otsu", 0.5), "takes no value"),
    (lambda: T.threshold(torch.full((2, 4, 4), float("nan")), "fixed", 0.5), r"maps \[0, 1\]"),
    (lambda: T.threshold(torch.rand(4, 4), "fixed", 0.5), "map\\[None\\]"),
    (lambda: T.threshold(MAPS, "fixed", 0.5, roi=torch.ones(2, 1, 4, 5)), "Expected roi"),
    (lambda: T.threshold(MAPS, "fixed", 0.5, roi=torch.full((2, 4, 4), 0.5)), r"roi in \{0, 1\}"),
    (lambda: T.confident(MAPS, 0.6, 0.4), "low < high"),
    (lambda: T.confident(MAPS, float("nan"), 0.4), "low < high"),
    (lambda: T.sweep(MAPS, torch.ones(2, 4, 4), [0.2, 1.2]), r"in \[0, 1\]"),
    (lambda: T.sweep(MAPS, torch.ones(2, 4, 4), []), "at least one threshold"),
    (lambda: T.sweep(MAPS, torch.ones(2, 3, 4), [0.5]), "true masks of shape"),
    (lambda: T.sweep(MAPS, torch.full((2, 4, 4), 0.5), [0.5]), "true masks in"),
    (lambda: T.sweep(MAPS, torch.stack([torch.ones(4, 4), torch.full((4, 4), IGNORE)]), [0.5]),
     r"images \[1\] are all IGNORE"),
])
def test_bad_input_is_one_line_error(call, match):
    with pytest.raises(ViscopeError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
