"""``digits``: scikit-learn's 1797 handwritten 8x8 digits, as RGB images (no download)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from viscope.data.base import Item, VisionDataset, check_seed
from viscope.errors import ViscopeError

DIGITS_COUNT = 1797
_DIGITS_MAX = 16.0  # pixel values in sklearn's digits are 0..16


class DigitsDataset(VisionDataset):
    """scikit-learn's ``load_digits`` upsampled (bilinear) to RGB ``size`` x ``size``.

    Items are ``(image, label)``: grey images repeated over 3 channels, in [0, 1];
    labels 0..9 in scikit-learn's order. No masks.

    Args:
        size: Image side in pixels (at least 8).
        n: Keep a seeded random subset of ``n`` items (in their original order);
            ``None`` keeps all 1797.
        seed: Seed of that subset (unused when ``n`` is ``None``).

    Raises:
        ViscopeError: ``size`` or ``n`` is out of range.

    Example:
        >>> ds = DigitsDataset(size=16)
        >>> image, label = ds[0]
        >>> len(ds), tuple(image.shape), label
        (1797, (3, 16, 16), 0)
    """

    def __init__(self, size: int = 32, n: int | None = None, seed: int = 0) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 8:
            raise ViscopeError(f"Expected digits image size to be an int >= 8; got {size!r}.")
        bunch = load_digits()
        index = np.arange(DIGITS_COUNT)
        if n is not None:
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= DIGITS_COUNT:
                raise ViscopeError(
                    f"Expected digits n between 1 and {DIGITS_COUNT}; got {n!r}. "
                    "Pass n=None for all of them."
                )
            index = np.sort(np.random.default_rng(check_seed(seed)).permutation(DIGITS_COUNT)[:n])
        grey = torch.from_numpy(bunch.images[index].astype(np.float32) / _DIGITS_MAX)[:, None]
        grey = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False)
        self._grey = grey.clamp_(0.0, 1.0).contiguous()
        self.source_indices = index
        self.size = size
        self.classes = [str(d) for d in range(10)]
        self.has_masks = False
        self.targets = [int(t) for t in bunch.target[index]]

    def _item(self, index: int) -> Item:
        return self._grey[index].repeat(3, 1, 1), self.targets[index]


def stroke_colours(seed: int, source_indices: np.ndarray, contrast: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A foreground and a background RGB colour per image, (n, 3) each, in [0, 1].

    Drawn from a generator seeded with ``(seed, index)``, so an image keeps its colours
    in every subset and split: the background uniformly in [0, 0.4]^3, the stroke
    brighter in every channel by between ``contrast`` and all the headroom (uniform), so
    hue and saturation vary while the digit keeps its polarity in each channel (strokes
    whose polarity flips between channels leave tiny models at chance within the
    demo's epochs).
    """
    fg, bg = np.empty((len(source_indices), 3)), np.empty((len(source_indices), 3))
    for row, index in enumerate(source_indices):
        rng = np.random.default_rng([seed, int(index)])
        back = rng.uniform(0.0, 0.4, 3)
        room = 1.0 - back
        fg[row] = back + rng.uniform(np.minimum(contrast, room), room)
        bg[row] = back
    return fg, bg


class ColorDigitsDataset(DigitsDataset):
    """``digits`` drawn in colour: each image has its own foreground and background colour.

    An image is ``background * (1 - g) + foreground * g`` for the grey digit ``g`` of
    :class:`DigitsDataset`; the two colours are drawn per image (seeded, independent of
    the label; see :func:`stroke_colours`), the stroke brighter than the background by at
    least ``contrast`` in every channel. Colour carries no class information, so a model must
    learn to ignore it — and every photometric family, grayscale included, changes the
    images (on grey digits grayscale is the identity).

    Args:
        size: Image side in pixels (at least 8).
        n: Keep a seeded random subset of ``n`` items; ``None`` keeps all 1797.
        seed: Seed of that subset and of the colours.
        contrast: Least difference between stroke and background in each channel (0 to
            0.6).

    Example:
        >>> ds = ColorDigitsDataset(size=16)
        >>> image, label = ds[0]
        >>> tuple(image.shape), label, bool((image[0] != image[1]).any())
        ((3, 16, 16), 0, True)
    """

    def __init__(self, size: int = 32, n: int | None = None, seed: int = 0,
                 contrast: float = 0.3) -> None:
        if isinstance(contrast, bool) or not isinstance(contrast, int | float) \
                or not 0 <= contrast <= 0.6:
            raise ViscopeError(f"Expected contrast between 0 and 0.6 (how much brighter the "
                               f"stroke is than the background per channel); got {contrast!r}.")
        super().__init__(size=size, n=n, seed=seed)
        fg, bg = stroke_colours(check_seed(seed), self.source_indices, float(contrast))
        self._fg = torch.from_numpy(fg.astype(np.float32))[:, :, None, None]
        self._bg = torch.from_numpy(bg.astype(np.float32))[:, :, None, None]
        self.contrast = float(contrast)

    def _item(self, index: int) -> Item:
        g = self._grey[index]
        image = self._bg[index] * (1 - g) + self._fg[index] * g
        return image.clamp_(0.0, 1.0), self.targets[index]
