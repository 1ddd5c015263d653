"""Faithfulness metrics: deletion and insertion AUC (Petsiuk et al., 2018), ROAD (Rong et
al., 2022) and PEDS (pixel erosion/dilation score).

Every metric runs one forward pass per perturbation step for the whole batch and returns
one value per image; class targets are scored as softmax probabilities. Images are checked
and cast to the model's floating dtype as in :func:`viscope.explain.attribute`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from viscope.errors import ViscopeError
from viscope.evaluate._common import check_inputs, ranks, scores, target_of, trapezoid
from viscope.explain.perturbation import perturbation_baseline
from viscope.explain.targets import TargetArg


def _baseline(images: torch.Tensor, baseline: str | torch.Tensor) -> torch.Tensor:
    if isinstance(baseline, torch.Tensor):
        try:
            return baseline.to(images).expand_as(images)
        except RuntimeError:
            raise ViscopeError(
                f"Expected a baseline tensor that broadcasts to the images "
                f"{tuple(images.shape)}, e.g. (C, H, W) or (B, C, H, W); got "
                f"{tuple(baseline.shape)}."
            ) from None
    return perturbation_baseline(images, baseline)


def deletion_curve(
    model: nn.Module, images: torch.Tensor, maps: torch.Tensor, target: TargetArg = None, *,
    steps: int = 20, baseline: str | torch.Tensor = "black", insertion: bool = False,
) -> torch.Tensor:
    """The score while the most important pixels are removed (or inserted) in ``steps`` steps.

    Args:
        model: the model.
        images: (B, C, H, W) in [0, 1].
        maps: (B, H, W) attribution maps (higher = more important).
        target: as for :func:`viscope.explain.attribute` (``None``: the class predicted
            on the clean images).
        steps: perturbation steps; step k changes the first ``round(k * H * W / steps)``
            pixels in decreasing map order (ties in pixel order).
        baseline: what removed pixels become (``"black"``, ``"blur"``, ``"mean"`` or a tensor).
        insertion: start from the baseline and insert the pixels instead.

    Returns:
        (B, steps + 1) target probabilities.
    """
    images, maps = check_inputs(model, images, maps)
    if not isinstance(steps, int) or steps < 1:
        raise ViscopeError(f"Expected steps to be a positive int; got {steps!r}.")
    tgt = target_of(model, images, target)
    base = _baseline(images, baseline)
    rank = ranks(maps)[:, None]
    n = maps.shape[-2] * maps.shape[-1]
    curve = []
    for k in range(steps + 1):
        changed = rank < round(k * n / steps)
        x = torch.where(changed, images, base) if insertion else torch.where(changed, base, images)
        curve.append(scores(model, x, tgt, prob=True))
    return torch.stack(curve, dim=1)


def deletion_auc(
    model: nn.Module, images: torch.Tensor, maps: torch.Tensor, target: TargetArg = None, *,
    steps: int = 20, baseline: str | torch.Tensor = "black",
) -> torch.Tensor:
    """Area under the deletion curve (lower = more faithful), one per image.

    Example:
        >>> from viscope import models
        >>> model = models.create("resnet18", num_classes=3).eval()
        >>> deletion_auc(model, torch.rand(2, 3, 32, 32), torch.rand(2, 32, 32), 0).shape
        torch.Size([2])
    """
    curve = deletion_curve(model, images, maps, target, steps=steps, baseline=baseline)
    return trapezoid(curve)


def insertion_auc(
    model: nn.Module, images: torch.Tensor, maps: torch.Tensor, target: TargetArg = None, *,
    steps: int = 20, baseline: str | torch.Tensor = "blur",
) -> torch.Tensor:
    """Area under the insertion curve (higher = more faithful), from a blurred image."""
    curve = deletion_curve(
        model, images, maps, target, steps=steps, baseline=baseline, insertion=True
    )
    return trapezoid(curve)


def noisy_linear_impute(
    images: torch.Tensor, removed: torch.Tensor, *, noise: float = 0.01, iterations: int = 1000,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """ROAD's noisy linear imputation: each removed pixel becomes the weighted mean of its
    neighbours (1/6 direct, 1/12 diagonal), kept pixels fixed, plus Gaussian noise.

    ROAD solves this sparse linear system directly; here conjugate gradients solve the same
    (symmetric, positive definite) system batched on the device, each image and channel on
    its own, until the residual is 1e-10 (1e-5 below float64) of its start.

    Args:
        images: (B, C, H, W).
        removed: (B, 1, H, W) boolean mask of the pixels to impute.
        noise: standard deviation of the added noise.
        iterations: at most this many conjugate-gradient iterations (a removed region
            of side L needs about 2 L).
        generator: random generator of the noise (CPU). The noise is drawn once per call,
            (C, H, W), and shared by the images, so an image's result does not depend on
            its batch.

    Returns:
        (B, C, H, W) images with the removed pixels imputed.
    """
    dtype = torch.promote_types(images.dtype, torch.float32)
    x0 = images.to(dtype)
    w = torch.tensor([[1, 2, 1], [2, 0, 2], [1, 2, 1]], dtype=dtype) / 12
    c = images.shape[1]
    kernel = w.to(images.device).view(1, 1, 3, 3).expand(c, 1, 3, 3)
    unknown = removed.to(dtype)
    ones = torch.ones_like(x0[:, :1])
    weight_sum = F.conv2d(F.pad(ones, (1, 1, 1, 1)), kernel[:1])  # border pixels: fewer nbrs

    def neighbours(v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(v, (1, 1, 1, 1)), kernel, groups=c)

    kept = x0 * (1 - unknown)
    # weight_sum * u - W u = W kept on the removed pixels; zero elsewhere.
    r = neighbours(kept) * unknown
    u, p = torch.zeros_like(r), r
    rr = (r * r).sum(dim=(2, 3), keepdim=True)
    stop = rr * (1e-20 if dtype == torch.float64 else 1e-10)
    tiny = torch.finfo(dtype).tiny
    for _ in range(iterations):
        active = rr > stop  # converged systems stay as they are
        if not active.any():
            break
        ap = (weight_sum * p - neighbours(p)) * unknown
        pap = (p * ap).sum(dim=(2, 3), keepdim=True)
        alpha = torch.where(active & (pap > 0), rr / pap.clamp(min=tiny), 0)
        u = u + alpha * p
        r = r - alpha * ap
        rr_new = (r * r).sum(dim=(2, 3), keepdim=True)
        p = torch.where(active, r + rr_new / rr.clamp(min=tiny) * p, p)
        rr = torch.where(active, rr_new, rr)
    eps = torch.randn(images.shape[1:], generator=generator).to(u) * noise
    return (kept + (u + eps) * unknown).clamp(0, 1).to(images.dtype)


def road(
    model: nn.Module, images: torch.Tensor, maps: torch.Tensor, target: TargetArg = None, *,
    fractions: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9), order: str = "morf",
    seed: int = 0,
) -> torch.Tensor:
    """ROAD: the mean target probability after removing a fraction of the pixels and
    imputing them (:func:`noisy_linear_impute`), over ``fractions``.

    Args:
        model: the model.
        images: (B, C, H, W).
        maps: (B, H, W).
        target: as for :func:`deletion_auc`.
        fractions: fractions of pixels removed.
        order: ``"morf"`` (most relevant first: lower = more faithful) or ``"lerf"``
            (least relevant first: higher = more faithful).
        seed: seed of the imputation noise.

    Returns:
        (B,) mean probability over the fractions.
    """
    images, maps = check_inputs(model, images, maps)
    if order not in ("morf", "lerf"):
        raise ViscopeError(f"Expected order 'morf' or 'lerf'; got {order!r}.")
    tgt = target_of(model, images, target)
    rank = ranks(maps if order == "morf" else -maps)[:, None]
    n = maps.shape[-2] * maps.shape[-1]
    gen = torch.Generator().manual_seed(seed)
    out = [
        scores(model, noisy_linear_impute(images, rank < round(f * n), generator=gen), tgt, True)
        for f in fractions
    ]
    return torch.stack(out, dim=1).mean(dim=1)


def peds(
    model: nn.Module, images: torch.Tensor, maps: torch.Tensor, target: TargetArg = None, *,
    threshold: float = 0.5, low: float = 0.01, high: float = 0.95,
    baseline: str | torch.Tensor = "black", max_steps: int | None = None,
) -> torch.Tensor:
    """PEDS, the pixel erosion/dilation score.

    The map (normalised to [0, 1]) is thresholded at ``threshold``; the region is eroded
    with a 3×3 kernel until it covers at most ``low`` of the pixels and dilated until it
    covers at least ``high``. For each region the image is kept inside it (``baseline``
    outside) and scored; the class-score curve over the kept fraction (with the fully
    removed and the clean image at 0 and 1) is min-max normalised per image and its area
    is the score (higher: the score comes back with the map's most important pixels).

    An image stops eroding (dilating) once its region reaches ``low`` (``high``) or stops
    changing (an empty region cannot grow; a full one cannot shrink, the frame being
    neutral). ``max_steps`` (default ``max(H, W)``, enough for one pixel to cover the
    image) only guards the loop.

    Returns:
        (B,) scores in [0, 1].
    """
    images, maps = check_inputs(model, images, maps)
    if maps.amin() < 0 or maps.amax() > 1:
        raise ViscopeError(
            f"Expected maps in [0, 1] for PEDS (it thresholds them at {threshold}); got values "
            f"from {float(maps.amin()):.3g} to {float(maps.amax()):.3g}. Pass normalised maps "
            "(viscope.explain.attribute(..., normalize=True))."
        )
    tgt = target_of(model, images, target)
    base = _baseline(images, baseline)
    region = (maps >= threshold)[:, None].to(images.dtype)
    regions = [region]
    steps = max(images.shape[-2:]) if max_steps is None else max_steps
    for grow in (False, True):
        r = region
        for _ in range(steps):
            frac = r.mean(dim=(1, 2, 3))
            # 3x3 dilation / erosion; the frame counts as neutral (the border of the image
            # is no reason to erode). Images already done keep their region: a repeated
            # point adds no area, so each image's score does not depend on its batch.
            moved = F.max_pool2d(r, 3, 1, 1) if grow else -F.max_pool2d(-r, 3, 1, 1)
            done = (frac >= high) if grow else (frac <= low)
            done = done | (moved == r).flatten(1).all(dim=1)
            if done.all():
                break
            r = torch.where(done[:, None, None, None], r, moved)
            regions.append(r)
    regions += [torch.zeros_like(region), torch.ones_like(region)]
    fracs = torch.stack([r.mean(dim=(1, 2, 3)) for r in regions], dim=1)
    curve = torch.stack(
        [scores(model, images * r + base * (1 - r), tgt, True) for r in regions], dim=1
    )
    fracs, order = fracs.sort(dim=1, stable=True)
    curve = curve.gather(1, order)
    lo, hi = curve.amin(dim=1, keepdim=True), curve.amax(dim=1, keepdim=True)
    curve = (curve - lo) / (hi - lo + 1e-12)
    return torch.stack([torch.trapezoid(c, x) for c, x in zip(curve, fracs, strict=True)])
