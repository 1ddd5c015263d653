"""``color-digits``: the grey digits recoloured per image, so that grayscale changes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from viscope import data, transforms
from viscope.data import ColorDigitsDataset, DigitsDataset
from viscope.errors import ViscopeError


@pytest.fixture(scope="module")
def pair() -> tuple[ColorDigitsDataset, DigitsDataset]:
    return ColorDigitsDataset(size=16), DigitsDataset(size=16)


def test_each_image_is_its_grey_digit_between_two_colours(pair):
    colour, grey = pair
    assert len(colour) == len(grey) and colour.targets == grey.targets
    for i in (0, 7, 1796):
        x, g = colour[i][0], grey[i][0][0]
        # per channel, the image is an affine map of the grey digit: bg + (fg - bg) * g
        for c in range(3):
            a = np.polyfit(g.flatten().numpy(), x[c].flatten().numpy(), 1)
            np.testing.assert_allclose(np.polyval(a, g.numpy()), x[c].numpy(), atol=1e-5)
            assert a[0] >= 0.3 - 1e-6  # the stroke is brighter by >= contrast in each channel
    images = torch.stack([colour[i][0] for i in range(0, 1797, 5)])
    assert images.min() >= 0 and images.max() <= 1


def test_colours_are_per_image_and_the_same_in_any_subset(pair):
    colour, _ = pair
    sub = data.create("color-digits", n=100, seed=0, size=16)
    for row in (0, 50, 99):
        source = int(sub.source_indices[row])
        assert torch.equal(sub[row][0], colour[source][0])
    backgrounds = torch.stack([colour[i][0][:, 0, 0] for i in range(200)])  # corner pixel
    assert backgrounds.std(0).min() > 0.05  # the background colour varies between images


def test_colour_says_nothing_of_the_class(pair):
    """Mean background colour per class: within a few standard errors of the overall mean."""
    colour, _ = pair
    corner = np.stack([colour[i][0][:, 0, 0].numpy() for i in range(len(colour))])
    labels = np.asarray(colour.targets)
    overall, spread = corner.mean(0), corner.std(0)
    for k in range(10):
        members = corner[labels == k]
        z = np.abs(members.mean(0) - overall) / (spread / np.sqrt(len(members)))
        assert z.max() < 4.5, (k, z)


def test_grayscale_changes_colour_digits_not_grey_ones(pair):
    colour, grey = pair
    fam = transforms.create("grayscale")
    for ds, changed in ((colour, True), (grey, False)):
        x = torch.stack([ds[i][0] for i in range(32)])
        moved = fam.apply(x, fam.grid(4)[-1:].repeat(32, *[1] * (fam.grid(4).ndim - 1)))
        assert bool((moved - x).abs().max() > 0.05) is changed


def test_contrast_is_checked():
    with pytest.raises(ViscopeError, match="contrast between 0 and 0.6"):
        ColorDigitsDataset(contrast=0.9)
