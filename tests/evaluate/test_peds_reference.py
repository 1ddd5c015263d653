"""PEDS against a plain per-image loop with scipy's binary erosion/dilation."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from viscope.evaluate import peds


def brute_peds(model, image, smap, label, threshold=0.5, low=0.01, high=0.95):
    """One image, written as the definition reads (black baseline, 3x3 square kernel)."""
    k = np.ones((3, 3), bool)
    region = smap >= threshold
    regions = [region]
    for grow in (False, True):
        r = region
        while not ((r.mean() >= high) if grow else (r.mean() <= low)):
            moved = (ndimage.binary_dilation(r, k) if grow
                     else ndimage.binary_erosion(r, k, border_value=1))
            if (moved == r).all():  # empty regions cannot grow, full ones cannot shrink
                break
            r = moved
            regions.append(r)
    regions += [np.zeros_like(region), np.ones_like(region)]
    points = []
    for r in regions:
        kept = image * torch.from_numpy(r.astype(np.float64))
        with torch.no_grad():
            p = torch.softmax(model(kept[None]), 1)[0, label].item()
        points.append((r.mean(), p))
    points.sort(key=lambda t: t[0])
    x = np.array([t[0] for t in points])
    y = np.array([t[1] for t in points])
    y = (y - y.min()) / (y.max() - y.min() + 1e-12)
    return float(np.trapezoid(y, x))


def test_peds_equals_per_image_loop_and_batch_equals_singles():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                          nn.Flatten(), nn.Linear(16, 3)).double().eval()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, 20, 20, generator=g, dtype=torch.float64)
    maps = torch.rand(4, 20, 20, generator=g, dtype=torch.float64)
    maps = torch.nn.functional.avg_pool2d(maps[:, None], 5, 1, 2)[:, 0]  # blobs, not noise
    maps = (maps - maps.amin((1, 2), keepdim=True)) / (
        maps.amax((1, 2), keepdim=True) - maps.amin((1, 2), keepdim=True))
    # regions of very different sizes, so images need different numbers of steps
    maps = torch.stack([maps[0] ** 6, maps[1], maps[2] ** 0.5, maps[3] ** 0.1])
    labels = torch.tensor([0, 1, 2, 1])
    ours = peds(model, images, maps, labels)
    ref = [brute_peds(model, images[i], maps[i].numpy(), int(labels[i])) for i in range(4)]
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6, atol=1e-9)
    singles = torch.cat([peds(model, images[i:i + 1], maps[i:i + 1], labels[i:i + 1])
                         for i in range(4)])
    torch.testing.assert_close(ours, singles)


def test_peds_follows_the_region_as_far_as_it_must_go():
    """At 96 px a one-pixel region in a corner needs 92 dilation steps to cover 95 %
    (a 64-step cap once cut the curve short); a map with no pixel below the threshold
    cannot erode and must not add repeated points."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                          nn.Flatten(), nn.Linear(16, 3)).double().eval()
    g = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, 96, 96, generator=g, dtype=torch.float64)
    maps = torch.zeros(2, 96, 96, dtype=torch.float64)
    maps[0, 0, 0] = 1.0
    maps[1] = 1.0
    labels = torch.tensor([2, 0])
    ours = peds(model, images, maps, labels)
    ref = [brute_peds(model, images[i], maps[i].numpy(), int(labels[i])) for i in range(2)]
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6, atol=1e-9)
    capped = peds(model, images[:1], maps[:1], labels[:1], max_steps=64)
    assert abs(float(capped[0]) - ref[0]) > 1e-4  # the cap did change the score
