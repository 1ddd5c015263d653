"""Known answers on a small CNN trained on ``shapes`` (slow: trains for about a minute)."""

from __future__ import annotations

import pytest
import torch

import viscope.evaluate as V
import viscope.explain as E


@pytest.mark.slow
def test_gradcam_points_at_the_shape(shapes_model) -> None:
    model, images, labels, masks = shapes_model
    with torch.no_grad():
        assert (model(images).argmax(1) == labels).float().mean() >= 0.8
    maps = E.attribute(model, images, "gradcam", layer="13", target=labels)
    # the pointing game's 15 px tolerance at 224 px, scaled to 32 px (2.14 px, Euclidean)
    hits = V.pointing_game(maps, masks, tolerance=15 * 32 / 224).float().mean()
    assert hits >= 0.8


@pytest.mark.slow
def test_cbrise_converges_to_rise_with_a_third_of_the_masks(shapes_model) -> None:
    """Every image, 4 × 4 mask cells (8 px at 32 px), both with the default (centred)
    estimator. Measured on 16 images: 500-1750 masks, correlation 0.971-0.997."""
    model, images, labels, _ = shapes_model
    images, labels = images[:8], labels[:8]
    target = E.resolve_target(labels, 8)
    reference = E.rise(model, images, target, n_masks=8000, cells=4, batch_size=500, seed=1)
    maps, used = E.cbrise(model, images, target, max_masks=8000, cells=4, batch_size=500,
                          seed=2)
    assert (used <= 8000 // 3).all(), used
    r = torch.stack([torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
                     for a, b in zip(maps, reference, strict=True)])
    assert (r >= 0.95).all(), (r, used)
