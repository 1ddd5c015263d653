"""Per-image Dice and IoU with ignored pixels: a brute-force loop over images and pixels,
torchmetrics' sample-wise stat scores, and cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_stat_scores

from viscope.data.base import IGNORE
from viscope.errors import ViscopeError
from viscope.evaluate import segmentation as S


def _random_masks(b=6, h=12, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(b, 1, h, w, generator=g) < 0.4
    target = (torch.rand(b, 1, h, w, generator=g) < 0.5).float()
    # an ignored band (a ring of columns) plus random ignored pixels
    target[..., 3:5] = IGNORE
    target[torch.rand(b, 1, h, w, generator=g) < 0.1] = IGNORE
    pred[1] = False  # prediction empty, target not
    target[2] = 0.0  # target empty, prediction not
    pred[3], target[3] = False, 0.0  # both empty
    target[4] = IGNORE  # no valid pixel at all
    return pred, target


def _brute(pred, target, empty, ignore=IGNORE):
    """Dice and IoU by counting pixel by pixel in plain Python."""
    dices, ious = [], []
    for p_img, t_img in zip(pred.numpy(), target.numpy(), strict=True):
        tp = fp = fn = 0
        for p, t in zip(p_img.ravel().tolist(), t_img.ravel().tolist(), strict=True):
            if ignore is not None and t == ignore:
                continue
            tp += bool(p) and t == 1
            fp += bool(p) and t == 0
            fn += (not p) and t == 1
        dices.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else empty)
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else empty)
    return np.array(dices), np.array(ious)


@pytest.mark.parametrize("empty", [1.0, 0.0])
def test_dice_and_iou_equal_a_pixel_loop(device, empty):
    pred, target = _random_masks()
    want_d, want_j = _brute(pred, target, empty)
    got_d = S.dice(pred.to(device), target.to(device), empty=empty)
    got_j = S.iou(pred.to(device), target.to(device), empty=empty)
    assert got_d.device.type == device.type
    np.testing.assert_allclose(got_d.cpu().numpy(), want_d, rtol=1e-6)
    np.testing.assert_allclose(got_j.cpu().numpy(), want_j, rtol=1e-6)
    assert got_d[3] == empty and got_d[4] == empty and got_d[1] == 0 and got_d[2] == 0


def test_counts_equal_torchmetrics_samplewise_stat_scores():
    pred, target = _random_masks(seed=3)
    want = binary_stat_scores(pred[:, 0].long(), target[:, 0].long(),
                              multidim_average="samplewise", ignore_index=-1)
    got = S.stat_scores(pred, target)
    assert torch.equal(got, want[:, [0, 1, 3]])


def test_known_answers_and_shapes():
    a = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    a[:, :, :2] = True
    b = ~a
    assert S.dice(a, a.float()).tolist() == [1.0, 1.0]
    assert S.iou(a[:, 0], a.float()).tolist() == [1.0, 1.0]  # (B, H, W) with (B, 1, H, W)
    assert S.dice(a, b.float()).tolist() == [0.0, 0.0]
    assert S.iou(a.int(), b.float()).tolist() == [0.0, 0.0]  # {0, 1} integers as pred
    empty = torch.zeros(1, 4, 4)
    assert S.dice(empty, empty, empty=0.25).tolist() == [0.25]
    # half the prediction falls on ignored pixels: it counts neither way
    t = a.float().clone()
    t[:, :, :1] = IGNORE
    t[:, :, 2:3] = 1.0
    assert S.dice(a, t).tolist() == pytest.approx([2 * 4 / (2 * 4 + 4)] * 2)  # TP 4, FN 4


def test_other_ignore_values():
    pred = torch.tensor([[[1, 0, 1]]])
    target = torch.tensor([[[1.0, 255.0, 0.0]]])
    assert S.dice(pred, target, ignore=255).tolist() == pytest.approx([2 / 3])
    with pytest.raises(ViscopeError, match="Expected target masks in"):
        S.dice(pred, target)  # 255 is not the default IGNORE
    # ignore=None: an IGNORE value is then just a wrong value
    with pytest.raises(ViscopeError, match="Expected target masks in"):
        S.dice(pred, torch.tensor([[[1.0, IGNORE, 0.0]]]), ignore=None)
    assert S.dice(pred, torch.tensor([[[1.0, 0.0, 0.0]]]), ignore=None).tolist() == \
        pytest.approx([2 / 3])


@pytest.mark.parametrize("pred, target, match", [
    (torch.ones(2, 4, 4), torch.ones(2, 4, 5), "of one shape"),
    (torch.ones(2, 2, 4, 4), torch.ones(2, 2, 4, 4), r"\(B, 1, H, W\) or \(B, H, W\)"),
    (torch.full((1, 4, 4), 0.7), torch.ones(1, 4, 4), "pred masks in"),
    (torch.ones(1, 4, 4), torch.full((1, 4, 4), 0.5), "target masks in"),
    (torch.ones(1, 4, 4), torch.full((1, 4, 4), float("nan")), "target masks in"),
    (np.ones((1, 4, 4)), torch.ones(1, 4, 4), "torch tensor"),
])
def test_bad_input_is_one_line_error(pred, target, match):
    with pytest.raises(ViscopeError, match=match) as err:
        S.dice(pred, target)
    assert "\n" not in str(err.value)


def test_summarise_is_mean_and_population_std():
    scores = torch.tensor([0.2, 0.9, 0.4, 1.0])
    mean, std = S.summarise(scores)
    assert mean == pytest.approx(np.mean(scores.numpy()))
    assert std == pytest.approx(np.std(scores.numpy(), ddof=0))
    assert S.summarise(torch.tensor([0.3])) == pytest.approx((0.3, 0.0))
    with pytest.raises(ViscopeError, match="at least one score"):
        S.summarise(torch.tensor([]))
    with pytest.raises(ViscopeError, match="finite"):
        S.summarise(torch.tensor([0.5, float("nan")]))
