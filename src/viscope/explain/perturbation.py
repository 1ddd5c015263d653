"""Perturbation maps: RISE, convergent RISE (CB-RISE) and occlusion.

RISE (Petsiuk et al., 2018): the saliency of a pixel is the expected target probability
over random masks that keep it, ``E[f(I * M) M] / p``; eq. 6 estimates it by
``sum_i f(I * M_i) M_i / (N p)``. By default viscope subtracts the mean score as a control
variate (same expectation, much less noise; see :func:`rise`).
CB-RISE (Stanchi, Quiroga et al., 2024) adds masks in chunks and stops each image when
its map has converged. viscope's stopping rule is scale-free: the standard error of the
map, per pixel, from running second moments, against the map's own spatial spread (see
:func:`cbrise`), so that a score, ten times that score or the score plus a constant stop
after the same masks.

Masked images are built and scored ``batch_size`` at a time: one forward pass per chunk
for all images together, memory bounded by ``batch_size``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from viscope.activations import preserved_buffers
from viscope.errors import ViscopeError
from viscope.explain.targets import Target

BASELINES = ("black", "blur", "mean")


def perturbation_baseline(images: torch.Tensor, kind: str = "black") -> torch.Tensor:
    """What removed pixels become: ``"black"`` (0), ``"blur"`` (Gaussian, sigma = side/16)
    or ``"mean"`` (each image's channel means).

    Args:
        images: (B, C, H, W).
        kind: one of :data:`BASELINES`.

    Returns:
        (B, C, H, W) baseline images.
    """
    if kind == "black":
        return torch.zeros_like(images)
    if kind == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).clone()
    if kind == "blur":
        sigma = max(images.shape[-2:]) / 16
        radius = max(1, int(3 * sigma))
        x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
        k = torch.exp(-(x**2) / (2 * sigma**2))
        k = k / k.sum()
        c = images.shape[1]
        out = F.pad(images, (radius, radius, 0, 0), mode="replicate")
        out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        out = F.pad(out, (0, 0, radius, radius), mode="replicate")
        return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    raise ViscopeError(f"Expected baseline in {BASELINES}; got {kind!r}.")


def rise_masks(
    n: int, size: tuple[int, int], *, cells: int = 8, p: float = 0.5,
    generator: torch.Generator | None = None, device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """RISE masks: random ``cells``×``cells`` binary grids, upsampled bilinearly and
    shifted by a random fraction of a cell.

    Args:
        n: number of masks.
        size: (H, W).
        cells: grid side.
        p: probability that a cell is kept.
        generator: random generator (on the CPU).
        device: device of the masks.
        dtype: dtype of the masks.

    Returns:
        (n, H, W) masks in [0, 1].
    """
    h, w = size
    ch, cw = math.ceil(h / cells), math.ceil(w / cells)
    grid = (torch.rand(n, 1, cells, cells, generator=generator) < p).to(dtype)
    up = F.interpolate(grid.to(device), size=((cells + 1) * ch, (cells + 1) * cw),
                       mode="bilinear", align_corners=False)[:, 0]
    dy = torch.randint(0, ch, (n,), generator=generator).to(device)
    dx = torch.randint(0, cw, (n,), generator=generator).to(device)
    rows = dy[:, None] + torch.arange(h, device=device)
    cols = dx[:, None] + torch.arange(w, device=device)
    return up[torch.arange(n, device=device)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _masked_scores(
    model: nn.Module, images: torch.Tensor, base: torch.Tensor, masks: torch.Tensor,
    target: Target, which: torch.Tensor, batch_size: int,
) -> torch.Tensor:
    """Scores (len(which), n) of images ``which`` under each mask, ``batch_size`` rows a pass."""
    n = masks.shape[0]
    pairs = torch.arange(len(which) * n, device=images.device)
    out = torch.empty(len(which) * n, device=images.device, dtype=images.dtype)
    with torch.no_grad():
        for chunk in pairs.split(batch_size):
            img, k = which[chunk // n], chunk % n
            m = masks[k][:, None]
            x = images[img] * m + base[img] * (1 - m)
            out[chunk] = target.score(model(x), img, prob=True).to(out.dtype)
    return out.view(len(which), n)


ESTIMATORS = ("centred", "plain")


#: Below this RMS standard error, relative to the RMS score, a map is flat up to float32
#: rounding of the scores (a few ulps): more masks cannot change it.
FLAT = 1e-6


class _RiseSums:
    """Per-image running sums over masks i of ``f_i``, ``f_i M_i`` and ``M_i`` and, for
    the convergence check, of ``f_i^2``, ``f_i^2 M_i``, ``f_i^2 M_i^2``, ``f_i M_i^2`` and
    ``M_i^2``, in float64.

    Sums rather than a Welford update, because the centred estimator's centre (the mean
    score) moves as masks arrive; scores and masks lie in [0, 1], so float64 sums of a few
    thousand terms lose nothing that matters (below 1e-12 relative).
    """

    def __init__(self, b: int, size: tuple[int, int], device: torch.device, second: bool):
        dt = torch.float64 if device.type != "mps" else torch.float32
        z = torch.zeros
        self.n = z(b, device=device, dtype=dt)
        self.f = z(b, device=device, dtype=dt)
        self.fm = z(b, *size, device=device, dtype=dt)
        self.m = z(b, *size, device=device, dtype=dt)
        self.second = second
        if second:
            self.f2 = z(b, device=device, dtype=dt)
            self.f2m, self.f2m2, self.fm2, self.m2 = (
                z(b, *size, device=device, dtype=dt) for _ in range(4))

    def add(self, which: torch.Tensor, scores: torch.Tensor, masks: torch.Tensor) -> None:
        s, m = scores.to(self.fm.dtype), masks.to(self.fm.dtype)
        self.n[which] += m.shape[0]
        self.f[which] += s.sum(dim=1)
        self.fm[which] += torch.einsum("bn,nhw->bhw", s, m)
        self.m[which] += m.sum(dim=0)
        if self.second:
            m2, s2 = m.pow(2), s.pow(2)
            self.f2[which] += s2.sum(dim=1)
            self.f2m[which] += torch.einsum("bn,nhw->bhw", s2, m)
            self.f2m2[which] += torch.einsum("bn,nhw->bhw", s2, m2)
            self.fm2[which] += torch.einsum("bn,nhw->bhw", s, m2)
            self.m2[which] += m2.sum(dim=0)

    def _centre(self, which, estimator: str) -> torch.Tensor:
        if estimator == "plain":
            return torch.zeros_like(self.f[which])[:, None, None]
        return (self.f[which] / self.n[which])[:, None, None]

    def saliency(self, p: float, estimator: str, which=slice(None)) -> torch.Tensor:
        """(B, H, W): ``sum (f_i - c) M_i / (n p) + c``, ``c`` the mean score or 0."""
        c = self._centre(which, estimator)
        n = self.n[which][:, None, None]
        return (self.fm[which] - c * self.m[which]) / (n * p) + c

    def variance(self, which: torch.Tensor, estimator: str) -> torch.Tensor:
        """Per-pixel sample variance (ddof 1) of the terms whose mean the map is (up to
        ``c`` and ``1/p``): ``f_i M_i`` (plain), and centred, as ``sum (f_i - a) = 0``
        makes the map ``c + cov(f, M) / p``, the sample covariance's terms
        ``(f_i - a)(M_i - b)``, ``a`` the mean score, ``b`` the pixel's mean mask value.
        """
        n = self.n[which][:, None, None]
        if estimator == "plain":
            sz, sz2 = self.fm[which], self.f2m2[which]
        else:
            a = self._centre(which, estimator)
            b = self.m[which] / n
            fm = self.fm[which]
            sz = fm - n * a * b
            # sum (f - a)^2 (M - b)^2 expanded into the running sums
            sz2 = (self.f2m2[which] - 2 * b * self.f2m[which]
                   + b.pow(2) * self.f2[which][:, None, None] - 2 * a * self.fm2[which]
                   + 4 * a * b * fm + a.pow(2) * self.m2[which] - 3 * n * a.pow(2) * b.pow(2))
        return ((sz2 - sz.pow(2) / n) / (n - 1)).clamp(min=0)

    def noise_ratio(self, which: torch.Tensor, p: float, estimator: str) -> torch.Tensor:
        """Per image: the RMS over pixels of the map's standard error over the map's
        spatial standard deviation (see :func:`cbrise`); 0 for a map that is flat up to
        float rounding (:data:`FLAT`), ``inf`` for a flat map that is still noisy."""
        n = self.n[which]
        se2 = self.variance(which, estimator) / (n[:, None, None] * p * p)
        noise = se2.flatten(1).mean(dim=1).sqrt()
        spread = self.saliency(p, estimator, which).flatten(1).std(dim=1, correction=0)
        ratio = torch.where(spread > 0, noise / spread, torch.full_like(noise, math.inf))
        flat = noise <= FLAT * (self.f2[which] / n).sqrt()
        return torch.where(flat, torch.zeros_like(ratio), ratio)


def _check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ViscopeError(f"Expected estimator in {ESTIMATORS}; got {estimator!r}.")


def rise(
    model: nn.Module, images: torch.Tensor, target: Target, *, n_masks: int = 4000,
    cells: int = 8, p: float = 0.5, baseline: str = "black", batch_size: int = 256,
    chunk: int = 500, seed: int = 0, estimator: str = "centred",
) -> torch.Tensor:
    """RISE saliency (B, H, W).

    Two estimators of the same expectation ``E[f(I * M) M] / p``:

    - ``"plain"``: eq. 6 of Petsiuk et al., ``sum_i f_i M_i / (N p)``. Its noise includes
      how often each pixel happened to be kept, times the mean score: on an image the model
      scores 0.8 whatever is masked, that noise is the whole map.
    - ``"centred"`` (default): the mean score ``c`` as a control variate,
      ``sum_i (f_i - c) M_i / (N p) + c``. As ``E[M_i] = p`` at every pixel the expectation
      is unchanged (up to an O(1/N) term from estimating ``c`` on the same masks), and the
      kept-count noise is gone. At the defaults (8×8 cells) on ``shapes``
      (``benchmarks/rise_convergence.py``: a trained ``test_resnet``, 16 images, the
      predicted class), two RISE runs of 8000 masks with different seeds correlate per
      image at 0.804 (worst) / 0.966 (median) with ``"plain"`` and 0.908 / 0.978 with
      ``"centred"``; at 1000 masks, 0.416 / 0.860 against 0.813 / 0.924.

    Args:
        model: the model.
        images: (B, C, H, W) in [0, 1].
        target: the resolved target.
        n_masks: number of masks.
        cells: mask grid side.
        p: probability of keeping a cell.
        baseline: what masked-out pixels become (:data:`BASELINES`).
        batch_size: masked images per forward pass.
        chunk: masks drawn at a time.
        seed: seed of the masks (the same for every image).
        estimator: ``"centred"`` or ``"plain"`` (:data:`ESTIMATORS`).

    Returns:
        (B, H, W) saliency maps.
    """
    _check_estimator(estimator)
    gen = torch.Generator().manual_seed(seed)
    base = perturbation_baseline(images, baseline)
    size = (images.shape[-2], images.shape[-1])
    which = torch.arange(images.shape[0], device=images.device)
    sums = _RiseSums(images.shape[0], size, images.device, second=False)
    with preserved_buffers(model):  # a train-mode model's BatchNorm statistics stay
        target.fix(model, images)
        for start in range(0, n_masks, chunk):
            masks = rise_masks(min(chunk, n_masks - start), size, cells=cells, p=p,
                               generator=gen, device=images.device, dtype=images.dtype)
            sums.add(which, _masked_scores(model, images, base, masks, target, which,
                                           batch_size), masks)
    return sums.saliency(p, estimator).to(images.dtype)


def cbrise(
    model: nn.Module, images: torch.Tensor, target: Target, *, max_masks: int = 8000,
    chunk: int = 250, tol: float = 0.25, cells: int = 8, p: float = 0.5,
    baseline: str = "black", batch_size: int = 256, seed: int = 0, estimator: str = "centred",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convergent RISE: RISE with a per-image, scale-free stopping rule.

    After each ``chunk`` of masks, each image's map ``S`` is checked: it stops once the
    RMS over pixels of the map's standard error, ``SE(x)``, is below ``tol`` times the
    map's spatial standard deviation. Images that stop drop out of later forward passes.

    What the ratio estimates: as ``sum_i (f_i - c) = 0`` for the centred estimator (``c``
    the mean score), its map is ``c + cov(f, M(x)) / p``, a sample covariance over the
    ``n`` masks, whose standard error is ``sqrt(v(x) / n)`` with ``v(x)`` the sample
    variance of ``(f_i - mean f)(M_i(x) - mean M(x))`` (the usual large-sample variance of
    a sample covariance); for the plain estimator, the mean of ``f_i M_i(x)``,
    ``v(x)`` is their sample variance. So ``SE(x) = sqrt(v(x) / n) / p``, from running
    sums of the second moments. If the noise is independent of the map, the spatial
    variance of ``S`` is that of the converged map (infinitely many masks) plus the mean
    ``SE(x)^2`` (less the noise's spatially constant part, which only makes the ratio
    larger), so the Pearson correlation of ``S`` with the converged map is about
    ``sqrt(1 - ratio^2)``: an image stops when it is estimated to be at least
    ``sqrt(1 - tol^2)`` (0.968 at ``tol=0.25``), and two independent maps of ``n`` masks
    are predicted to correlate at ``1 - ratio^2``. On a trained ``shapes`` CNN (32 images,
    8×8 cells, predicted and least likely class) that prediction for two 8000-mask maps
    was within 0.004 of the measured correlation for the median image, 0.014 for the 90th
    percentile. The ratio, and so the stop, is the same for a score ``a f + b``
    as for ``f`` (any ``a != 0``, ``b``; the plain estimator only for ``b = 0``, as its
    noise grows with the mean score). Maps flat up to float rounding of the scores
    (:data:`FLAT`, e.g. a model that ignores its input) stop at the first check.

    Choice of ``tol`` (measured, see ``benchmarks/rise_convergence.py``): comparing with
    an 8000-mask RISE map whose own correlation with a second one is ``r8``, stopping at
    ``tol`` gives about ``sqrt((1 - tol^2) r8)`` after about ``8000 (1 - r8) / tol^2``
    masks. Reaching 0.95 within a third of 8000 masks is then possible (in expectation)
    only where ``r8 >= 0.975``, and ``tol ~ 0.27`` is the largest that still reaches it
    there. Measured on 32 ``shapes`` images, predicted and least likely class (37
    image-targets with ``r8 >= 0.975``): tol 0.25 reached 0.95 on all 37 and stayed
    within 2667 masks on 25; 0.26 reached it on all 37 and stayed within on 29; 0.27
    stayed within on 32 but fell below 0.95 on 4. 0.25 keeps a margin for the noise of the
    estimate itself, which held-out images show to be thin (images 32-39: the lowest r of
    those with ``r8 >= 0.95`` was 0.951).

    Args:
        model: the model.
        images: (B, C, H, W) in [0, 1].
        target: the resolved target.
        max_masks: the most masks per image.
        chunk: masks added between convergence checks.
        tol: the RMS standard error of the map, relative to its spatial standard
            deviation, that stops an image.
        cells: mask grid side.
        p: probability of keeping a cell.
        baseline: ``"black"``, ``"blur"`` (the blurred perturbation) or ``"mean"``.
        batch_size: masked images per forward pass.
        seed: seed of the masks.
        estimator: ``"centred"`` or ``"plain"`` (:data:`ESTIMATORS`, see :func:`rise`).

    Returns:
        ``(maps, n_masks)``: (B, H, W) saliency maps and the masks each image used.

    Raises:
        ViscopeError: an unknown estimator or a ``tol`` that is not positive.
    """
    _check_estimator(estimator)
    if not tol > 0:
        raise ViscopeError(
            f"Expected tol > 0 (the map's relative standard error that stops an image, "
            f"e.g. 0.25); got {tol!r}."
        )
    gen = torch.Generator().manual_seed(seed)
    base = perturbation_baseline(images, baseline)
    b, size = images.shape[0], (images.shape[-2], images.shape[-1])
    dev = images.device
    sums = _RiseSums(b, size, dev, second=True)
    active = torch.ones(b, dtype=torch.bool, device=dev)
    with preserved_buffers(model):  # a train-mode model's BatchNorm statistics stay
        target.fix(model, images)
        for start in range(0, max_masks, chunk):
            which = active.nonzero()[:, 0]
            if len(which) == 0:
                break
            masks = rise_masks(min(chunk, max_masks - start), size, cells=cells, p=p,
                               generator=gen, device=dev, dtype=images.dtype)
            sums.add(which, _masked_scores(model, images, base, masks, target, which,
                                           batch_size), masks)
            active[which[sums.noise_ratio(which, p, estimator) < tol]] = False
    return sums.saliency(p, estimator).to(images.dtype), sums.n.long()


def occlusion(
    model: nn.Module, images: torch.Tensor, target: Target, *, window: int | None = None,
    stride: int | None = None, baseline: float = 0.0, batch_size: int = 64,
) -> torch.Tensor:
    """Occlusion (Zeiler & Fergus, 2014) through captum's ``Occlusion``; summed over channels.

    Args:
        model: the model.
        images: (B, C, H, W).
        target: the resolved target (class indices or a shared callable).
        window: occluding square's side (default: a quarter of the shorter side).
        stride: its step (default: half the window).
        baseline: the occluding value.
        batch_size: occluded images per forward pass.

    Returns:
        (B, H, W): the drop in the target's logit when each pixel is occluded (averaged
        over the windows covering it).
    """
    from captum.attr import Occlusion

    c, h, w = images.shape[1:]
    window = window or max(1, min(h, w) // 4)
    stride = stride or max(1, window // 2)
    with preserved_buffers(model):  # a train-mode model's BatchNorm statistics stay
        target.fix(model, images)
        fwd, tgt = captum_forward(model, target)
        attr = Occlusion(fwd).attribute(
            images, sliding_window_shapes=(c, window, window), strides=(c, stride, stride),
            baselines=baseline, target=tgt,
            perturbations_per_eval=max(1, batch_size // len(images)),
        )
    return attr.sum(dim=1)


def captum_forward(model: nn.Module, target: Target):
    """A captum ``forward_func`` and ``target`` for a resolved target.

    Class targets pass captum the class list, with a forward function that first checks
    the outputs and the class range (:meth:`Target.class_outputs`: captum's own indexing
    error is opaque); a shared callable becomes part of the forward function (captum then
    reads one score per row).
    """
    if target.classes is not None:
        return (lambda x: target.class_outputs(model(x))), target.classes.tolist()
    if target.fn is not None:
        fn = target.fn
        return (lambda x: fn(model(x))), None
    raise ViscopeError(
        "Expected class indices or one shared callable as the target of a captum-based "
        "method; got one callable per image. Explain the images one at a time instead."
    )
