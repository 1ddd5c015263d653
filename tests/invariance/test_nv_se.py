"""Same-equivariance NV (``nv_se``): the per-layer value, against known answers and an
independent brute force.

An exactly equivariant layer must read ~0 per layer; on warps that are not exact
(rotations by other angles, scales) the per-layer value must equal a brute force written
here: plain hooks that clone, the full N x M x units array, the inverse warp, the valid
mask (ones warped forward and back, valid where ~1 under every parameter value), NumPy
TV / SV restricted to valid positions, constant units left out.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from viscope import data as vdata
from viscope.invariance import measure
from viscope.transforms import create as family

SHIFT = {"low": -0.125, "high": 0.125}  # +-4 px at 32 px: whole pixels
QUARTER = {"low": 0.0, "high": 270.0}  # 0, 90, 180, 270 degrees with params=4


def bordered(n=10, size=32, border=4, seed=0):
    """Random images with a zero border of ``border`` px (a 4 px shift loses nothing)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 3, size, size)
    x[:, :, border:-border, border:-border] = torch.rand(n, 3, size - 2 * border,
                                                         size - 2 * border, generator=g)
    return TensorDataset(x, torch.zeros(n, dtype=torch.long))


def full(n=10, size=24, seed=1):
    """Random images without a border: rotations and scales push content out."""
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 3, size, size, generator=g), torch.zeros(n))


def conv1x1(bias=50.0):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 1)
    with torch.no_grad():
        conv.bias.fill_(bias)
    return conv


def depthwise3x3(symmetric: bool):
    """A depthwise 3x3 convolution (padding 1); ``symmetric``: kernels invariant to
    quarter turns, so that the layer is equivariant to them."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 3, padding=1, groups=3)
    if symmetric:
        with torch.no_grad():
            k = conv.weight
            conv.weight.copy_(sum(torch.rot90(k, r, dims=(-2, -1)) for r in range(4)))
    return conv


def wrap(layer: nn.Module) -> nn.Module:
    return nn.Sequential(layer, nn.Flatten())


EXACT = {
    "translation": SHIFT,
    "rotation": QUARTER,
}


@pytest.mark.parametrize("transform", list(EXACT))
@pytest.mark.parametrize("layer", ["identity", "conv1x1", "depthwise"])
def test_exactly_equivariant_layers_read_zero_per_layer(transform, layer):
    net = wrap({"identity": nn.Identity(), "conv1x1": conv1x1(),
                "depthwise": depthwise3x3(symmetric=transform == "rotation")}[layer])
    r = measure(net, bordered(), transform, measure="nv_se", params=4, samples=10,
                layers=["0"], transform_kwargs=EXACT[transform])
    row = r.per_layer().iloc[0]
    assert row["nv"] < 1e-5, row.to_dict()
    assert row["sv"] > 1e-2  # the layer does vary over samples: 0 is not a 0/0
    spatial = measure(net, bordered(), transform, measure="nv_se", params=4, samples=10,
                      layers=["0"], transform_kwargs=EXACT[transform], spatial=True)
    assert spatial.per_layer().iloc[0]["nv"] < 1e-5


def brute_valid(fam, grid, h, w) -> np.ndarray:
    """Ones warped forward and back at (h, w), valid where >= 1 - 1e-3 for every value."""
    ones = torch.ones(len(grid), 1, h, w, dtype=torch.float64)
    back = fam.inverse(fam.apply(ones, grid), grid)
    return (back[:, 0] >= 1 - 1e-3).all(0).numpy()


def brute_nv_se(net, ds, fam, grid, layer, spatial=False, channels_last=False):
    """Per-layer nv, tv, sv of nv_se, from the full activation grid."""
    x = ds.tensors[0]
    n, m = len(x), len(grid)
    params = grid.repeat(n, *([1] * (grid.ndim - 1)))
    images = fam.apply(x.repeat_interleave(m, 0), params)
    out = {}
    module = dict(net.named_modules())[layer]
    handle = module.register_forward_hook(lambda mod, i, o: out.setdefault("a", o.clone()))
    try:
        with torch.no_grad():
            net(images)
    finally:
        handle.remove()
    a = out["a"].permute(0, 3, 1, 2) if channels_last else out["a"]
    a = fam.inverse(a, params).double().numpy()
    h, w = a.shape[-2:]
    a = a.reshape(n, m, *a.shape[1:])  # (N, M, C, h, w)
    valid = brute_valid(fam, grid, h, w)
    tv = a.std(axis=1, ddof=1).mean(0)  # (C, h, w)
    sv = a.std(axis=0, ddof=1).mean(0)
    # constant to float32 precision: TV and SV within 16 eps of the layer's RMS
    floor = 16 * np.finfo(np.float32).eps * np.sqrt((a[:, :, :, valid] ** 2).mean())
    if spatial:  # per channel, over valid positions
        tv = np.where(valid, tv, 0).sum((1, 2)) / valid.sum()
        sv = np.where(valid, sv, 0).sum((1, 2)) / valid.sum()
        counted = (tv > floor) | (sv > floor)
    else:
        counted = valid & ((tv > floor) | (sv > floor))
        tv, sv = np.where(valid, tv, np.nan), np.where(valid, sv, np.nan)
    return {"nv": (tv[counted] / sv[counted]).mean(), "tv": np.nanmean(tv),
            "sv": np.nanmean(sv), "valid": valid, "counted": counted}


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(5, 6, 3, stride=2, padding=1), nn.Flatten())


NON_EXACT = [
    ("rotation", {}),  # -180 .. 180 in 6 steps: 72 degree turns, bilinear
    ("scale", {}),  # 0.5 .. 1.5: zero-filled margins, content pushed out
]


@pytest.mark.parametrize(("transform", "kwargs"), NON_EXACT)
@pytest.mark.parametrize("spatial", [False, True])
def test_nv_se_equals_bruteforce_on_valid_positions(transform, kwargs, spatial):
    net, ds = small_cnn(), full()
    fam = family(transform, **kwargs)
    grid = fam.grid(6)
    r = measure(net, ds, fam, measure="nv_se", params=6, samples=10, layers=["0", "2"],
                batch_size=13, spatial=spatial)
    for layer in ("0", "2"):
        ref = brute_nv_se(net, ds, fam, grid, layer, spatial=spatial)
        assert 0 < ref["valid"].sum() < ref["valid"].size  # the mask matters here
        row = r.per_layer().set_index("layer").loc[layer]
        for q in ("nv", "tv", "sv"):
            np.testing.assert_allclose(row[q], ref[q], rtol=2e-6, err_msg=f"{layer} {q}")


def test_constant_units_are_left_out_of_the_layer_mean():
    """Zero-bordered images through a 1x1 convolution with bias: valid positions in the
    border are the bias on every image (TV = SV = 0), which nv_se leaves out (plain nv
    keeps tmeasures' 0/0 -> 1)."""
    net, ds = wrap(conv1x1(bias=0.5)), bordered(n=8, size=24, border=6)
    fam = family("rotation")
    r = measure(net, ds, fam, measure="nv_se", params=6, samples=8, layers=["0"])
    ref = brute_nv_se(net, ds, fam, fam.grid(6), "0")
    per_unit = r.per_unit("0")
    assert per_unit.shape == (4, 24, 24)
    # the same units are counted: valid and not constant
    np.testing.assert_array_equal(np.isfinite(per_unit), ref["counted"])
    constant = ref["valid"] & ~ref["counted"]
    assert constant.sum() > 0.2 * ref["counted"].sum()
    # (counting the constant units as 0/0 -> 1 would move the value by ~5 %)
    np.testing.assert_allclose(r.per_layer().iloc[0]["nv"], ref["nv"], rtol=1e-6)
    assert np.isnan(per_unit[:, 0, 0]).all()  # a corner: pushed out by the rotations
    plain = measure(net, ds, fam, params=6, samples=8, layers=["0"])
    assert (plain.per_unit("0") == 1.0).any()  # the 0/0 -> 1 convention is kept there


def test_shapes_translation_1x1_conv_reads_below_plain_nv():
    ds = vdata.create("shapes", n=64)
    net = wrap(conv1x1(bias=0.5))
    kw = dict(params=9, samples=64, layers=["0"])
    se = measure(net, ds, "translation", measure="nv_se", **kw).per_layer().iloc[0]["nv"]
    plain = measure(net, ds, "translation", **kw).per_layer().iloc[0]["nv"]
    assert se < 0.25 * plain, (se, plain)
