"""Edge cases found by an audit: each against brute force or a known answer."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn
from torch.utils.data import TensorDataset

from viscope import models as vm
from viscope.activations import capture
from viscope.errors import ViscopeError
from viscope.invariance import functional, measure, plot_results
from viscope.invariance.measures import Anova, MeasureOptions, NormalizedVariance
from viscope.transforms import create as family


def images(n=8, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 3, h, w)
    x[:, :, 3:-3, 3:-3] = torch.rand(n, 3, h - 6, w - 6, generator=g)
    return TensorDataset(x, torch.zeros(n, dtype=torch.long))


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def brute_nv(a: np.ndarray):
    n, m = a.shape[:2]
    tv = np.mean([a[i].std(axis=0, ddof=1) for i in range(n)], axis=0)
    sv = np.mean([a[:, j].std(axis=0, ddof=1) for j in range(m)], axis=0)
    return tv, sv, tv / sv


def test_float64_activations_with_a_large_offset_keep_their_sample_spread():
    """A float64 unit at 1e6 +- 1 is not constant: the rounding floor must be float64's."""
    a = 1e6 + np.random.default_rng(0).normal(size=(20, 5, 4))
    tv, sv, nv = brute_nv(a)
    st = NormalizedVariance(5, (4,))
    for lo, hi in [(0, 3), (3, 7), (7, 19), (19, 20)]:
        st.update(torch.from_numpy(a[lo:hi]))
    out = st.compute()
    np.testing.assert_allclose(out["sv"].numpy(), sv, rtol=1e-8)
    np.testing.assert_allclose(out["nv"].numpy(), nv, rtol=1e-8)
    np.testing.assert_allclose(functional.nv(torch.from_numpy(a))["nv"].numpy(), nv, rtol=1e-8)


def test_anova_does_not_call_constant_float32_units_variant():
    """Units with one value for every sample and transformation (float32, merged over
    batches of different sizes) have no effect: F is NaN, p = 1, not variant."""
    rng = np.random.default_rng(0)
    n, m = 37, 4
    a = np.broadcast_to(rng.normal(size=20) * 10, (n, m, 20)).astype(np.float32).copy()
    a[:, 1, -1] += 1.0  # ... while a real effect is still found
    st = Anova(m, (20,), options=MeasureOptions(bonferroni=False))
    for lo, hi in [(0, 5), (5, 6), (6, 19), (19, 37)]:
        st.update(torch.from_numpy(a[lo:hi]))
    out = st.compute()
    assert out["variant"].tolist() == [0.0] * 19 + [1.0]
    assert torch.isnan(out["f"][:-1]).all() and (out["p"][:-1] == 1).all()
    ref = scipy.stats.f_oneway(*[a[:, j, -1].astype(np.float64) for j in range(m)])
    assert out["f"][-1] == ref.statistic == np.inf


def test_a_dataset_with_one_item_is_an_error():
    with pytest.raises(ViscopeError, match="at least 2 samples.*has 1"):
        measure(cnn(), images(1), "brightness", params=3, samples=5, layers=["1"])


def test_anova_with_one_transformation_is_an_error_before_measuring():
    calls = []
    net = cnn()
    net.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(ViscopeError, match="at least 2 parameter values"):
        measure(net, images(), "brightness", measure="anova", params=1, samples=8,
                layers=["1"])
    assert calls == []


def test_distance_measures_sample_pairs_when_a_batch_would_hold_one_sample():
    """batch_size == params would give one sample per batch, hence no pair of samples
    and SD = 0; the engine takes two samples per batch instead."""
    kw = dict(transform="brightness", measure="distance", params=4, samples=8, layers=["1"])
    one = measure(cnn(), images(), batch_size=4, **kw)
    two = measure(cnn(), images(), batch_size=8, **kw)
    assert (one.per_unit("1", "sd") > 0).any()
    for q in ("td", "sd", "nd"):
        np.testing.assert_allclose(one.per_unit("1", q), two.per_unit("1", q), rtol=1e-12)


def test_same_equivariance_on_vit_patch_tokens_equals_bruteforce():
    net = vm.create("test_vit", img_size=32, num_classes=3)
    ds = images(n=6, h=32, w=32)
    kw = {"low": 0.0, "high": 180.0}
    layer = vm.default_layers(net)[0]
    r = measure(net, ds, "rotation", measure="nv_se", params=2, samples=6, layers=[layer],
                tokens="patch", transform_kwargs=kw)
    fam = family("rotation", **kw)
    grid = fam.grid(2).repeat(6)
    x = ds.tensors[0].repeat_interleave(2, 0)
    acts, recs = capture(net, fam.apply(x, grid), [layer], tokens="patch")
    t = acts[layer]  # (12, patches, D)
    h, w = recs[layer].grid
    maps = fam.inverse(t.transpose(1, 2).reshape(12, t.shape[2], h, w), grid)
    ref = functional.nv(maps.reshape(6, 2, *maps.shape[1:]))
    assert r.per_unit(layer).shape == (t.shape[2], h, w)
    for q in ("tv", "sv"):
        np.testing.assert_allclose(r.per_unit(layer, q), ref[q].numpy(), rtol=1e-4, atol=1e-6)


KW = dict(transform="rotation", samples=12, params=4, layers=["1", "4"], batch_size=8)


class Stop(Exception):
    pass


def interrupted(tmp_path, model=None, **kw):
    file = tmp_path / "resume.pt"

    def stop(done, total):
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        measure(model or cnn(), images(12), resume=file, save_every=0, progress=stop,
                **{**KW, **kw})
    return file


def test_resume_refuses_a_model_with_permuted_channels(tmp_path):
    file = interrupted(tmp_path)
    swapped = cnn()
    with torch.no_grad():  # same sums of weights, different network
        swapped[0].weight[[0, 1]] = swapped[0].weight[[1, 0]].clone()
    with pytest.raises(ViscopeError, match="different measurement"):
        measure(swapped, images(12), resume=file, **KW)


def test_resume_refuses_a_model_in_another_precision(tmp_path):
    file = interrupted(tmp_path)
    with pytest.raises(ViscopeError, match="different measurement"):
        x, y = images(12).tensors
        measure(cnn().double(), TensorDataset(x.double(), y), resume=file, **KW)


def test_resume_refuses_another_interpolation_mode(tmp_path):
    file = interrupted(tmp_path)
    with pytest.raises(ViscopeError, match="different measurement"):
        measure(cnn(), images(12), resume=file, transform_kwargs={"mode": "nearest"},
                **KW)


def test_resume_refuses_other_callables(tmp_path):
    fs = [lambda x: x, lambda x: x.flip(-1)]
    file = interrupted(tmp_path, transform=fs)
    other = [lambda x: x, lambda x: x.flip(-2)]
    with pytest.raises(ViscopeError, match="different measurement"):
        measure(cnn(), images(12), resume=file, **{**KW, "transform": other})


def small_result(transform="brightness"):
    return measure(cnn(), images(), transform, params=3, samples=8, layers=["0", "1", "4"])


def test_plot_axes_say_what_is_drawn():
    a, b = small_result(), small_result("contrast")
    ax = plot_results([a, b])  # the same layers: named on the x axis, not relative depth
    assert ax.get_xlabel() == "layer"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "4"]
    other = measure(cnn(), images(), "contrast", params=3, samples=8, layers=["0", "1"])
    ax = plot_results([a, other], relative=False)
    assert ax.get_xlabel() == "layer index"
    assert list(ax.lines[0].get_xdata()) == [0, 1, 2]
    assert plot_results([a, other]).get_xlabel() == "relative depth of layer (%)"
    ax = a.plot(quantity="sv")
    assert "invariant" not in ax.get_title()  # a large SV is not "less invariant"
    assert ax.get_ylabel().startswith("Sample variance SV")
    assert "lower = more invariant" in a.plot().get_title()
