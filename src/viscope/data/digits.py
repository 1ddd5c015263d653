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
