"""Pseudo-masks: flip/scale aggregation equals averaging maps made by hand with
``attribute``; the Otsu region equals scikit-image's; the guided refinement equals a NumPy
guided filter; the whole step equals its parts written out."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view
from skimage.filters import threshold_otsu

from viscope import models
from viscope.data.base import IGNORE
from viscope.errors import ViscopeError
from viscope.explain import attribute
from viscope.weakseg import pseudo as P

# a random network's Grad-CAM has no positive evidence in some views: attribute says so
pytestmark = pytest.mark.filterwarnings("ignore:gradcam map at layer:UserWarning")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return models.create("test_resnet", num_classes=3).eval()


def _images(b=5, size=32, seed=0):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _minmax(m):
    lo = m.amin(dim=(-2, -1), keepdim=True)
    return (m - lo) / (m.amax(dim=(-2, -1), keepdim=True) - lo)


def _by_hand(model, images, classes, layer, scales, flip, method="gradcam"):
    """Each view's maps from attribute on the whole batch, mapped back, averaged, scaled."""
    h, w = images.shape[-2:]
    views = []
    for s in scales:
        for flipped in ((False, True) if flip else (False,)):
            x = images.flip(-1) if flipped else images
            size = (round(h * s), round(w * s))
            if s != 1:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            m = attribute(model, x, method, layer, classes)
            if s != 1:
                m = F.interpolate(m[:, None], size=(h, w), mode="bilinear",
                                  align_corners=False)[:, 0]
            views.append(m.flip(-1) if flipped else m)
    return _minmax(torch.stack(views).mean(0))


@pytest.mark.parametrize("scales, flip", [((1.0,), True), ((1.0, 0.75, 1.5), False),
                                          ((1.0, 0.5), True)])
def test_flip_and_scale_aggregation_equals_averaging_hand_made_maps(net, device, scales, flip):
    model, images = net.to(device), _images().to(device)
    classes = [0, 2, 1, 1, 0]
    got = P.class_maps(model, images, classes, layer="layer1", scales=scales, flip=flip,
                       batch_size=2)  # batches of 2 (and one of 1): targets sliced along
    want = _by_hand(model, images, classes, "layer1", scales, flip)
    assert got.shape == (5, 32, 32) and got.device.type == device.type
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got.amin(dim=(1, 2)) == 0).all() and (got.amax(dim=(1, 2)) == 1).all()  # no blank
    # the flip changes the result (the network is not symmetric), so it is tested
    if flip and scales == (1.0,):
        plain = P.class_maps(model, images, classes, layer="layer1")
        assert (plain - got).abs().max() > 1e-2


def test_predicted_class_is_fixed_on_the_original_images(net):
    images = _images(seed=1)
    with torch.no_grad():
        classes = net(images).argmax(1)
    got = P.class_maps(net, images, None, flip=True, batch_size=3)
    want = _by_hand(net, images, classes, "auto", (1.0,), True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_empty_maps_are_named_in_one_warning(net):
    """layer4 of test_resnet is a 1x1 grid at 32 px: every view of every image is empty.
    attribute would warn per batch and view with batch-local indices; class_maps warns once."""
    with pytest.warns(UserWarning) as record:
        maps = P.class_maps(net, _images(b=5), 0, layer="layer4", flip=True, batch_size=2)
    assert not maps.any()
    assert len(record) == 1
    assert "empty" in str(record[0].message) and "5 of 5 images [0, 1, 2, 3, 4]" in str(
        record[0].message)
    broken = copy.deepcopy(net)
    with torch.no_grad():
        models.unwrap(broken).get_classifier().weight[0, 0] = float("nan")
    with pytest.warns(UserWarning, match=r"not finite \(NaN or inf\) for 2 of 2 images"):
        P.class_maps(broken, _images(b=2), 0, layer="layer1")
    net.train()
    try:
        with pytest.warns(UserWarning, match="training mode") as record:
            P.class_maps(net, _images(b=2), 0, layer="layer1")
        assert len(record) == 1
    finally:
        net.eval()


def test_other_methods_pass_through(net):
    images = _images(b=2)
    got = P.class_maps(net, images, 1, method="saliency", layer="auto", flip=True)
    want = _by_hand(net, images, 1, None, (1.0,), True, method="saliency")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_roi_otsu_equals_skimage_on_the_grey_image(device):
    g = torch.Generator().manual_seed(2)
    yy, xx = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    disc = ((yy - 12) ** 2 + (xx - 9) ** 2 < 64).float()
    grey = (0.1 + 0.6 * disc + 0.1 * torch.rand(3, 24, 24, generator=g))[:, None]
    got = P.roi_otsu(grey.to(device)).cpu()
    for i in range(3):
        img = grey[i, 0].double().numpy()
        assert np.array_equal(got[i, 0].numpy(), img > threshold_otsu(img))
    assert torch.equal(got[:, 0], disc.bool().expand(3, -1, -1))  # the known foreground
    rgb = torch.rand(2, 3, 24, 24, generator=g)
    luma = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]).double().numpy()
    got = P.roi_otsu(rgb.to(device)).cpu()
    for i in range(2):
        want = luma[i] > threshold_otsu(luma[i])
        assert (got[i, 0].numpy() != want).sum() <= 1  # float32 luma vs float64: at the cut


def test_roi_otsu_largest_component():
    img = torch.zeros(1, 1, 12, 12)
    img[..., 1:7, 1:7] = 1.0  # 36 pixels
    img[..., 9:11, 9:11] = 1.0  # a 4-pixel speck
    roi = P.roi_otsu(img, largest=True)
    assert roi.sum() == 36 and roi[..., 1:7, 1:7].all()
    assert P.roi_otsu(img).sum() == 40
    assert not P.roi_otsu(torch.zeros(1, 1, 4, 4), largest=True).any()  # constant: no region


def _box(x, r):
    """Window means of side 2r + 1 with reflected borders (no edge repeat)."""
    return sliding_window_view(np.pad(x, r, mode="reflect"), (2 * r + 1, 2 * r + 1)).mean((-2, -1))


def _guided(guide, p, r, eps):
    """He et al. (2010), Algorithm 1, for a grey guide."""
    mean_i, mean_p = _box(guide, r), _box(p, r)
    a = (_box(guide * p, r) - mean_i * mean_p) / (_box(guide * guide, r) - mean_i ** 2 + eps)
    b = mean_p - a * mean_i
    return _box(a, r) * guide + _box(b, r)


def test_guided_refinement_equals_a_numpy_guided_filter(device):
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 1, 20, 24, generator=g, dtype=torch.float64)
    images[..., :, 12:] += 0.8  # an edge the map should follow
    images /= images.amax()
    maps = torch.rand(2, 20, 24, generator=g, dtype=torch.float64)
    got = P.refine(maps.to(device), images.to(device), "guided", radius=3, eps=1e-3).cpu()
    for i in range(2):
        q = np.clip(_guided(images[i, 0].numpy(), maps[i].numpy(), 3, 1e-3), 0, 1)
        want = (q - q.min()) / (q.max() - q.min())
        np.testing.assert_allclose(got[i].numpy(), want, atol=1e-9)
    # masks stay masks: filtered as 0/1, kept where >= 0.5
    masks = maps[:, None] > 0.5
    got = P.refine(masks, images, "guided", radius=3, eps=1e-3)
    want = [_guided(images[i, 0].numpy(), masks[i, 0].double().numpy(), 3, 1e-3) >= 0.5
            for i in range(2)]
    assert got.dtype == torch.bool and got.shape == masks.shape
    assert np.array_equal(got[:, 0].numpy(), np.stack(want))
    assert P.refine(maps, images, "none") is maps


def test_pseudo_masks_equal_their_parts_written_out(net):
    images = _images(b=4, seed=4)
    images[:, :, :, :6] = 0.0  # a dark margin outside the "breast"
    classes = [1, 1, 2, 0]
    maps = _by_hand(net, images, classes, "auto", (1.0,), True)
    grey = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).double()
    roi = torch.stack([g > threshold_otsu(g.numpy()) for g in grey])
    assert not roi[..., :6].any() and roi.any()

    out = P.pseudo_masks(net, images, classes, flip=True, roi="otsu", threshold="fixed",
                         value=0.4)
    torch.testing.assert_close(out.maps, maps, atol=1e-5, rtol=0)
    assert (out.roi[:, 0] != roi).sum() <= 2  # float32 luma vs float64, at the cut
    fixed = ((out.maps >= 0.4) & out.roi[:, 0]).float()
    assert torch.equal(out.masks[:, 0], fixed) and out.masks.dtype == torch.float32

    given = torch.ones(4, 1, 32, 32, dtype=torch.bool)
    given[..., :16, :] = False
    band = P.pseudo_masks(net, images, classes, flip=True, roi=given, band=(0.3, 0.6))
    m = band.maps
    want = torch.where(m >= 0.6, 1.0, torch.where(m <= 0.3, 0.0, IGNORE))
    want[~given[:, 0]] = 0.0
    assert torch.equal(band.masks[:, 0], want) and (band.masks == IGNORE).any()

    otsu = P.pseudo_masks(net, images, classes, flip=True)  # whole image, Otsu per map
    for i in range(4):
        cut = threshold_otsu(otsu.maps[i].double().numpy())
        assert torch.equal(otsu.masks[i, 0], (otsu.maps[i].double() > cut).float())
    assert otsu.roi.all()

    refined = P.pseudo_masks(net, images, classes, flip=True, threshold="percentile", value=80,
                             refine="guided", refine_options={"radius": 2})
    want = P.refine(maps, images, "guided", radius=2)
    torch.testing.assert_close(refined.maps, want, atol=1e-5, rtol=0)
    assert refined.masks.mean().item() == pytest.approx(0.2, abs=0.02)


IMAGES = torch.rand(2, 3, 16, 16)


@pytest.mark.parametrize("call, match", [
    (lambda m: P.class_maps(m, IMAGES, 0, method="gradcamm"), "Did you mean 'gradcam'"),
    (lambda m: P.class_maps(m, IMAGES, 0, scales=(1.0, 0.0)), "positive numbers"),
    (lambda m: P.class_maps(m, IMAGES, 0, scales=()), "positive numbers"),
    (lambda m: P.class_maps(m, IMAGES, 0, batch_size=0), "batch_size"),
    (lambda m: P.class_maps(m, IMAGES[0], 0), r"\(B, C, H, W\)"),
    (lambda m: P.class_maps(m, IMAGES, [0, 1, 2]), "one target per image"),
    (lambda m: P.class_maps(m, IMAGES, 0, layer="nope"), "nope"),
    (lambda m: P.class_maps(m, IMAGES, 0, nope=1), "takes no option"),
    (lambda m: P.roi_otsu(torch.rand(2, 2, 8, 8)), "grey .* or RGB"),
    (lambda m: P.roi_otsu(torch.full((1, 1, 8, 8), float("nan"))), "finite"),
    (lambda m: P.refine(torch.rand(2, 16, 16), IMAGES, "crf"), "refine method one of"),
    (lambda m: P.refine(torch.rand(2, 16, 16), IMAGES[:, :, :8], "guided"), "matching the maps"),
    (lambda m: P.refine(torch.rand(2, 16, 16), IMAGES, "guided", radius=16), "radius"),
    (lambda m: P.refine(torch.rand(2, 16, 16), IMAGES, "guided", eps=0), "eps > 0"),
    (lambda m: P.refine(torch.full((2, 16, 16), IGNORE), IMAGES, "guided"), r"in \[0, 1\]"),
    (lambda m: P.pseudo_masks(m, IMAGES, 0, roi="breast"), "roi None, 'otsu'"),
    (lambda m: P.pseudo_masks(m, IMAGES, 0, threshold="fixed", value=2), r"in \[0, 1\]"),
])
def test_bad_input_is_one_line_error(net, call, match):
    with pytest.raises(ViscopeError, match=match) as err:
        call(net)
    assert "\n" not in str(err.value)
