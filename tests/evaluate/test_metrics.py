"""Explanation metrics against brute-force loops and known answers."""

from __future__ import annotations

import copy
import warnings

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
    # (3, 3) is sqrt(2) from the mask's corner (2, 2): within 1.5 px, not within 1 px
    assert V.pointing_game(maps, masks, tolerance=1).tolist() == [True, False, False]
    assert V.pointing_game(maps, masks, tolerance=1.5).tolist() == [True, False, True]
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


def _one_line_error(call, match: str) -> None:
    with pytest.raises(ViscopeError, match=match) as err:
        call()
    assert "\n" not in str(err.value)


def test_bad_maps_and_baselines_give_one_line_errors(net) -> None:
    images = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    maps = torch.rand(2, 8, 8, dtype=torch.float64)
    bad = maps.clone()
    bad[1, 2, 3] = float("nan")
    masks = torch.ones(2, 8, 8)
    for call in (lambda: V.deletion_auc(net, images, bad, 0, steps=2),
                 lambda: V.road(net, images, bad, 0, fractions=(0.5,)),
                 lambda: V.peds(net, images, bad, 0),
                 lambda: V.pointing_game(bad, masks),
                 lambda: V.energy_pointing_game(bad, masks),
                 lambda: V.iou(bad, masks)):
        _one_line_error(call, "NaN")
    _one_line_error(lambda: V.iou(maps[0], masks[0]), "Expected maps")  # (H, W): no batch
    _one_line_error(lambda: V.deletion_auc(net, images, maps, 0, steps=2,
                                           baseline=torch.zeros(2, 3, 4, 4)), "baseline")
    _one_line_error(lambda: V.peds(net, images, maps * 3, 0), r"\[0, 1\]")


def test_deletion_order_keeps_the_maps_precision() -> None:
    seen = []

    def model(x):
        seen.append(x.clone())
        return torch.stack([x.float().sum((1, 2, 3)), torch.zeros(x.shape[0])], dim=1)

    images = torch.ones(1, 1, 4, 4, dtype=torch.float16)
    maps = (1 + 1e-4 * torch.arange(16, dtype=torch.float64)).view(1, 4, 4)  # ties in fp16
    V.deletion_curve(model, images, maps, 0, steps=16)
    for k, x in enumerate(seen):  # step k removes the k largest values of the float64 map
        assert (x[0, 0] == 0).flatten().nonzero().flatten().tolist() == list(range(16 - k, 16))


def test_road_batch_equals_single_images(net) -> None:
    g = torch.Generator().manual_seed(3)
    images = torch.rand(3, 3, 12, 12, generator=g, dtype=torch.float64)
    maps = torch.rand(3, 12, 12, generator=g, dtype=torch.float64)
    batch = V.road(net, images, maps, [0, 1, 2], fractions=(0.2, 0.6))
    singles = torch.cat([V.road(net, images[i:i + 1], maps[i:i + 1], [i], fractions=(0.2, 0.6))
                         for i in range(3)])
    torch.testing.assert_close(batch, singles)


def _dense_impute(image, removed):
    """ROAD's linear system solved directly, built with a Python loop over the pixels."""
    h, w = removed.shape
    unknown = [(r, c) for r in range(h) for c in range(w) if removed[r, c]]
    index = {p: i for i, p in enumerate(unknown)}
    a = torch.zeros(len(unknown), len(unknown), dtype=torch.float64)
    b = torch.zeros(len(unknown), image.shape[0], dtype=torch.float64)
    for (r, c), i in index.items():
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc = r + dr, c + dc
                if (dr, dc) == (0, 0) or not (0 <= rr < h and 0 <= cc < w):
                    continue
                wt = 1 / 12 if dr and dc else 1 / 6
                a[i, i] += wt
                if (rr, cc) in index:
                    a[i, index[rr, cc]] -= wt
                else:
                    b[i] += wt * image[:, rr, cc]
    out = image.clone()
    sol = torch.linalg.solve(a, b)
    for (r, c), i in index.items():
        out[:, r, c] = sol[i]
    return out


def test_noisy_linear_imputation_solves_large_holes_exactly() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 24, 24, generator=g, dtype=torch.float64)
    removed = torch.rand(2, 1, 24, 24, generator=g) < 0.2
    removed[0, :, 3:21, 3:21] = True  # a large hole: its interior is far from known pixels
    removed[1, :, 10:, :] = True  # everything below row 10, borders included
    out = V.noisy_linear_impute(images, removed, noise=0.0)
    for i in range(2):
        torch.testing.assert_close(out[i], _dense_impute(images[i], removed[i, 0]),
                                   atol=1e-8, rtol=0)


def test_pointing_game_tolerance_equals_a_brute_force_loop() -> None:
    """TorchRay's rule: a mask pixel at Euclidean distance < tolerance (0: in the mask)."""
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 9, 9, generator=g) > 0.93
    masks[0] = False
    masks[0, 4, 4] = True
    inside = masks.nonzero().tolist()
    for tol in (0, 1, 1.5, 2, 15 * 9 / 224, 3):
        for r in range(9):
            for c in range(9):
                maps = torch.zeros(3, 9, 9)
                maps[:, r, c] = 1.0
                expected = [any((b == k) and ((r - i) ** 2 + (c - j) ** 2 < tol**2
                                              or (r, c) == (i, j))
                                for b, i, j in inside) for k in range(3)]
                assert V.pointing_game(maps, masks, tolerance=tol).tolist() == expected


def test_model_randomization_single_element_parameters_and_default_cascade() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.PReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 3)).eval()
    out = V.model_randomization(net, torch.rand(2, 3, 8, 8), "gradcam", 0, layer="0",
                                layers=["4", "1"])
    assert list(out) == ["4", "1"] and all(torch.isfinite(v).all() for v in out.values())


def test_default_cascade_reaches_the_stem() -> None:
    from viscope import models
    from viscope.evaluate.sanity import _cascade
    from viscope.models import unwrap

    model = models.create("resnet18", num_classes=3)
    names = _cascade(unwrap(model), model)
    assert names[0] == "fc" and names[-3:] == ["layer1.0", "bn1", "conv1"]


def test_a_model_in_training_mode_is_warned_about() -> None:
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten())
    images, maps = torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8)
    with pytest.warns(UserWarning, match="training mode"):
        V.deletion_auc(net, images, maps, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        V.deletion_auc(net.eval(), images, maps, 0)
