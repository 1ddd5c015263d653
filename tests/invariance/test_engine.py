"""measure() end to end: known answers, brute force on the full grid, batching, shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from viscope import models as vm
from viscope.activations import capture
from viscope.errors import ViscopeError
from viscope.invariance import InvarianceResult, functional, measure, plot_results
from viscope.transforms import create as family


def bordered_images(n=12, size=16, seed=0):
    """Random images that are zero within 3 px of the border (rotation loses nothing)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 3, size, size)
    x[:, :, 3:-3, 3:-3] = torch.rand(n, 3, size - 6, size - 6, generator=g)
    return TensorDataset(x, torch.zeros(n, dtype=torch.long))


class GAP(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()

    def forward(self, x):
        return self.flat(self.pool(x))


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(5, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_gap_is_invariant_to_quarter_turns(device):
    r = measure(GAP(), bordered_images(), "rotation", params=4, samples=12, layers=["flat"],
                transform_kwargs={"low": 0.0, "high": 270.0}, device=device)
    np.testing.assert_allclose(np.ravel(r.meta["params"]), [0, 90, 180, 270])
    df = r.per_layer()
    assert df.loc[0, "nv"] < 1e-4 and df.loc[0, "sv"] > 1e-3
    # while brightness changes the pooled mean, so the same layer is far from invariant
    r2 = measure(GAP(), bordered_images(), "brightness", params=5, samples=12, layers=["flat"],
                 device=device)
    assert r2.per_layer().loc[0, "nv"] > 0.1


def test_identity_gives_zero_tv(device):
    r = measure(small_cnn(), bordered_images(), "identity", params=5, samples=12,
                layers=["0", "2", "4"], device=device)
    for layer in r.layers:
        assert np.all(r.per_unit(layer, "tv") == 0)
        assert np.all(r.per_unit(layer, "nv")[r.per_unit(layer, "sv") > 0] == 0)


def test_engine_equals_bruteforce_on_the_full_grid(device):
    net = small_cnn().to(device)
    ds = bordered_images(n=10)
    fam = family("rotation")
    layers = ["0", "2", "4"]
    r = measure(net, ds, fam, params=6, samples=10, layers=layers, batch_size=12,
                device=device, seed=3)
    # brute force: every image of the grid at once, stored, then the one-shot formulas
    grid = fam.grid(6).to(device)
    x = ds.tensors[0].to(device)
    images = fam.apply(x.repeat_interleave(6, 0), grid.repeat(10, *([1] * (grid.ndim - 1))))
    acts, _ = capture(net, images, layers)
    for layer in layers:
        a = acts[layer].reshape(10, 6, *acts[layer].shape[1:])  # float32, as the model's
        ref = {k: v.cpu().numpy() for k, v in functional.nv(a).items()}
        for q in ("tv", "sv"):
            np.testing.assert_allclose(r.per_unit(layer, q), ref[q], rtol=1e-5, atol=1e-6)
        # NV itself where SV is above float32 noise (a batch of 12 and one of 60 images
        # may round the convolution differently, which a ratio of noise amplifies)
        signal = ref["sv"] > 1e-4
        assert signal.any()
        np.testing.assert_allclose(r.per_unit(layer)[signal], ref["nv"][signal], rtol=1e-4)


def test_batch_size_does_not_change_results():
    net, ds = small_cnn(), bordered_images(n=11)
    a = measure(net, ds, "contrast", params=4, samples=11, batch_size=4, layers=["0", "4"])
    b = measure(net, ds, "contrast", params=4, samples=11, batch_size=400, layers=["0", "4"])
    for layer in a.layers:
        np.testing.assert_allclose(a.per_unit(layer), b.per_unit(layer), rtol=1e-5)


def test_same_equivariance_of_the_input_itself_is_zero():
    net = nn.Sequential(nn.Identity(), nn.Flatten())
    ds = bordered_images(n=8)
    kw = {"low": 0.0, "high": 270.0}
    se = measure(net, ds, "rotation", measure="nv_se", params=4, samples=8, layers=["0"],
                 transform_kwargs=kw)
    plain = measure(net, ds, "rotation", params=4, samples=8, layers=["0"], transform_kwargs=kw)
    # units in the zero border carry no signal (0/0 up to interpolation noise); on the
    # content, mapping back undoes the rotation exactly
    content = se.per_unit("0", "sv") > 1e-3
    assert content.sum() > 200
    assert se.per_unit("0")[content].max() < 1e-4
    assert plain.per_unit("0")[content].mean() > 0.5
    with pytest.raises(ViscopeError, match="geometric"):
        measure(net, ds, "brightness", measure="nv_se", params=3, samples=8, layers=["0"])


@pytest.mark.parametrize("name", ["anova", "goodfellow", "distance"])
def test_other_measures_run_end_to_end(name):
    r = measure(small_cnn(), bordered_images(n=16), "brightness", measure=name, params=4,
                samples=16, layers=["0", "4"])
    df = r.per_layer()
    assert list(df["layer"]) == ["0", "4"] and r.primary in df.columns
    assert np.isfinite(df[r.primary]).any()


def test_result_save_load_and_plot(tmp_path):
    r = measure(small_cnn(), bordered_images(), "translation", params=4, samples=12,
                layers=["0", "2", "4"])
    r.save(tmp_path / "run")
    back = InvarianceResult.load(tmp_path / "run")
    assert back.layers == r.layers and back.meta["transform"] == "translation"
    np.testing.assert_array_equal(back.per_unit("2"), r.per_unit("2"))
    df = r.per_layer()
    assert list(df.columns[:5]) == ["layer", "depth", "tv", "sv", "nv"]
    assert df["depth"].tolist() == [0.0, 0.5, 1.0]
    other = measure(GAP(), bordered_images(), "translation", params=4, samples=12,
                    layers=["pool", "flat"])
    ax = plot_results([r, other], labels=["cnn", "gap"])
    assert ax.get_xlabel() == "relative depth of layer (%)" and ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cnn", "gap"]
    with pytest.raises(ViscopeError, match="not measured"):
        r.per_unit("9")


def test_bad_inputs_have_clear_errors():
    ds = bordered_images()
    with pytest.raises(ViscopeError, match="Unknown transformation|Unknown transform"):
        measure(small_cnn(), ds, "rotate", samples=4)
    with pytest.raises(ViscopeError, match="Unknown measure"):
        measure(small_cnn(), ds, "rotation", measure="nvv", samples=4)
    with pytest.raises(ViscopeError, match="layer pattern"):
        measure(small_cnn(), ds, "rotation", layers=["block.*"], samples=4)


def test_vit_tokens_with_timm_model():
    net = vm.create("test_vit", img_size=32, num_classes=3)
    ds = bordered_images(n=6, size=32)
    r = measure(net, ds, "rotation", params=3, samples=6, tokens="patch")
    assert r.layers == vm.default_layers(net)
    assert all(r.layouts[x] == "tokens" for x in r.layers)
    rs = measure(net, ds, "rotation", params=3, samples=6, spatial=True)
    d = rs.shapes[r.layers[0]][-1]
    assert rs.per_unit(r.layers[0]).shape == (d,)  # averaged over tokens


class Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


def test_the_rest_of_the_net_is_skipped_once_the_measured_layers_are_in():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), Counter(),
                        nn.Conv2d(4, 4, 3, padding=1), nn.Flatten())
    early = measure(net, bordered_images(), "brightness", params=4, samples=12,
                    layers=["1"], batch_size=8)
    assert net[2].calls == 2  # layer selection's dry pass (calls per module) + the probe
    both = measure(net, bordered_images(), "brightness", params=4, samples=12,
                   layers=["1", "4"], batch_size=8)
    assert net[2].calls == 2 + 2 + 6  # dry pass + probe + 6 batches of 2 samples x 4 values
    for key in ("tv", "sv", "nv"):
        np.testing.assert_array_equal(early.per_unit("1", key), both.per_unit("1", key))
