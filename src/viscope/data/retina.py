"""``retina-quality``: views of a real fundus photograph, good or degraded, with masks.

Every item is a random view of scikit-image's fundus photograph (``skimage.data.retina``,
bundled; masks and rendering in :mod:`viscope.data.retina_render`): zoom, any rotation,
flips, a small shift (most of the field of view, FOV, stays in frame; outside it is
black) and mild colour jitter (:data:`GEOMETRY`, :data:`JITTER`). ``good`` items are just
that; ``usable`` items carry one degradation and ``reject`` items one or two, each at a
strength drawn from the class's band:

========  ====================  ================================
class     degradations          strength drawn uniformly from
========  ====================  ================================
good      none                  --
usable    1                     0.30 .. 0.55 (moderate)
reject    1 or 2 (different)    0.75 .. 1.00 (strong)
========  ====================  ================================

(:data:`BANDS`; the gap 0.55 .. 0.75 keeps the classes apart.) A strength ``s`` means,
per kind (:data:`KINDS`, drawn uniformly; "region" is where it applies, in FOV
coordinates, with a soft rim):

=============  ====================================  ==============================
kind           effect at strength ``s``              region
=============  ====================================  ==============================
blur           defocus: Gaussian, sigma              the FOV (70 %) or an elliptical
               ``(0.006 + 0.055 s^2)`` of the side   patch
underexposure  gain ``1 - 0.7 s``                    the FOV
overexposure   gain ``1 + 1.2 s``, plus ``0.1 s``    the FOV
illumination   shadow: gain ``1 - 0.9 s``            one side of the field, ramped
haze           milky veil, ``0.75 s`` of the way     the FOV (50 %) or a patch
               to :data:`~viscope.data.retina_render.VEIL`
noise          Gaussian, sigma ``0.15 s``            the FOV
occlusion      eyelids/lashes: gain ``1 - s``        a crescent at the FOV edge and
                                                     2-4 curved lash strokes
=============  ====================================  ==============================

Each item's mask marks the pixels a degradation changed (all 0 for good items, the FOV for
a global one). Brightness alone tells the classes apart poorly (exposure goes both ways
and most degradations keep it): a logistic regression on the per-channel means (inside
the FOV and over the frame) scores 0.61 in 5-fold cross-validation (600 images at 64 px,
seed 2; chance 0.33), while timm's tiny ``test_resnet`` trained by
:func:`viscope.train.fit` (600 images, 64 px, lr 3e-3, batch 32; about 10 s on 2 CPU
cores) reaches 0.97 / 0.94 / 0.89 test accuracy after 8 epochs (seeds 0 / 1 / 2) and
0.96 after 12 (seed 2); its remaining errors are mostly blur strengths near the bands'
edges.

Item ``i`` depends only on ``(seed, i, size)`` and the class list: its class is
``classes[i % len(classes)]`` (balanced for any ``n``; splits stay stratified) and its
parameters come from ``np.random.default_rng([seed, i])``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from viscope.data import retina_render
from viscope.data.base import Item, VisionDataset, check_seed, normalise_index
from viscope.errors import ViscopeError

CLASSES = ("good", "usable", "reject")
#: Strength band of each class's degradations (``None``: no degradation).
BANDS: dict[str, tuple[float, float] | None] = {
    "good": None,
    "usable": (0.30, 0.55),
    "reject": (0.75, 1.00),
}
KINDS = ("blur", "underexposure", "overexposure", "illumination", "haze", "noise", "occlusion")
#: Ranges of a view: angle (degrees), zoom, shift of the view's centre (FOV radii).
GEOMETRY = {"angle": (0.0, 360.0), "zoom": (0.9, retina_render.ZOOM_MAX), "shift": 0.1}
#: Colour jitter: brightness gain, contrast, saturation (factors 1 +- these), hue (radians).
JITTER = (0.06, 0.06, 0.08, 0.05)
MIN_SIZE, MAX_SIZE = 32, 512


@dataclass(frozen=True)
class RetinaParams:
    """Everything that determines one ``retina-quality`` item.

    Attributes:
        label: Index into the dataset's classes.
        grade: The class name (``"good"``, ``"usable"`` or ``"reject"``).
        degradations: ``(kind, strength)`` pairs, applied in this order.
        regions: Where each degradation applies, in FOV coordinates (the FOV is the unit
            disc): ``()`` for the whole FOV; ``(x, y, rx, ry, angle)`` for an elliptical
            patch; ``(angle, offset, width, ...)`` for one side of the field beyond a
            line at ``offset`` along ``angle`` (radians), ramped over ``width``, and for
            occlusion, lash strokes as ``(rotation, radius, thickness)`` triples.
        angle: Rotation of the view in degrees.
        flip_h: Horizontal flip.
        flip_v: Vertical flip.
        zoom: Magnification (1: the FOV just fits the frame).
        centre: The view's centre in FOV coordinates.
        jitter: Brightness gain, contrast and saturation factors, hue shift (radians).
        noise_seed: Seed of the pixel noise (used by a ``noise`` degradation).
    """

    label: int
    grade: str
    degradations: tuple[tuple[str, float], ...]
    regions: tuple[tuple[float, ...], ...]
    angle: float
    flip_h: bool
    flip_v: bool
    zoom: float
    centre: tuple[float, float]
    jitter: tuple[float, float, float, float]
    noise_seed: int


def check_classes(classes: Sequence[str] | str) -> list[str]:
    """The classes as distinct names among good, usable, reject, in the given order.

    Raises:
        ViscopeError: An unknown or repeated name, or no names at all.
    """
    parts = classes.split(",") if isinstance(classes, str) else classes
    names = [str(c).strip().lower() for c in parts]
    bad = [c for c in names if c not in CLASSES]
    if not names or bad or len(set(names)) != len(names):
        raise ViscopeError(
            f"Expected retina-quality classes to be distinct names among {', '.join(CLASSES)}; "
            f"got {classes!r}. Pass e.g. classes=('good', 'reject') or the default three."
        )
    return names


def _region(kind: str, rng: np.random.Generator) -> tuple[float, ...]:
    if kind in ("underexposure", "overexposure", "noise"):
        return ()
    if kind in ("blur", "haze") and rng.random() < (0.7 if kind == "blur" else 0.5):
        return ()
    if kind in ("blur", "haze"):
        # large patches: a small one over the smooth fundus would change little
        where, dist = rng.uniform(0, 2 * math.pi), 0.35 * math.sqrt(rng.random())
        rx, ry, angle = rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0), rng.uniform(0, math.pi)
        return (dist * math.cos(where), dist * math.sin(where), rx, ry, angle)
    angle = rng.uniform(0, 2 * math.pi)
    if kind == "illumination":
        return (angle, rng.uniform(-0.4, 0.1), rng.uniform(0.5, 0.9))
    strokes = [
        (rng.uniform(-0.35, 0.35), rng.uniform(0.75, 1.0), rng.uniform(0.03, 0.05))
        for _ in range(int(rng.integers(2, 5)))
    ]
    return (angle, rng.uniform(0.25, 0.55), rng.uniform(0.15, 0.25), *sum(strokes, ()))


def sample_params(seed: int, index: int, classes: Sequence[str] = CLASSES) -> RetinaParams:
    """Draw the parameters of item ``index``; they depend only on ``(seed, index, classes)``.

    Args:
        seed: Dataset seed.
        index: Item index (non-negative).
        classes: The classes generated (names from :data:`CLASSES`).

    Returns:
        The item's parameters.
    """
    label = index % len(classes)
    grade = classes[label]
    rng = np.random.default_rng([seed, index])
    shift_r, shift_a = GEOMETRY["shift"] * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
    geometry = {
        "angle": float(rng.uniform(*GEOMETRY["angle"])),
        "flip_h": bool(rng.random() < 0.5),
        "flip_v": bool(rng.random() < 0.5),
        "zoom": float(rng.uniform(*GEOMETRY["zoom"])),
        "centre": (shift_r * math.cos(shift_a), shift_r * math.sin(shift_a)),
    }
    jitter = tuple(float(1 + rng.uniform(-j, j)) for j in JITTER[:3])
    jitter += (float(rng.uniform(-JITTER[3], JITTER[3])),)
    noise_seed = int(rng.integers(2**31))
    band = BANDS[grade]
    count = 0 if band is None else (1 if grade == "usable" else int(rng.integers(1, 3)))
    kinds = [KINDS[k] for k in rng.permutation(len(KINDS))[:count]]
    degradations = tuple((k, float(rng.uniform(*band))) for k in kinds) if band else ()
    regions = tuple(_region(k, rng) for k in kinds)
    return RetinaParams(
        label=label,
        grade=grade,
        degradations=degradations,
        regions=regions,
        jitter=jitter,  # type: ignore[arg-type]
        noise_seed=noise_seed,
        **geometry,  # type: ignore[arg-type]
    )


def render(
    params: Sequence[RetinaParams], size: int, degrade: bool = True
) -> dict[str, torch.Tensor]:
    """Draw items from their parameters, all at once.

    Args:
        params: Parameters from :func:`sample_params`.
        size: Image side in pixels.
        degrade: Apply the items' degradations (``False``: the same views, undegraded,
            so that a test can see which pixels the degradations changed).

    Returns:
        ``images`` float32 (B, 3, H, W) in [0, 1] and the bool (B, 1, H, W) masks
        ``degradation`` (all False without ``degrade``), ``structures`` and ``fov``.
    """
    # One thread: the ops are small, and on busy cores handing them to a second thread
    # cost more than it saved (600 items at 64 px: 0.55 s, against 3.5 s with two).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images, fov, structures, coords = retina_render.view(params, size)
        if degrade:
            images, changed = retina_render.degrade(images, fov, coords, params)
        else:
            changed = torch.zeros_like(fov)
    finally:
        torch.set_num_threads(threads)
    return {"images": images, "degradation": changed, "structures": structures, "fov": fov}


class RetinaQuality(VisionDataset):
    """Fundus photographs graded good / usable / reject; items ``(image, label, mask)``.

    ``image`` is float32 (3, H, W) in [0, 1], ``label`` an index into ``classes`` and
    ``mask`` float32 (1, H, W), 1 where a degradation changed the image. The retinal
    structures (vessels and optic disc inside the FOV) and the FOV come from
    :meth:`structure_masks` and :meth:`fov_masks`, the parameters from :meth:`params`.

    Args:
        n: Number of items (default 600); classes cycle, so any n is balanced.
        size: Image side in pixels, 32 to 512 (64 to 128 suits a CPU).
        seed: Generation seed; item ``i`` depends only on ``(seed, i, size, classes)``.
        classes: Classes to generate, among ``good``, ``usable``, ``reject``; labels
            index this list in the order given.
        cache: Render everything at construction (about ``n * size**2 * 15`` bytes).
            If false, each item is rendered when read.

    Raises:
        ViscopeError: ``n``, ``size``, ``seed`` or ``classes`` is invalid.

    Example:
        >>> ds = RetinaQuality(n=6, size=64)
        >>> image, label, mask = ds[2]
        >>> tuple(image.shape), ds.classes[label], [k for k, _ in ds.params(0).degradations]
        ((3, 64, 64), 'reject', [])
    """

    def __init__(
        self,
        n: int | None = 600,
        size: int = 64,
        seed: int = 0,
        classes: Sequence[str] | str = CLASSES,
        cache: bool = True,
    ) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or not MIN_SIZE <= size <= MAX_SIZE:
            raise ViscopeError(
                f"Expected retina-quality size to be an int from {MIN_SIZE} to {MAX_SIZE}; "
                f"got {size!r}. Use 64 to 128 on a CPU."
            )
        n = 600 if n is None else n
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ViscopeError(
                f"Expected retina-quality n to be a positive int; got {n!r}. Pass e.g. n=600."
            )
        self.size, self.seed = size, check_seed(seed)
        self.classes = check_classes(classes)
        self.has_masks = True
        self.targets = [i % len(self.classes) for i in range(n)]
        self._cache: dict[str, torch.Tensor] | None = None
        if cache:
            self._cache = self._render(range(n))

    def params(self, index: int) -> RetinaParams:
        """The parameters that item ``index`` was drawn from."""
        return sample_params(self.seed, normalise_index(index, len(self)), self.classes)

    def _render(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        indices = list(indices)
        chunk = 256  # bounds the temporaries; items do not depend on their batch
        parts = [
            render([self.params(i) for i in indices[start : start + chunk]], self.size)
            for start in range(0, len(indices), chunk)
        ]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _rendered(self, indices: Sequence[int], key: str) -> torch.Tensor:
        checked = [normalise_index(int(i), len(self)) for i in indices]
        if self._cache is not None:
            return self._cache[key][checked]
        return self._render(checked)[key]

    def _item(self, index: int) -> Item:
        if self._cache is not None:
            image, mask = self._cache["images"][index], self._cache["degradation"][index]
        else:
            rendered = self._render([index])
            image, mask = rendered["images"][0], rendered["degradation"][0]
        return image.clone(), self.targets[index], mask.float()

    def degradation_masks(self, indices: Sequence[int]) -> torch.Tensor:
        """Where degradations changed the images: float32 (B, 1, H, W) in {0, 1}."""
        return self._rendered(indices, "degradation").float()

    def structure_masks(self, indices: Sequence[int]) -> torch.Tensor:
        """Vessels and optic disc inside the FOV: float32 (B, 1, H, W) in {0, 1}."""
        return self._rendered(indices, "structures").float()

    def fov_masks(self, indices: Sequence[int]) -> torch.Tensor:
        """The field of view: float32 (B, 1, H, W) in {0, 1}."""
        return self._rendered(indices, "fov").float()
