"""RISE and CB-RISE against brute-force sums over the same masks, and known answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import viscope.explain as E
from viscope.errors import ViscopeError
from viscope.explain import perturbation as P


class Constant(nn.Module):
    """Scores class 0 at probability 0.8 whatever the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.tensor([math.log(0.8), math.log(0.2)], device=x.device, dtype=x.dtype)
        return logits.expand(x.shape[0], 2)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 4, stride=4), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3)).eval()


def brute_force(model, images, target, n, seed, chunk, p=0.5, centred=True):
    """Every term ``f_i M_i`` stored, summed in a Python loop over masks."""
    gen = torch.Generator().manual_seed(seed)
    masks = torch.cat([P.rise_masks(min(chunk, n - s), images.shape[-2:], cells=4, p=p,
                                    generator=gen) for s in range(0, n, chunk)]).double()
    maps = []
    for b in range(images.shape[0]):
        scores = []
        for m in masks:
            x = (images[b] * m.float())[None]
            with torch.no_grad():
                scores.append(torch.softmax(model(x), 1)[0, target[b]].double())
        f = torch.stack(scores)
        c = f.mean() if centred else 0.0
        terms = (f - c)[:, None, None] * masks
        maps.append(terms.sum(0) / (n * p) + c)
    return torch.stack(maps), f, masks


@pytest.mark.parametrize("estimator", ["centred", "plain"])
def test_rise_equals_a_brute_force_sum_over_the_same_masks(estimator) -> None:
    model, images = small_model(), torch.rand(2, 3, 16, 16)
    got = E.rise(model, images, E.resolve_target([0, 2], 2), n_masks=50, cells=4, chunk=20,
                 batch_size=7, seed=3, estimator=estimator)
    want, _, _ = brute_force(model, images, [0, 2], 50, 3, 20, centred=estimator == "centred")
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_centred_and_plain_estimate_the_same_map() -> None:
    """Same expectation: with many masks the two agree far better than either's noise."""
    model, images = small_model(), torch.rand(1, 3, 16, 16)
    tgt = E.resolve_target(1, 1)
    kw = dict(n_masks=20000, cells=4, chunk=5000, batch_size=5000, seed=0)
    centred = E.rise(model, images, tgt, estimator="centred", **kw)
    plain = E.rise(model, images, tgt, estimator="plain", **kw)
    plain2 = E.rise(model, images, tgt, estimator="plain", **{**kw, "seed": 1})
    # Their difference is below plain RISE's own seed-to-seed noise.
    assert (centred - plain).abs().mean() < (plain - plain2).abs().mean()
    assert (centred - plain).abs().max() < 0.02 * plain.abs().max()


def test_a_model_that_ignores_its_input_gets_a_flat_map() -> None:
    """Known answer: saliency is 0.8 everywhere. The centred estimator gives it exactly;
    the plain one adds the noise of how often each pixel was kept."""
    images = torch.rand(2, 3, 16, 16)
    tgt = E.resolve_target(0, 2)
    centred = E.rise(Constant(), images, tgt, n_masks=200, cells=4)
    plain = E.rise(Constant(), images, tgt, n_masks=200, cells=4, estimator="plain")
    torch.testing.assert_close(centred, torch.full_like(centred, 0.8), rtol=0, atol=1e-6)
    assert plain.std() > 0.01


@pytest.mark.parametrize("estimator", ["centred", "plain"])
def test_running_variance_equals_the_variance_of_the_stored_terms(estimator) -> None:
    """The terms whose mean the map is: ``f_i M_i`` (plain) and, centred, the sample
    covariance's terms ``(f_i - mean f)(M_i - mean M)``, from all terms stored."""
    torch.manual_seed(1)
    scores, masks = torch.rand(2, 40).double(), torch.rand(40, 5, 6).double()
    sums = P._RiseSums(2, (5, 6), torch.device("cpu"), second=True)
    which = torch.tensor([0, 1])
    sums.add(which, scores[:, :15], masks[:15])
    sums.add(which[1:], scores[1:, 15:], masks[15:])  # image 0 stopped after 15 masks
    for b, n in [(0, 15), (1, 40)]:
        f, m = scores[b, :n], masks[:n]
        if estimator == "centred":
            terms = (f - f.mean())[:, None, None] * (m - m.mean(dim=0))
        else:
            terms = f[:, None, None] * m
        got = sums.variance(torch.tensor([b]), estimator)[0]
        torch.testing.assert_close(got, terms.var(dim=0), rtol=1e-10, atol=1e-12)
    assert sums.n.tolist() == [15, 40]


@pytest.mark.parametrize("estimator", ["centred", "plain"])
def test_noise_ratio_is_the_standard_error_over_the_spatial_spread(estimator) -> None:
    """Brute force: the map's standard error per pixel, ``std(terms) / (sqrt(n) p)``, its
    RMS over pixels, over the spatial standard deviation of the map."""
    torch.manual_seed(2)
    scores, masks = torch.rand(2, 30).double(), torch.rand(30, 5, 6).double()
    sums = P._RiseSums(2, (5, 6), torch.device("cpu"), second=True)
    sums.add(torch.tensor([0, 1]), scores, masks)
    for b in range(2):
        f = scores[b]
        if estimator == "centred":
            terms = (f - f.mean())[:, None, None] * (masks - masks.mean(dim=0))
            smap = ((f - f.mean())[:, None, None] * masks).sum(0) / (30 * 0.4) + f.mean()
        else:
            terms = f[:, None, None] * masks
            smap = terms.sum(0) / (30 * 0.4)
        se = terms.std(dim=0) / (30**0.5 * 0.4)
        want = se.pow(2).mean().sqrt() / smap.flatten().std(correction=0)
        got = sums.noise_ratio(torch.tensor([b]), 0.4, estimator)[0]
        torch.testing.assert_close(got, want, rtol=1e-9, atol=0)


def test_cbrise_with_one_chunk_is_rise() -> None:
    model, images = small_model(), torch.rand(2, 3, 16, 16)
    tgt = E.resolve_target([1, 0], 2)
    maps, used = E.cbrise(model, images, tgt, max_masks=64, chunk=64, cells=4, seed=5)
    ref = E.rise(model, images, tgt, n_masks=64, chunk=64, cells=4, seed=5)
    torch.testing.assert_close(maps, ref)
    assert used.tolist() == [64, 64]


def test_cbrise_stops_each_image_on_its_own(device) -> None:
    """A constant model's map has no noise (its centred terms are 0 up to rounding): it
    stops at the first check, while images of a real model run on."""
    images = torch.rand(1, 3, 16, 16, device=device)
    maps, used = E.cbrise(Constant().to(device), images, E.resolve_target(0, 1),
                          max_masks=400, chunk=50, cells=4)
    assert used.tolist() == [50] and maps.device == images.device
    model = small_model().to(device)
    _, used = E.cbrise(model, torch.rand(2, 3, 16, 16, device=device),
                       E.resolve_target([0, 1], 2), max_masks=400, chunk=50, cells=4,
                       tol=1e-3)
    assert used.tolist() == [400, 400]


def _probability_of(cls: int, scale: float = 1.0, shift: float = 0.0):
    """A target callable: ``scale`` × the softmax probability of ``cls`` + ``shift``."""
    return lambda out: scale * out.softmax(dim=1)[:, cls] + shift


@pytest.mark.parametrize(("scale", "shift", "estimator"), [
    (10.0, 0.0, "centred"), (0.1, 0.0, "centred"), (1.0, 3.0, "centred"),
    (-2.0, 0.5, "centred"), (10.0, 0.0, "plain"), (0.1, 0.0, "plain"),
])
def test_cbrise_stops_alike_for_a_score_and_an_affine_copy_of_it(scale, shift,
                                                                  estimator) -> None:
    """Defect 8: the rule compared variances with an absolute 1e-3, so 10 × the probability
    ran longer (centred: 300-500 masks against 200; plain: the 1000 maximum against 300)
    and 0.1 × plain stopped sooner (200). Now: the same stop, and maps equal up to the
    same affine map. (The plain estimator, eq. 6, is not shift-invariant in itself: its
    noise grows with the mean score. It is far noisier here, so it gets a looser
    tolerance that still stops between the bounds.)"""
    model = small_model()
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    kw = dict(max_masks=1000, chunk=100, cells=4, seed=4, estimator=estimator)
    if estimator == "plain":
        kw["tol"] = 0.8
    maps, used = E.cbrise(model, images, E.resolve_target(_probability_of(1), 3), **kw)
    assert (used > kw["chunk"]).all() and (used < kw["max_masks"]).all(), used
    other, used2 = E.cbrise(model, images,
                            E.resolve_target(_probability_of(1, scale, shift), 3), **kw)
    assert used2.tolist() == used.tolist()
    torch.testing.assert_close(other, scale * maps + shift, rtol=1e-5, atol=1e-5 * abs(scale))


def test_unknown_estimator_is_an_error() -> None:
    with pytest.raises(ViscopeError, match="estimator"):
        E.rise(small_model(), torch.rand(1, 3, 16, 16), E.resolve_target(0, 1),
               n_masks=8, estimator="mean")


@pytest.mark.parametrize("tol", [0.0, -0.1, float("nan")])
def test_cbrise_tolerance_must_be_positive(tol) -> None:
    with pytest.raises(ViscopeError, match="Expected tol > 0"):
        E.cbrise(small_model(), torch.rand(1, 3, 16, 16), E.resolve_target(0, 1),
                 max_masks=8, tol=tol)


# --- defect 8's target on a trained model (slow) ---------------------------------------------

#: Held-out ``shapes`` test images not used when the default tol was chosen (images 0-31).
TARGET_IMAGES = range(32, 40)


@pytest.fixture(scope="module")
def trained_resnet(tmp_path_factory):
    """``test_resnet`` trained briefly on ``shapes`` as ``benchmarks/rise_convergence.py``
    does, and 8 held-out images."""
    import viscope.data
    from viscope.train import fit

    with torch.random.fork_rng():
        torch.manual_seed(0)
        trained = fit("test_resnet", "shapes", out=tmp_path_factory.mktemp("fit"), epochs=10,
                      n=2000, lr=3e-3, progress=False)
    test = viscope.data.create("shapes", split="test", n=2000, seed=0)
    images = torch.stack([test[i][0] for i in TARGET_IMAGES])
    return trained.model.eval(), images


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


@pytest.fixture(scope="module")
def against_rise_8000(trained_resnet):
    """``run(which)``: for the predicted or least likely class of the 8 images, two
    RISE-8000 maps (seeds 1, 2), their agreement ``r8``, CB-RISE at its defaults (seed 3),
    its masks and its correlation ``r`` with the second RISE-8000 map (computed once)."""
    model, images = trained_resnet
    cache: dict[str, dict] = {}

    def run(which: str) -> dict:
        if which not in cache:
            with torch.no_grad():
                logits = model(images)
            classes = logits.argmax(1) if which == "predicted" else logits.argmin(1)
            target = E.resolve_target(classes, len(images))
            kw = dict(cells=8, batch_size=500)
            ref1 = E.rise(model, images, target, n_masks=8000, seed=1, **kw)
            ref2 = E.rise(model, images, target, n_masks=8000, seed=2, **kw)
            maps, used = E.cbrise(model, images, target, seed=3, batch_size=500)
            cache[which] = {"classes": classes, "maps": maps, "used": used, "ref2": ref2,
                            "r8": _pearson(ref1, ref2), "r": _pearson(maps, ref2)}
        return cache[which]

    return run


def _report(res: dict) -> str:
    return " ".join(f"(r8 {a:.3f}, masks {int(n)}, r {b:.3f})"
                    for a, n, b in zip(res["r8"], res["used"], res["r"], strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("which", ["predicted", "least likely"])
def test_cbrise_at_its_defaults_keeps_its_promise(trained_resnet, against_rise_8000,
                                                  which) -> None:
    """What the stopping rule promises, on a trained model at the defaults. Two RISE-8000
    maps that agree at r8 put a ceiling on any map's agreement with one of them; a map
    stopped at relative standard error ``tol`` agrees at about ``sqrt((1 - tol^2) r8)``
    (checked on every image, to 0.02). The least likely class (p ~ 1e-3) stopped at the
    500-mask minimum with r = 0.66 under the old absolute tolerance: nothing may stop on
    its first chunk now. And the stop is the same for 10 × the probability."""
    import inspect

    tol = inspect.signature(E.cbrise).parameters["tol"].default
    res = against_rise_8000(which)
    promised = torch.minimum(((1 - tol**2) * res["r8"]).sqrt(), res["r8"])  # r8: ran to 8000
    assert (res["r"] >= promised - 0.02).all(), _report(res)
    assert (res["used"] > 250).all(), _report(res)

    model, images = trained_resnet
    scaled = [(lambda row, c=int(c): 10 * row.softmax(0)[c]) for c in res["classes"]]
    maps10, used10 = E.cbrise(model, images, E.resolve_target(scaled, len(images)), seed=3,
                              batch_size=500)
    assert used10.tolist() == res["used"].tolist()
    torch.testing.assert_close(maps10, 10 * res["maps"], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["predicted", "least likely"])
def test_a_third_of_the_masks_agrees_as_the_noise_model_says(trained_resnet, against_rise_8000,
                                                             which) -> None:
    """Why defect 8's literal target (on images whose two RISE-8000 runs agree at
    r8 >= 0.95, r >= 0.95 with RISE-8000 within a third of the masks) is out of reach for
    any stopping rule. Each map is the true map plus independent noise of variance
    sigma^2 / N; two 8000-mask maps agree at r8 = 1 / (1 + s), s = sigma^2 / (8000 var),
    and an N-mask map agrees with one of them at r8 / sqrt(r8 + (8000 / N)(1 - r8)),
    which at N = 2667 is below 0.95 unless r8 >= 0.974 (0.906 at r8 = 0.95). Checked
    here: RISE itself with 2667 masks agrees with RISE-8000 as that says (mean error
    within 0.01 over the images, each within 0.06); its maps are what any rule stopping
    there would return. Measured
    (benchmarks/rise_convergence.py, images 0-15), CB-RISE met the literal target on 7 of
    14 images (predicted class) and 5 of 14 (least likely)."""
    model, images = trained_resnet
    res = against_rise_8000(which)
    n = 8000 // 3
    third = E.rise(model, images, E.resolve_target(res["classes"], len(images)), n_masks=n,
                   seed=4, cells=8, batch_size=500)
    r = _pearson(third, res["ref2"])
    r8 = res["r8"]
    expected = r8 / (r8 + (8000 / n) * (1 - r8)).sqrt()
    error = r - expected
    # the mean error tells the model from "r = r8" (off by -0.018 / -0.024 here)
    assert error.mean().abs() <= 0.01 and error.abs().max() <= 0.06, (r.tolist(),
                                                                     expected.tolist())
    assert (expected[r8 < 0.974] < 0.95).all()  # the ceiling below which no rule gets there
