"""The field of view (FOV) of a fundus photograph: its mask, its box, and the crop to it.

The retina is a bright disc on a dark background. It is found by thresholding a blurred
luminance (scikit-image's Otsu and a fraction of the maximum, see :func:`fov_threshold`)
and keeping the largest connected component (SciPy); the crop takes that component's
bounding box plus a margin and pads it to a black square, as fundus work expects.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.filters import threshold_otsu

from viscope.errors import ViscopeError

#: Fraction of the blurred luminance's maximum that always counts as inside the FOV.
FOV_FRACTION = 0.1
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")
_DETECT_SIDE = 512  # the FOV is found on a copy at most this large: a box needs no more


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ViscopeError(
            f"Expected one RGB image as a tensor (3, H, W) in [0, 1]; got {got}. "
            "Pass images one at a time (e.g. batch[i])."
        )


def fov_threshold(luminance: np.ndarray) -> float:
    """The luminance above which a pixel is inside the field of view.

    ``min(Otsu, FOV_FRACTION * max)``: Otsu splits the dark background from the retina
    when both are there; the fraction of the maximum keeps a dim periphery (and the whole
    of an image without a dark border, where Otsu would split the retina itself) inside.

    Args:
        luminance: Blurred luminance (H, W) in [0, 1].

    Returns:
        The threshold; pixels strictly above it are inside.

    Example:
        >>> lum = np.full((8, 8), 0.1); lum[2:6, 2:6] = 0.9
        >>> round(fov_threshold(lum), 2)  # Otsu would say 0.1; 0.09 keeps dim edges inside
        0.09
    """
    top = float(luminance.max(initial=0.0))
    if top - float(luminance.min(initial=0.0)) < 1e-6:  # flat: no border to find
        return top * FOV_FRACTION
    return min(float(threshold_otsu(luminance)), FOV_FRACTION * top)


def _fov_small(image: torch.Tensor, threshold: float | None) -> tuple[np.ndarray, int]:
    """The FOV (filled largest component) on a copy reduced by an integer factor, and it."""
    _check_image(image)
    if threshold is not None and not 0.0 <= threshold < 1.0:
        raise ViscopeError(
            f"Expected the FOV threshold in [0, 1) (a luminance) or None for "
            f"automatic; got {threshold!r}."
        )
    height, width = image.shape[-2:]
    factor = max(1, math.ceil(max(height, width) / _DETECT_SIDE))
    weights = torch.tensor(_LUMA, dtype=torch.float32, device=image.device)
    lum = torch.einsum("chw,c->hw", image.float(), weights)[None, None]
    if factor > 1:
        lum = F.avg_pool2d(lum, factor, ceil_mode=True)
    raw = lum[0, 0].cpu().double().numpy()
    # blur over ~1 % of the side: noise, JPEG blocks and dark vessels do not break the disc
    blurred = ndimage.gaussian_filter(raw, max(1.0, 0.01 * min(raw.shape)), mode="nearest")
    level = fov_threshold(blurred) if threshold is None else float(threshold)
    components, count = ndimage.label(blurred > level)
    if count == 0:
        return np.zeros(raw.shape, dtype=bool), factor
    largest = components == 1 + int(np.bincount(components.ravel())[1:].argmax())
    # the blur spreads the edge outwards; the unblurred pixels of that component put it back
    sharp = largest & (raw > level)
    return ndimage.binary_fill_holes(sharp if sharp.any() else largest), factor


def fov_mask(image: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    """The field of view of a fundus photograph: float32 (1, H, W) in {0, 1}.

    The largest component of the blurred luminance above the threshold (see
    :func:`fov_threshold`), narrowed to its pixels whose own luminance is above it (the
    blur widens the disc), holes filled. It is found on a copy at most 512 px on a side
    and scaled back, so on larger images its edge is exact to that factor. All zero for
    an all-black image.

    Args:
        image: (3, H, W) in [0, 1].
        threshold: Luminance in [0, 1); ``None``: automatic.

    Raises:
        ViscopeError: ``image`` is not (3, H, W), or ``threshold`` is out of range.
    """
    small, factor = _fov_small(image, threshold)
    mask = torch.from_numpy(small.astype(np.float32))
    if factor > 1:
        mask = mask.repeat_interleave(factor, 0).repeat_interleave(factor, 1)
    return mask[: image.shape[-2], : image.shape[-1]][None].to(image.device)


def fov_box(
    image: torch.Tensor, threshold: float | None = None, margin: float = 0.02
) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` (bottom/right exclusive) of the FOV plus a margin.

    The margin is ``margin`` times the FOV's larger side on every side, clipped to the
    image. The whole image when no FOV is found (e.g. an all-black image).

    Raises:
        ViscopeError: As :func:`fov_mask`, or ``margin`` is negative.
    """
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or margin < 0:
        raise ViscopeError(f"Expected margin as a fraction >= 0 (e.g. 0.02); got {margin!r}.")
    small, factor = _fov_small(image, threshold)
    height, width = image.shape[-2:]
    rows, cols = np.flatnonzero(small.any(1)), np.flatnonzero(small.any(0))
    if rows.size == 0:
        return 0, 0, height, width
    top, bottom = rows[0] * factor, min(height, (rows[-1] + 1) * factor)
    left, right = cols[0] * factor, min(width, (cols[-1] + 1) * factor)
    pad = round(margin * max(bottom - top, right - left))
    return (
        int(max(0, top - pad)),
        int(max(0, left - pad)),
        int(min(height, bottom + pad)),
        int(min(width, right + pad)),
    )


def pad_square(image: torch.Tensor) -> torch.Tensor:
    """``image`` (C, H, W) centred on a black square of side ``max(H, W)``.

    Example:
        >>> pad_square(torch.ones(3, 2, 4))[0].tolist()
        [[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    """
    height, width = image.shape[-2:]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    return F.pad(image, (left, side - width - left, top, side - height - top))


def fov_crop(
    image: torch.Tensor, threshold: float | None = None, margin: float = 0.02
) -> torch.Tensor:
    """Crop a fundus photograph to its field of view (plus a margin) and pad it to a square.

    An image without a dark border (already cropped) comes back as it is, padded to a
    square with black.

    Args:
        image: (3, H, W) in [0, 1].
        threshold: Luminance in [0, 1) above which pixels are inside; ``None``:
            ``min(Otsu, 0.1 * max)`` of the blurred luminance (:func:`fov_threshold`).
        margin: Added on every side, as a fraction of the FOV's larger side.

    Returns:
        (3, S, S) in [0, 1], the crop centred on black.

    Raises:
        ViscopeError: ``image`` is not (3, H, W), or ``threshold``/``margin`` is out of range.

    Example:
        >>> img = torch.zeros(3, 40, 60)
        >>> img[:, 10:30, 5:25] = 0.8
        >>> tuple(fov_crop(img, margin=0.0).shape)
        (3, 20, 20)
    """
    top, left, bottom, right = fov_box(image, threshold, margin)
    return pad_square(image[:, top:bottom, left:right])
