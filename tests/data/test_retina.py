"""The ``retina-quality`` dataset: determinism, degradation masks against the undegraded
render, known answers per degradation, structure masks against the photograph, the
weakness of brightness as a cue, errors and speed."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from viscope import data
from viscope.data import retina_render
from viscope.data.retina import BANDS, CLASSES, KINDS, RetinaQuality, render, sample_params
from viscope.errors import ViscopeError

TOL = 1 / 255  # a change smaller than one 8-bit grey level does not count


@pytest.fixture(scope="module")
def retina() -> RetinaQuality:
    return RetinaQuality(n=300, size=64, seed=0)


def _params(seed: int, indices: range | list[int]) -> list:
    return [sample_params(seed, i) for i in indices]


def test_items_types_and_protocol(retina: RetinaQuality) -> None:
    image, label, mask = retina[4]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert mask.shape == (1, 64, 64) and mask.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}
    assert retina.classes == list(CLASSES) and retina.has_masks
    assert label == retina.targets[4] == 4 % 3
    assert np.bincount(retina.targets).tolist() == [100, 100, 100]
    for accessor in (retina.degradation_masks, retina.structure_masks, retina.fov_masks):
        masks = accessor([4, 0, 7])
        assert masks.shape == (3, 1, 64, 64) and masks.dtype == torch.float32
        assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}
    assert torch.equal(retina.degradation_masks([4])[0], mask)


def test_params_follow_the_class_bands(retina: RetinaQuality) -> None:
    counts = {"good": set(), "usable": set(), "reject": set()}
    for i in range(len(retina)):
        p = retina.params(i)
        assert p.grade == CLASSES[p.label] and p.label == retina.targets[i]
        counts[p.grade].add(len(p.degradations))
        kinds = [k for k, _ in p.degradations]
        assert len(set(kinds)) == len(kinds) == len(p.regions)
        band = BANDS[p.grade]
        for _, strength in p.degradations:
            assert band is not None and band[0] <= strength <= band[1]
    assert counts == {"good": {0}, "usable": {1}, "reject": {1, 2}}
    assert BANDS["usable"][1] + 0.1 < BANDS["reject"][0]  # a gap: no ambiguous item


def test_same_seed_same_pixels_and_item_alone_equals_item_in_batch(retina: RetinaQuality) -> None:
    small = RetinaQuality(n=13, size=64, seed=0)
    lazy = RetinaQuality(n=300, size=64, seed=0, cache=False)
    for i in (0, 5, 12):
        for ds in (small, lazy):
            assert torch.equal(ds[i][0], retina[i][0]) and torch.equal(ds[i][2], retina[i][2])
            assert torch.equal(ds.structure_masks([i]), retina.structure_masks([i]))
    assert torch.equal(lazy[299][0], retina[299][0])
    # one item alone and inside a batch of others, in another order
    params = _params(0, [5, 1, 2, 8, 11])
    alone, batch = render(params[:1], 64), render(params, 64)
    assert all(torch.equal(alone[k][0], batch[k][0]) for k in alone)
    other = RetinaQuality(n=13, size=64, seed=1)
    assert (other[0][0] - small[0][0]).abs().mean() > 0.02


def test_degradation_masks_cover_exactly_the_changed_pixels() -> None:
    params = [p for p in _params(3, range(240)) if p.degradations]
    clean, dirty = render(params, 64, degrade=False), render(params, 64)
    diff = (dirty["images"] - clean["images"]).abs().amax(1, keepdim=True)
    mask = dirty["degradation"]
    assert torch.all(diff[~mask] <= 1e-6)  # nothing changes outside the mask
    assert torch.all(mask <= dirty["fov"])
    share = ((diff > TOL) & mask).sum((1, 2, 3)) / mask.sum((1, 2, 3))
    for p, s in zip(params, share.tolist(), strict=True):
        # measured minimum: blur 0.44 (it changes little where the fundus is flat),
        # occlusion 0.85, illumination 0.93, haze 0.95, the others >= 0.99
        least = 0.4 if any(k == "blur" for k, _ in p.degradations) else 0.8
        assert s >= least, (p.degradations, s)
    covered = {k for p in params for k, _ in p.degradations}
    assert covered == set(KINDS)


def test_good_items_are_undegraded_views() -> None:
    params = [p for p in _params(0, range(30)) if p.grade == "good"]
    clean, dirty = render(params, 64, degrade=False), render(params, 64)
    assert not dirty["degradation"].any()
    assert torch.equal(clean["images"], dirty["images"])
    # outside the field of view stays black
    assert torch.all(dirty["images"] * ~dirty["fov"] == 0)


def _one(kind: str, strength: float, region: tuple = ()) -> list:
    base = sample_params(0, 0)  # a good item: its view, nothing else
    return [replace(base, degradations=((kind, strength),), regions=(region,))]


@pytest.mark.parametrize(
    ("kind", "gain", "offset"),
    [("underexposure", 1 - 0.7 * 0.8, 0.0), ("overexposure", 1 + 1.2 * 0.4, 0.1 * 0.4)],
)
def test_exposure_is_the_documented_gain(kind: str, gain: float, offset: float) -> None:
    s = 0.8 if kind == "underexposure" else 0.4
    clean, dirty = render(_one(kind, s), 64, degrade=False), render(_one(kind, s), 64)
    fov = clean["fov"].expand(-1, 3, -1, -1)
    expected = (clean["images"] * gain + offset).clamp(0, 1)[fov]
    torch.testing.assert_close(dirty["images"][fov], expected, atol=1e-6, rtol=0)
    assert torch.equal(dirty["degradation"], clean["fov"])


def test_global_blur_matches_scipy_gaussian_filter() -> None:
    s, size = 0.8, 64
    a, b = retina_render.BLUR_SIGMA
    sigma = (a + b * s**2) * size  # the documented map, written out again
    clean, dirty = render(_one("blur", s), size, degrade=False), render(_one("blur", s), size)
    radius = int(np.ceil(3 * (a + b) * size))
    ref = ndimage.gaussian_filter(
        clean["images"][0].numpy(), sigma=(0, sigma, sigma), mode="constant",
        truncate=radius / sigma,
    )
    fov = clean["fov"][0, 0].numpy()
    err = np.abs(dirty["images"][0].numpy() - ref)[:, fov]
    assert err.max() < 1e-5


def test_regional_degradation_stays_in_its_region() -> None:
    # a shadow beyond x = 0.2 (FOV coordinates, view without rotation) ramped over 0.5
    base = replace(sample_params(0, 0), angle=0.0, flip_h=False, flip_v=False, zoom=1.0,
                   centre=(0.0, 0.0))
    q = [replace(base, degradations=(("illumination", 0.9),), regions=((0.0, 0.2, 0.5),))]
    clean, dirty = render(q, 64, degrade=False), render(q, 64)
    x = retina_render.fov_coordinates(q, 64)[0, ..., 0]
    mask = dirty["degradation"][0, 0]
    fov = dirty["fov"][0, 0]
    assert torch.equal(mask, fov & (x > 0.2))
    ratio = dirty["images"][0, 0] / clean["images"][0, 0].clamp_min(1e-6)
    full = fov & (x > 0.75) & (clean["images"][0, 0] > 0.05)
    torch.testing.assert_close(ratio[full], torch.full_like(ratio[full], 1 - 0.9 * 0.9),
                               atol=1e-4, rtol=0)


def test_structure_masks_lie_on_the_structures(retina: RetinaQuality) -> None:
    good = [i for i in range(len(retina)) if retina.targets[i] == 0][:40]
    images = torch.stack([retina[i][0] for i in good]).numpy()
    structures = retina.structure_masks(good)[:, 0].numpy().astype(bool)
    fov = retina.fov_masks(good)[:, 0].numpy().astype(bool)
    assert np.all(structures <= fov)
    share = structures.sum((1, 2)) / fov.sum((1, 2))
    # measured at 64 px: 12.5 to 15 % of the FOV (1-px vessel lines, plus the disc)
    assert share.min() > 0.08 and share.max() < 0.2, share
    # Vessels are darker in green than their surroundings (local contrast: green minus
    # its 7x7 mean, as the fundus is brighter near the disc) and the disc is brighter:
    # the masks were warped with the image.
    green = images[:, 1]
    local = green - ndimage.uniform_filter(green, size=(1, 7, 7))
    inner = np.stack([ndimage.binary_erosion(f, iterations=3) for f in fov])
    coords = retina_render.fov_coordinates([retina.params(i) for i in good], 64).numpy()
    dx, dy = retina_render.base_photograph()["disc"]
    radius = retina_render.DISC_RADIUS
    disc = ((coords[..., 0] - dx) ** 2 + (coords[..., 1] - dy) ** 2 <= radius**2) & fov
    vessels, rest = structures & ~disc & inner, inner & ~structures
    lum = images.mean(1)
    for k in range(len(good)):
        # measured: vessels -0.027 to -0.034 below the rest
        assert local[k][vessels[k]].mean() < local[k][rest[k]].mean() - 0.015
        if disc[k].sum() > 20:  # the disc in frame
            assert lum[k][disc[k]].mean() > lum[k][rest[k]].mean() + 0.1


def test_vessels_are_a_plausible_share_of_the_base_fov() -> None:
    base = retina_render.base_photograph()
    share = base["vessels"][base["fov"]].mean()
    assert 0.05 < share < 0.15, share  # measured 0.08; manual segmentations: ~0.08-0.12


def test_mean_brightness_barely_tells_the_classes_apart() -> None:
    """Per-channel means (inside the FOV and over the frame), logistic regression,
    5-fold CV: far below what a CNN reaches (>= 0.93), if above chance (0.33)."""
    ds = RetinaQuality(n=600, size=64, seed=2)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    fov = ds.fov_masks(range(len(ds)))
    inside = (images * fov).sum((2, 3)) / fov.sum((2, 3))
    features = torch.cat([inside, images.mean((2, 3))], 1).numpy()
    acc = cross_val_score(LogisticRegression(max_iter=2000), features, ds.targets, cv=5).mean()
    assert acc <= 0.7, acc  # measured 0.61 (seed 2, 600 images); tiny CNN: 0.89-0.97


def test_create_and_stratified_split() -> None:
    train = data.create("retina-quality", split="train", n=90, size=64, seed=0)
    assert isinstance(train.dataset, RetinaQuality) and train.dataset.size == 64
    assert np.bincount(train.targets).tolist() == [21, 21, 21]
    fov = train.dataset.fov_masks(train.indices[:4])
    assert fov.shape == (4, 1, 64, 64)
    two = data.create("retina-quality", n=20, size=64, classes=["good", "reject"])
    assert two.classes == ["good", "reject"] and two.params(1).grade == "reject"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seed": -1}, "seed to be a non-negative integer"),
        ({"seed": 1.5}, "seed to be a non-negative integer"),
        ({"size": 16}, "size to be an int from 32 to 512"),
        ({"size": 1024}, "size to be an int from 32 to 512"),
        ({"size": 64.0}, "size to be an int from 32 to 512"),
        ({"n": 0}, "n to be a positive int"),
        ({"n": 2.5}, "n to be a positive int"),
        ({"classes": ("good", "bad")}, "distinct names among good, usable, reject"),
        ({"classes": ("good", "good")}, "distinct names among good, usable, reject"),
        ({"classes": ()}, "distinct names among good, usable, reject"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ViscopeError, match=match):
        RetinaQuality(**{"n": 4, "size": 64, **kwargs})


def test_render_600_images_at_64px_under_3s() -> None:
    """The photograph is loaded once per process (about 1 s, not timed); measured
    0.45 to 0.6 s on 2 shared CPU cores; the minimum of up to 3 runs counts."""
    retina_render.base_photograph()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        RetinaQuality(n=600, size=64, seed=0)
        best = min(best, time.perf_counter() - start)
        if best < 3.0:
            break
    assert best < 3.0
