"""Known answers on small CNNs trained on ``shapes`` (slow: each trains for minutes)."""

from __future__ import annotations

import pytest
import torch

import viscope.data
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
    estimator, tol 0.25. Measured on 16 images: 250-1000 masks, correlation 0.967-0.993."""
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


@pytest.mark.slow
def test_readme_explain_example_points_at_the_shapes(tmp_path) -> None:
    """The README's explain example, end to end: test_resnet trained on ``shapes`` as its
    ``viscope train`` line says, Grad-CAM at ``layer="auto"`` on the 300 test images.

    At 32 px auto used to be ``layer4`` (1 x 1): a map of rounding noise. Measured on this
    CPU: auto = layer2 (4 x 4), test accuracy 0.89, pointing game 0.58 against 0.32 for a
    random point (0.39 against 0.21 without tolerance).
    """
    from viscope import models, train

    train.fit("test_resnet", "shapes", out=tmp_path, epochs=10, lr=0.005, batch_size=32,
              progress=False)
    model = models.create(tmp_path / "best.pt").eval()
    ds = viscope.data.create("shapes", split="test")
    items = [ds[i] for i in range(len(ds))]
    images = torch.stack([it[0] for it in items])
    labels = torch.tensor([it[1] for it in items])
    masks = torch.stack([it[2] for it in items])
    assert E.auto_layer(model, (32, 32)) == "layer2"
    maps = E.attribute(model, images, "gradcam", layer="auto", target=labels)
    varied = torch.tensor([len(torch.unique(m)) > 10 for m in maps])
    assert varied.float().mean() > 0.95  # a few all-negative maps are all zero
    tol = 15 * 32 / 224
    hits = V.pointing_game(maps, masks, tolerance=tol).float().mean()
    # a random point's chance: the share of pixels closer than tol to the mask, by brute force
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    grid = torch.stack([rows.flatten(), cols.flatten()], dim=1)
    chance = torch.stack([
        ((torch.cdist(grid, m[0].nonzero().float()) < tol).any(dim=1)
         | m[0].flatten().bool()).float().mean() for m in masks]).mean()
    assert hits >= chance + 0.1, (hits, chance)
