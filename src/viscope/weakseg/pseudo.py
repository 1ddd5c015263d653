"""Pseudo-masks from class-activation maps: the maps of a classifier (any
:mod:`viscope.explain` method, aggregated over scales and horizontal flip), the region of
interest (Otsu on the grey image), an optional image-guided refinement, and the
binarisation (:mod:`viscope.weakseg.thresholds`), batched on the images' device.

>>> from viscope.models import create
>>> model = create("test_resnet", num_classes=2).eval()
>>> images = torch.rand(3, 3, 32, 32)
>>> out = pseudo_masks(model, images, target=1, flip=True, threshold="fixed", value=0.5)
>>> out.maps.shape, out.masks.shape, sorted(out.masks.unique().tolist()) <= [0.0, 1.0]
(torch.Size([3, 32, 32]), torch.Size([3, 1, 32, 32]), True)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from viscope.errors import ViscopeError
from viscope.explain.targets import Target, TargetArg, resolve_target
from viscope.weakseg.thresholds import (
    best_threshold,
    check_maps,
    confident,
    otsu_thresholds,
    sweep,
    threshold,
)

__all__ = ["PseudoMasks", "best_threshold", "class_maps", "confident", "pseudo_masks",
           "refine", "roi_otsu", "sweep", "threshold"]

#: the refinements :func:`refine` knows
REFINEMENTS = ("none", "guided")


@dataclass
class PseudoMasks:
    """The result of :func:`pseudo_masks`.

    Attributes:
        maps: (B, H, W) maps in [0, 1] that were binarised (after refinement, if any).
        roi: (B, 1, H, W) bool region of interest.
        masks: (B, 1, H, W) float in {0, 1} (and :data:`~viscope.data.base.IGNORE` in the
            uncertain band when a band was given); 0 outside the ROI.
    """

    maps: torch.Tensor
    roi: torch.Tensor
    masks: torch.Tensor


def _check_images(images: object, name: str = "images") -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ViscopeError(f"Expected {name} as a tensor (B, C, H, W); got {got}.")
    if not images.is_floating_point():
        raise ViscopeError(f"Expected float {name} in [0, 1]; got {images.dtype}. Convert them "
                           "first, e.g. images.float() / 255.")
    return images


def _grey(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W): the image itself, or ITU-R 601 luma of an RGB image (kornia)."""
    from kornia.color import rgb_to_grayscale

    c = images.shape[1]
    if c == 1:
        return images
    if c == 3:
        return rgb_to_grayscale(images)
    raise ViscopeError(f"Expected grey (1-channel) or RGB (3-channel) images; got {c} "
                       "channels. Pass images[:, :1] or an RGB version.")


# -- maps -----------------------------------------------------------------------------------

def class_maps(
    model: nn.Module, images: torch.Tensor, target: TargetArg, *, method: str = "gradcam",
    layer: str | None = "auto", scales: Sequence[float] = (1.0,), flip: bool = False,
    batch_size: int = 64, **options: Any,
) -> torch.Tensor:
    """Each image's map for ``target``, aggregated over scales and flip, in [0, 1].

    For every view (scale ``s``, flipped or not) the images are flipped horizontally
    (``images.flip(-1)``), resized to ``(round(H s), round(W s))`` with
    ``F.interpolate(mode="bilinear", align_corners=False)`` (no resize at ``s == 1``),
    explained by :func:`viscope.explain.attribute` (maps at the view's resolution,
    normalised per map) in batches of ``batch_size``, and their maps resized back the same
    way and flipped back. The aggregate is the mean over views, min-max scaled per image by
    :func:`viscope.explain.normalize_maps`: a map whose range is at most
    :data:`~viscope.explain.api.FLAT_ULPS` (16) float epsilons of its largest magnitude is
    constant and becomes all zeros (no division by a near-zero range).

    ``target=None`` (the predicted class) is fixed once on the original images, so that every
    view explains the same class. ``layer="auto"`` is resolved once at the original size
    (:func:`~viscope.explain.auto_layer`) and used at every scale. Per-image callable
    targets (``RegionTarget``) are not flipped or scaled: use class indices with ``flip``
    or ``scales``.

    Args:
        model: a classifier (call ``model.eval()`` first).
        images: (B, C, H, W) float images in [0, 1]; maps come back on their device.
        target: the class to explain: an int, one per image, ``None`` (predicted) or a
            callable (see :func:`viscope.explain.attribute`).
        method: any name of ``viscope.explain.list_methods()``.
        layer: for CAMs, the module name or ``"auto"``.
        scales: positive factors of the image size.
        flip: also explain the horizontally flipped images.
        batch_size: images per :func:`~viscope.explain.attribute` call.
        **options: passed to the method.

    Returns:
        (B, H, W) maps in [0, 1] on the images' device.

    Raises:
        ViscopeError: an unknown method, option or layer, images that are not (B, C, H, W)
            floats, a target of the wrong length, non-positive scales or batch size.

    Warns:
        UserWarning: once, naming the images whose aggregated map is empty (no positive
            evidence in any view; :func:`~viscope.explain.attribute`'s own per-batch
            warnings are folded into it), likewise for maps that are not finite, and once
            for a model in training mode.
    """
    from viscope.explain.api import METHODS, normalize_maps
    from viscope.explain.layer_choice import auto_layer

    images = _check_images(images)
    b, _, h, w = images.shape
    factors = _check_scales(scales)
    bs = _check_batch_size(batch_size)
    if not METHODS.get(method).uses_layer:
        layer = layer if layer != "auto" else None
    elif layer in (None, "auto"):
        layer = auto_layer(model, (h, w))
    tgt = _fixed_target(model, images, target, bs)
    if getattr(model, "training", False):
        warnings.warn("The model is in training mode: BatchNorm mixes the images of a batch and "
                      "dropout is random, so maps depend on the batch. Call model.eval() first.",
                      UserWarning, stacklevel=2)
    views = [(s, f) for s in factors for f in ((False, True) if flip else (False,))]
    total = None
    # attribute warns per call, with image indices local to its batch and view: those are
    # silenced here, and one warning below names the images whose aggregate is empty
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for s, flipped in views:
            view = _view(model, images, method, layer, tgt, s, flipped, bs, options)
            total = view if total is None else total + view
    assert total is not None  # views is never empty (scales checked)
    maps = normalize_maps(total / len(views))
    blank = maps.flatten(1).amax(1) == 0
    if bool(blank.any()):
        where = f"layer {layer!r}" if layer is not None else "the input"
        warnings.warn(f"{method} maps at {where} are empty (no positive evidence in any view) "
                      f"for {int(blank.sum())} of {b} images {_some(blank)}; their pseudo-masks "
                      "will be empty. To fix: check the target, or try an earlier layer (see "
                      "`viscope list layers`).", UserWarning, stacklevel=2)
    bad = ~torch.isfinite(maps.flatten(1)).all(1)
    if bool(bad.any()):
        warnings.warn(f"{method} maps are not finite (NaN or inf) for {int(bad.sum())} of {b} "
                      f"images {_some(bad)}. To fix: run the model in float32 and check its "
                      "outputs on those images.", UserWarning, stacklevel=2)
    return maps


def _view(model: nn.Module, images: torch.Tensor, method: str, layer: str | None, tgt: Target,
          scale: float, flipped: bool, bs: int, options: dict[str, Any]) -> torch.Tensor:
    """The maps of one view (flipped and/or resized images), mapped back onto the images."""
    from viscope.explain.api import attribute

    h, w = images.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    parts = []
    for start in range(0, images.shape[0], bs):
        x = images[start:start + bs]
        x = x.flip(-1) if flipped else x
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        m = attribute(model, x, method, layer, _part(tgt, start, start + len(x)), **options)
        if size != (h, w):
            m = F.interpolate(m[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        parts.append(m.flip(-1) if flipped else m)
    return torch.cat(parts)


def _some(mask: torch.Tensor, k: int = 10) -> str:
    idx = mask.nonzero()[:, 0].tolist()
    return str(idx) if len(idx) <= k else f"{str(idx[:k])[:-1]}, ...]"


def _check_scales(scales: Sequence[float]) -> list[float]:
    try:
        factors = [float(s) for s in scales]
    except (TypeError, ValueError):
        raise ViscopeError(f"Expected scales as a list of positive numbers; got {scales!r}."
                           ) from None
    if not factors or not all(math.isfinite(s) and s > 0 for s in factors):
        raise ViscopeError(f"Expected scales as a non-empty list of positive numbers (1.0 = the "
                           f"images' size); got {scales!r}.")
    return factors


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ViscopeError(f"Expected batch_size as a positive integer; got {batch_size!r}.")
    return batch_size


def _fixed_target(model: nn.Module, images: torch.Tensor, target: TargetArg, bs: int) -> Target:
    """The target with "the predicted class" fixed on the original images, in batches."""
    from viscope.explain.inputs import prepare_images

    tgt = resolve_target(target, images.shape[0])
    if tgt.predicted:
        tgt.classes = torch.cat([
            Target(len(x)).fix(model, prepare_images(model, x)).classes.cpu()  # type: ignore[union-attr]
            for x in images.split(bs)
        ])
    return tgt


def _part(tgt: Target, start: int, stop: int) -> TargetArg:
    if tgt.classes is not None:
        return tgt.classes[start:stop]
    if tgt.fn is not None:
        return tgt.fn
    assert tgt.per_image is not None
    return tgt.per_image[start:stop]


# -- region of interest and refinement ------------------------------------------------------

def roi_otsu(images: torch.Tensor, *, largest: bool = False) -> torch.Tensor:
    """The foreground (a breast on a dark background) of each image: grey values above
    Otsu's threshold of the image (:func:`~viscope.weakseg.thresholds.otsu_thresholds`,
    equal to :func:`skimage.filters.threshold_otsu`), batched.

    Args:
        images: (B, 1, H, W) grey or (B, 3, H, W) RGB float images (RGB is made grey by
            ITU-R 601 luma, :func:`kornia.color.rgb_to_grayscale`).
        largest: keep only the largest 4-connected component of each region (drops specks
            of bright noise and labels; :func:`scipy.ndimage.label`, one image at a time on
            the CPU).

    Returns:
        (B, 1, H, W) bool on the images' device; a constant image gets an empty region.

    Raises:
        ViscopeError: images that are not (B, 1 or 3, H, W) finite floats.
    """
    grey = _grey(_check_images(images))
    check_maps(grey[:, 0])  # finite
    cut = otsu_thresholds(grey).to(grey.device)
    roi = grey.double() > cut[:, None, None, None]
    return _largest_component(roi) if largest else roi


def _largest_component(roi: torch.Tensor) -> torch.Tensor:
    from scipy import ndimage

    out = torch.zeros_like(roi)
    for i, region in enumerate(roi[:, 0].cpu().numpy()):
        labels, n = ndimage.label(region)
        if n:
            sizes = ndimage.sum_labels(region, labels, index=range(1, n + 1))
            out[i, 0] = torch.from_numpy(labels == int(sizes.argmax()) + 1)
    return out


def refine(
    masks_or_maps: torch.Tensor, images: torch.Tensor, method: str = "none", *,
    radius: int = 4, eps: float = 1e-2,
) -> torch.Tensor:
    """Image-guided, edge-preserving smoothing of maps (or masks), so that they follow the
    image's edges rather than the CAM's coarse grid.

    ``"guided"``: the guided filter (He et al., 2010; :func:`kornia.filters.guided_blur`)
    of each map with the grey image as guidance, clipped to [0, 1] and min-max scaled per
    image again (:func:`viscope.explain.normalize_maps`). A dense CRF is not offered:
    ``pydensecrf`` does not build on Python 3.11, and its fork ``pydensecrf2`` (one release,
    source only, needs a C++ compiler) is no maintained dependency to add.

    Args:
        masks_or_maps: (B, H, W) or (B, 1, H, W) maps in [0, 1], or bool masks (filtered as
            0/1, then kept where the result is >= 0.5).
        images: (B, 1 or 3, H, W) the images of the maps.
        method: ``"none"`` (returned as given) or ``"guided"``.
        radius: the filter's window radius r in pixels (window 2r + 1; r < H, W).
        eps: the regulariser, in squared grey units: edges whose local grey standard
            deviation is well above ``sqrt(eps)`` (0.1 by default) are kept.

    Returns:
        The same shape and kind (float maps or bool masks) as given.

    Raises:
        ViscopeError: an unknown method, maps outside [0, 1] (masks with IGNORE: refine the
            maps before :func:`confident`), images of another size, a bad radius or eps.
    """
    if method not in REFINEMENTS:
        from viscope.errors import suggest

        raise ViscopeError(f"Expected refine method one of {', '.join(REFINEMENTS)}; got "
                           f"{method!r}.{suggest(str(method), REFINEMENTS)}")
    if method == "none":
        return masks_or_maps
    from kornia.filters import guided_blur

    from viscope.explain.api import normalize_maps

    is_mask = isinstance(masks_or_maps, torch.Tensor) and masks_or_maps.dtype == torch.bool
    m = check_maps(masks_or_maps)
    if bool(((m < 0) | (m > 1)).any()):
        raise ViscopeError("Expected maps in [0, 1] to refine; got values outside (masks with "
                           "IGNORE?). Refine the maps before thresholding them.")
    guide = _grey(_check_images(images))
    if guide.shape[0] != m.shape[0] or guide.shape[-2:] != m.shape[-2:]:
        raise ViscopeError(f"Expected images (B, C, H, W) matching the maps "
                           f"{tuple(m.shape)}; got {tuple(images.shape)}.")
    r = radius
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r < min(m.shape[-2:]):
        raise ViscopeError(f"Expected radius as an integer in [1, {min(m.shape[-2:]) - 1}] (less "
                           f"than the image side); got {radius!r}.")
    if not (math.isfinite(float(eps)) and eps > 0):
        raise ViscopeError(f"Expected eps > 0; got {eps!r}.")
    out = guided_blur(guide.to(m.device, m.dtype), m[:, None], 2 * r + 1, float(eps))[:, 0]
    out = out >= 0.5 if is_mask else normalize_maps(out.clamp(0, 1))
    return out.reshape(masks_or_maps.shape)


# -- the whole step -------------------------------------------------------------------------

# pseudo_masks' arguments ``threshold`` and ``refine`` shadow these functions
_threshold, _refine = threshold, refine


def pseudo_masks(
    model: nn.Module, images: torch.Tensor, target: TargetArg, *, method: str = "gradcam",
    layer: str | None = "auto", scales: Sequence[float] = (1.0,), flip: bool = False,
    roi: None | str | torch.Tensor = None, threshold: str = "otsu", value: float | None = None,
    band: tuple[float, float] | None = None, refine: str = "none", batch_size: int = 64,
    method_options: Mapping[str, Any] | None = None,
    refine_options: Mapping[str, Any] | None = None,
) -> PseudoMasks:
    """Images → maps → region → (refined maps) → masks, in one call.

    Args:
        model, images, target, method, layer, scales, flip, batch_size: as
            :func:`class_maps`; ``method_options`` are its ``**options``.
        roi: ``None`` (the whole image), ``"otsu"`` (:func:`roi_otsu`) or a (B, 1, H, W)
            bool tensor (a given breast mask).
        threshold, value: as :func:`~viscope.weakseg.thresholds.threshold`'s method and
            value (ignored when ``band`` is given).
        band: ``(low, high)``: masks from :func:`~viscope.weakseg.thresholds.confident`
            (1 above ``high``, 0 below ``low``, IGNORE between) instead of a threshold.
        refine: ``"none"`` or ``"guided"`` (:func:`refine` of the maps before binarising,
            with ``refine_options`` such as ``radius``, ``eps``).

    Returns:
        :class:`PseudoMasks` (maps, roi, masks).

    Raises:
        ViscopeError: any bad argument (see the functions above), named in one line.
    """
    from viscope.weakseg.thresholds import check_roi

    maps = class_maps(model, images, target, method=method, layer=layer, scales=scales,
                      flip=flip, batch_size=batch_size, **dict(method_options or {}))
    if isinstance(roi, str):
        if roi != "otsu":
            raise ViscopeError(f"Expected roi None, 'otsu' or a bool tensor (B, 1, H, W); got "
                               f"{roi!r}.")
        region = roi_otsu(images)
    else:
        region = check_roi(roi, maps)[:, None]
    region = region.to(maps.device)
    if refine != "none":
        maps = _refine(maps, images, refine, **dict(refine_options or {}))
    if band is not None:
        low, high = band
        masks = confident(maps, low, high, region)
    else:
        masks = _threshold(maps, threshold, value, region).float()
    return PseudoMasks(maps=maps, roi=region, masks=masks)
