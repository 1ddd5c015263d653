"""``faces``: scikit-image's LFW subset, 100 faces and 100 non-faces (no download).

``skimage.data.lfw_subset()`` ships inside scikit-image: 200 grey 25x25 crops of the
Labeled Faces in the Wild database, the first 100 faces and the next 100 background
patches from the same photographs (see its docstring).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from viscope.data.base import Item, VisionDataset, check_seed
from viscope.errors import ViscopeError

FACES_COUNT = 200
_FACES_FIRST = 100  # lfw_subset(): the first 100 images are faces, the rest are not


class FacesDataset(VisionDataset):
    """scikit-image's ``lfw_subset`` upsampled (bilinear) to RGB ``size`` x ``size``.

    Items are ``(image, label)``: grey images repeated over 3 channels, in [0, 1];
    label 1 for a face, 0 for a non-face (``classes == ["non-face", "face"]``). No masks.

    Args:
        size: Image side in pixels (at least 8).
        n: Keep a seeded random subset of ``n`` items (in their original order);
            ``None`` keeps all 200.
        seed: Seed of that subset (unused when ``n`` is ``None``).

    Raises:
        ViscopeError: ``size`` or ``n`` is out of range.

    Example:
        >>> ds = FacesDataset(size=16)
        >>> image, label = ds[0]
        >>> len(ds), tuple(image.shape), label, ds.classes[label]
        (200, (3, 16, 16), 1, 'face')
    """

    def __init__(self, size: int = 32, n: int | None = None, seed: int = 0) -> None:
        from skimage.data import lfw_subset

        if not isinstance(size, int) or isinstance(size, bool) or size < 8:
            raise ViscopeError(f"Expected faces image size to be an int >= 8; got {size!r}.")
        index = np.arange(FACES_COUNT)
        if n is not None:
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= FACES_COUNT:
                raise ViscopeError(
                    f"Expected faces n between 1 and {FACES_COUNT}; got {n!r}. "
                    "Pass n=None for all of them."
                )
            index = np.sort(np.random.default_rng(check_seed(seed)).permutation(FACES_COUNT)[:n])
        images = np.asarray(lfw_subset())
        # The docstring promises uint8, recent releases give float64 in [0, 1]: accept both.
        scale = 255.0 if np.issubdtype(images.dtype, np.integer) else 1.0
        grey = torch.from_numpy(images[index].astype(np.float32) / np.float32(scale))[:, None]
        grey = F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False)
        self._grey = grey.clamp_(0.0, 1.0).contiguous()
        self.source_indices = index
        self.size = size
        self.classes = ["non-face", "face"]
        self.has_masks = False
        self.targets = [int(i < _FACES_FIRST) for i in index]

    def _item(self, index: int) -> Item:
        return self._grey[index].repeat(3, 1, 1), self.targets[index]
