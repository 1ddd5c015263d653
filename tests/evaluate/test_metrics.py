"""Explanation metrics against brute-force loops and known answers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import viscope.evaluate as V
from viscope.errors import ViscopeError


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 3)).double().eval()


def _brute_deletion(model, images, maps, classes, steps, insertion=False):
    """One image and one step at a time, with a Python loop over the pixels."""
    out = []
    for img, m, c in zip(images, maps, classes, strict=True):
        order = sorted(range(m.numel()), key=lambda i: (-float(m.flatten()[i]), i))
        curve = []
        for k in range(steps + 1):
            n = round(k * m.numel() / steps)
            x = torch.zeros_like(img) if insertion else img.clone()
            for i in order[:n]:
                r, col = divmod(i, m.shape[1])
                x[:, r, col] = img[:, r, col] if insertion else 0.0
            with torch.no_grad():
                curve.append(model(x[None]).softmax(1)[0, c])
        ys = torch.stack(curve)
        out.append(((ys[1:] + ys[:-1]) / 2).sum() / steps)
    return torch.stack(out)


def test_deletion_and_insertion_auc_equal_a_brute_force_loop(net) -> None:
    images = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    maps = torch.rand(2, 8, 8, dtype=torch.float64)
    maps[0, :2] = 0.5  # ties keep pixel order
    classes = [0, 2]
    torch.testing.assert_close(V.deletion_auc(net, images, maps, classes, steps=8),
                               _brute_deletion(net, images, maps, classes, 8))
    torch.testing.assert_close(
        V.insertion_auc(net, images, maps, classes, steps=8, baseline="black"),
        _brute_deletion(net, images, maps, classes, 8, insertion=True),
    )


def test_deletion_is_batched_and_checks_shapes(net) -> None:
    images = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    maps = torch.rand(3, 8, 8, dtype=torch.float64)
    calls = []
    handle = net.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        V.deletion_auc(net, images, maps, 1, steps=4)
    finally:
        handle.remove()
    assert calls == [3] * 5  # one forward of the whole batch per step (steps + 1)
    with pytest.raises(ViscopeError, match="Expected maps"):
        V.deletion_auc(net, images, maps[:, :4], 1)


def test_localisation_known_answers() -> None:
    maps = torch.zeros(3, 6, 6)
    maps[0, 1, 1] = 1.0  # inside
    maps[1, 5, 5] = 1.0  # outside
    maps[2, 3, 3] = 1.0  # one pixel away
    masks = torch.zeros(3, 1, 6, 6)
    masks[:, :, :3, :3] = 1
    assert V.pointing_game(maps, masks).tolist() == [True, False, False]
    assert V.pointing_game(maps, masks, tolerance=1).tolist() == [True, False, True]
    torch.testing.assert_close(V.energy_pointing_game(maps, masks), torch.tensor([1.0, 0, 0]))
    full = masks[:, 0].clone()
    torch.testing.assert_close(V.iou(full, masks), torch.ones(3))
    torch.testing.assert_close(V.dice(full, masks), torch.ones(3))
    half = full.clone()
    half[:, :, 1:] = 0  # 3 of 9 pixels
    torch.testing.assert_close(V.iou(half, masks), torch.full((3,), 1 / 3))
    torch.testing.assert_close(V.dice(half, masks), torch.full((3,), 0.5))


def test_road_and_peds_are_per_image_scores(net) -> None:
    images = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    maps = torch.rand(2, 16, 16, dtype=torch.float64)
    r = V.road(net, images, maps, [0, 1])
    p = V.peds(net, images, maps, [0, 1])
    assert r.shape == (2,) and ((0 <= r) & (r <= 1)).all()
    assert p.shape == (2,) and ((0 <= p) & (p <= 1)).all()


def test_noisy_linear_imputation_fills_a_smooth_image_exactly() -> None:
    ramp = torch.linspace(0, 1, 12, dtype=torch.float64).expand(1, 3, 12, 12).clone()
    removed = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    removed[..., 4:8, 4:8] = True
    out = V.noisy_linear_impute(ramp, removed, noise=0.0, iterations=500)
    torch.testing.assert_close(out, ramp, atol=1e-6, rtol=0)


def test_model_randomization_works_on_a_copy(net) -> None:
    model = copy.deepcopy(net)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    out = V.model_randomization(model, images, "gradcam", target=[0, 1], layer="2",
                                layers=["6", "2", "0"])
    assert list(out) == ["6", "2", "0"] and all(v.shape == (2,) for v in out.values())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def test_spearman_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    a = torch.tensor([[0.0, 0.0, 1.0, 2.0, 2.0, 5.0]])
    b = torch.tensor([[1.0, 0.0, 0.0, 3.0, 2.0, 2.0]])
    expected = stats.spearmanr(a[0].numpy(), b[0].numpy()).statistic
    assert abs(float(V.spearman(a, b)[0]) - expected) < 1e-12
