"""Same-equivariance NV (``nv_se``): the per-layer value, against known answers and an
independent brute force.

An exactly equivariant layer must read ~0 per layer; on warps that are not exact
(rotations by other angles, scales) the per-layer value must equal the brute force of
``nv_se_reference.py``: plain hooks that clone, the full N x M x units array, the inverse
warp, the valid mask (ones warped forward and back, valid where ~1 under every parameter
value), NumPy TV / SV restricted to valid positions, constant units left out.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from torchvision.ops.misc import Permute

from viscope import data as vdata
from viscope.invariance import measure
from viscope.transforms import create as family

sys.path.insert(0, str(Path(__file__).parent))
from nv_se_reference import reference_nv_se  # noqa: E402

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
        ref = reference_nv_se(net, ds.tensors[0], fam, grid, layer, spatial=spatial)
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
    ref = reference_nv_se(net, ds.tensors[0], fam, fam.grid(6), "0")
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


@pytest.mark.parametrize("spatial", [False, True])
def test_channels_last_layer_equals_the_same_maps_channels_first(spatial):
    torch.manual_seed(0)
    first = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.Flatten())
    # the same convolution, its output permuted to (B, H, W, C) as Swin's stages are
    last = nn.Sequential(nn.Sequential(first[0], Permute([0, 2, 3, 1])), nn.Flatten())
    kw = dict(measure="nv_se", params=5, samples=10, layers=["0"], spatial=spatial)
    a = measure(first, full(), "rotation", **kw)
    b = measure(last, full(), "rotation", **kw)
    assert b.layouts["0"] == "hwc" and a.layouts["0"] == "chw"
    for q in ("tv", "sv", "nv"):
        np.testing.assert_array_equal(b.per_unit("0", q), a.per_unit("0", q))
    assert b.per_unit("0").shape == ((5,) if spatial else (5, 24, 24))


class Stop(Exception):
    pass


def test_nv_se_resumes_and_merges_shards_to_the_same_numbers(tmp_path):
    """The valid mask goes with every copy of the state: a resumed run (states loaded
    from the file) and two shards merged through their tensors (as torch.distributed
    does) give the uninterrupted numbers."""
    net, ds = small_cnn(), full(n=12)
    kw = dict(measure="nv_se", params=5, samples=12, layers=["0", "2"], batch_size=15)
    whole = measure(net, ds, "rotation", **kw)

    def stop_at_2(done, total):
        if done == 2:
            raise Stop

    file = tmp_path / "resume.pt"
    with pytest.raises(Stop):
        measure(net, ds, "rotation", resume=file, save_every=0, progress=stop_at_2, **kw)
    resumed = measure(net, ds, "rotation", resume=file, save_every=0, **kw)
    for layer in whole.layers:
        for q in ("tv", "sv", "nv"):
            np.testing.assert_array_equal(resumed.per_unit(layer, q), whole.per_unit(layer, q))

    from viscope.invariance.measures import MEASURES

    valid = torch.zeros(4, 4, dtype=torch.bool)
    valid[1:, :3] = True
    make = MEASURES.get("nv_se").state
    acts = torch.randn(10, 5, 2, 4, 4, dtype=torch.float64)
    one = make(5, (2, 4, 4), (1, 2), valid=valid)
    one.update(acts)
    a, b = make(5, (2, 4, 4), (1, 2), valid=valid), make(5, (2, 4, 4), (1, 2), valid=valid)
    a.update(acts[:4])
    b.update(acts[4:])
    merged = a.with_tensors(a.tensors()).merge_(a.with_tensors(b.tensors()))
    out, ref = merged.compute(), one.compute()
    assert np.isnan(out["nv"][:, 0].numpy()).all() and np.isfinite(out["nv"][:, 1, 0].numpy()).all()
    for q in ("tv", "sv", "nv"):
        np.testing.assert_allclose(out[q].numpy(), ref[q].numpy(), rtol=1e-12,
                                   equal_nan=True)
