"""Explanation equivariance: known answers (exactly equivariant networks, a fixed spatial
bias, per-image normalisation under brightness) and the NV-style ratio against a
brute-force NumPy computation from maps explained one image at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from viscope.errors import ViscopeError
from viscope.evaluate import equivariance_cell, explanation_invariance
from viscope.explain import attribute
from viscope.transforms import create

SIZE = 12


class Shift(nn.Module):
    """Adds a fixed (C, H, W) map: zero keeps the network equivariant, anything else not."""

    def __init__(self, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class Pointwise(nn.Module):
    """1x1 convolutions, a fixed spatial map added, global average pooling, a linear head:
    with a zero map, rotating the input rotates every activation map exactly."""

    def __init__(self, bias: torch.Tensor | None = None, normalise: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.normalise = normalise
        self.features = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 6, 1))
        self.shift = Shift(torch.zeros(6, SIZE, SIZE) if bias is None else bias)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalise:  # per image and channel: a brightness factor cancels out
            x = (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True)
        return self.head(self.shift(self.features(x)).mean(dim=(2, 3)))


def images(n: int = 5, low: float = 0.0, high: float = 1.0) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = low + (high - low) * torch.rand(n, 3, SIZE, SIZE, generator=g)
    return TensorDataset(x, torch.zeros(n, dtype=torch.long))


def quarter_turns():
    return create("rotation", low=90, high=270)  # grid(3) = 90, 180, 270 exactly


def test_quarter_turns_of_an_equivariant_network_are_exact():
    model = Pointwise().eval()
    fam = quarter_turns()
    assert fam.grid(3).tolist() == [90.0, 180.0, 270.0]
    r = explanation_invariance(model, images(), fam, "gradcam", samples=5, params=3,
                               layer="shift", batch_size=6)["rotation"]
    assert r.pairs == 15 and r.undefined == 0
    assert r.correlation == pytest.approx(1.0, abs=1e-6)
    assert r.difference < 1e-5
    assert r.ratio < 1e-8 and r.sv > 1e-3  # the maps differ between images, not copies


def _brute_force(model: nn.Module, data: TensorDataset, layer: str):
    """Per image, one call per rotated copy (torch.rot90, not the family's warp); maps
    compared by hand in NumPy with the original map turned by np.rot90."""
    corrs, diffs, aligned = [], [], []
    for x, _ in data:
        x = x[None]
        cls = int(model(x).argmax())
        clean = attribute(model, x, "gradcam", layer, target=cls)[0].double().numpy()
        row = []
        for k in (1, 2, 3):
            xk = torch.rot90(x, k, dims=(-2, -1))
            mk = attribute(model, xk, "gradcam", layer, target=cls)[0].double().numpy()
            turned = np.rot90(clean, k)
            corrs.append(np.corrcoef(mk.ravel(), turned.ravel())[0, 1])
            diffs.append(np.abs(mk - turned).mean())
            row.append(np.rot90(mk, -k))  # back to the original frame
        aligned.append(row)
    a = np.asarray(aligned)  # (images, transformations, H, W)
    tv = a.var(axis=1, ddof=1).mean()  # mean over images (and positions) of var over copies
    sv = a.var(axis=0, ddof=1).mean()  # mean over copies (and positions) of var over images
    return np.mean(corrs), np.mean(diffs), tv / sv


def test_spatial_bias_breaks_equivariance_by_the_brute_force_amount():
    g = torch.Generator().manual_seed(3)
    bias = 0.05 * torch.rand(6, SIZE, SIZE, generator=g)
    model = Pointwise(bias).eval()
    data = images()
    r = explanation_invariance(model, data, quarter_turns(), "gradcam", samples=5, params=3,
                               layer="shift", batch_size=9)["rotation"]
    corr, diff, ratio = _brute_force(model, data, "shift")
    assert corr < 0.99  # the bias really breaks it
    assert r.correlation == pytest.approx(corr, abs=1e-5)
    assert r.difference == pytest.approx(diff, abs=1e-5)
    # (4) the NV-style ratio = (mean var over transformations) / (mean var over images)
    assert r.ratio == pytest.approx(ratio, rel=1e-5)


def test_brightness_on_a_per_image_normalising_model_leaves_maps_unchanged():
    model = Pointwise(normalise=True).eval()
    data = images(low=0.1, high=0.6)  # x 1.5 stays below 1: no clipping
    r = explanation_invariance(model, data, "brightness", "gradcam", samples=5, params=4,
                               layer="shift")["brightness"]
    assert r.difference < 1e-5
    assert r.correlation == pytest.approx(1.0, abs=1e-6)
    assert r.ratio < 1e-8


def test_brightness_changes_maps_of_a_model_that_does_not_normalise():
    # the counterpart of the test above: the same measure does see a change
    r = explanation_invariance(Pointwise().eval(), images(), "brightness", "gradcam",
                               samples=5, params=4, layer="shift")["brightness"]
    assert r.difference > 1e-3 and r.ratio > 1e-4


def test_several_families_cell_and_frame():
    model = Pointwise().eval()
    res = explanation_invariance(model, images(4), ["translation", "rotation"], samples=4,
                                 params=4, layer="shift")
    frame = res.to_frame()
    assert list(frame["family"]) == ["translation", "rotation"]
    cell = equivariance_cell(model, images(4), "rotation", samples=4, params=4, layer="shift")
    assert cell == pytest.approx(res["rotation"].scores())
    assert model.training is False


def test_predicted_target_and_mode_restored():
    model = Pointwise(2.0 * torch.rand(6, SIZE, SIZE)).train()
    r = explanation_invariance(model, images(), quarter_turns(), samples=5, params=3,
                               layer="shift", target="predicted")["rotation"]
    assert -1.0 <= r.correlation <= 1.0
    assert model.training is True


@pytest.mark.parametrize("kwargs, fragment", [
    ({"method": "nope"}, "Unknown attribution method 'nope'"),
    ({"transform": "spin"}, "spin"),
    ({"target": "label"}, "Expected target to be one of"),
    ({"samples": 1}, "Expected samples"),
    ({"params": 1}, "Expected params"),
    ({"params": [[1.0, 2.0]] * 3}, "shape"),
    ({"transform": ["rotation", "scale"], "params": [0.0, 90.0]}, "several families"),
])
def test_bad_input_is_one_line_error(kwargs, fragment):
    args = {"transform": "rotation", "method": "gradcam", "samples": 4, "params": 3,
            "layer": "shift", **kwargs}
    with pytest.raises(ViscopeError, match=fragment) as info:
        explanation_invariance(Pointwise().eval(), images(4), **args)
    assert "\n" not in str(info.value)


def test_images_of_the_wrong_shape_are_refused():
    data = TensorDataset(torch.rand(4, SIZE, SIZE), torch.zeros(4))
    with pytest.raises(ViscopeError, match=r"\(C, H, W\)"):
        explanation_invariance(Pointwise().eval(), data, "rotation", samples=4, params=3)


@pytest.mark.parametrize("name, kwargs", [
    ("test_efficientnet", {}),
    ("test_vit", {"img_size": 32, "patch_size": 8, "depth": 3, "embed_dim": 96,
                  "num_heads": 3}),  # the matrix demo's models (token layers for the ViT)
])
def test_demo_models_batched_equals_one_image_at_a_time(name, kwargs):
    from viscope import models
    from viscope.explain import auto_layer

    torch.manual_seed(0)
    model = models.create(name, num_classes=10, **kwargs).eval()
    g = torch.Generator().manual_seed(2)
    data = TensorDataset(torch.rand(3, 3, 32, 32, generator=g), torch.zeros(3))
    layer = auto_layer(model, (32, 32))
    r = explanation_invariance(model, data, quarter_turns(), samples=3, params=3,
                               layer=layer, batch_size=9)["rotation"]
    corr, diff, ratio = _brute_force(model, data, layer)
    assert r.correlation == pytest.approx(corr, abs=1e-4)
    assert r.difference == pytest.approx(diff, abs=1e-4)
    assert r.ratio == pytest.approx(ratio, rel=1e-3)
