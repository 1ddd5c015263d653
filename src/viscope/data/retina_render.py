"""Rendering of ``retina-quality`` items: the base photograph, its masks, views, degradations.

The base is scikit-image's fundus photograph (``skimage.data.retina()``, 1411 x 1411 RGB,
bundled), read once per process and reduced to 512 px with anti-aliasing. Its masks come
from this recipe (all on the 512 px image):

- **Field of view (FOV)**: luminance (Rec. 601) > 0.1, the largest connected component,
  then the circle of the same area centred on its centroid (the photograph's notch at the
  top right falls outside it). Everything below works in *FOV coordinates*: that circle is
  the unit disc.
- **Vessels**: :func:`skimage.filters.sato` (sigmas 1, 2, 3 px, dark ridges) on the green
  channel (where vessels have the most contrast), zeroed outside the FOV eroded by 8 px
  (the FOV rim is a ridge too), thresholded with Otsu's threshold inside the eroded FOV,
  objects under 30 px removed. Measured: 8 % of the FOV at 512 px.
- **Optic disc**: the argmax of the luminance blurred with a Gaussian of sigma 20 px inside
  the eroded FOV (the disc is the brightest large blob), and a disc of radius
  :data:`DISC_RADIUS` (0.13 FOV radii, the photograph's disc measured by eye) around it.

A view maps each output pixel ``u`` in [-1, 1]^2 to FOV coordinates
``p = FRAME / zoom * R(angle) * flips * u + centre`` and samples the base there (bilinear,
from a copy of the base reduced with anti-aliasing to about ``size * ZOOM_MAX`` px, so
that no view samples coarser than the base: no aliasing of the vessels). The FOV and
disc masks are computed from ``p`` exactly; the vessel mask is the base's soft
(area-averaged) vessel map, sampled with the same grid and thresholded at
:data:`VESSEL_LEVEL`.

Every step is element-wise or a per-pixel sample of a fixed base (:func:`grid_sample`
with all views' grids stacked along the height), and blurs are sums of shifted copies
(not convolutions, whose algorithm may depend on the batch), so an item's pixels do not
depend on the other items of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from kornia.enhance import adjust_hue

if TYPE_CHECKING:
    from viscope.data.retina import RetinaParams

BASE_SIZE = 512  # the reduced photograph the masks are computed on
DISC_RADIUS = 0.13  # optic disc radius, in FOV radii (measured by eye on the photograph)
FRAME = 1.02  # half the output side at zoom 1, in FOV radii (the FOV just fits)
ZOOM_MAX = 1.2  # the largest zoom a view draws (see retina.GEOMETRY)
BLUR_SIGMA = (0.006, 0.055)  # blur sigma = a + b * s**2 of the image side at strength s
# A view's pixel is vessel where the area-averaged vessel map reaches this: at 64 px the
# vessels are 1-2 px wide, and 0.5 would cut all but the largest into dashes.
VESSEL_LEVEL = 0.25
VEIL = (0.88, 0.84, 0.74)  # the milky colour of a cataract-like haze
_JITTER_MEAN = 0.35  # contrast jitter pivots on this grey (about the FOV's mean)


def _smoothstep(t: torch.Tensor) -> torch.Tensor:
    t = t.clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@lru_cache(maxsize=1)
def base_photograph() -> dict[str, np.ndarray | float | tuple[float, float]]:
    """The 512 px photograph and its masks, computed once per process (about 1 s).

    Returns:
        ``image`` float32 (512, 512, 3) in [0, 1], ``vessels`` and ``fov`` bool
        (512, 512), ``centre`` (x, y) and ``radius`` of the FOV circle in pixels, and
        ``disc`` (x, y): the optic disc's centre in FOV coordinates.
    """
    from skimage import data, filters, measure, morphology, transform

    image = transform.resize(data.retina(), (BASE_SIZE, BASE_SIZE), anti_aliasing=True)
    image = image.astype(np.float32)
    lum = image @ np.array([0.299, 0.587, 0.114], np.float32)
    labels = measure.label(lum > 0.1)
    fov_part = max(measure.regionprops(labels), key=lambda r: r.area)
    cy, cx = fov_part.centroid
    radius = math.sqrt(fov_part.area / math.pi)
    yy, xx = np.mgrid[:BASE_SIZE, :BASE_SIZE]
    fov = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    inner = morphology.erosion(fov, morphology.disk(8)).astype(bool)
    ridges = filters.sato(image[..., 1], sigmas=(1, 2, 3), black_ridges=True)
    ridges[~inner] = 0
    vessels = ridges > filters.threshold_otsu(ridges[inner])
    vessels = morphology.remove_small_objects(vessels, max_size=30)
    glow = filters.gaussian(lum, sigma=20)
    glow[~inner] = 0
    dy, dx = np.unravel_index(int(np.argmax(glow)), glow.shape)
    return {
        "image": image * fov[..., None],
        "vessels": vessels,
        "fov": fov,
        "centre": (float(cx), float(cy)),
        "radius": float(radius),
        "disc": ((dx - cx) / radius, (dy - cy) / radius),
    }


@lru_cache(maxsize=8)
def _base_for(size: int) -> tuple[torch.Tensor, tuple[float, float], float]:
    """The photograph (RGB + soft vessel map, (1, 4, S, S)) reduced for views of ``size``
    px, and the FOV circle's centre and radius in grid_sample's [-1, 1] coordinates."""
    from skimage import transform

    base = base_photograph()
    side = min(BASE_SIZE, math.ceil(size * ZOOM_MAX / FRAME) + 2)
    stacked = np.concatenate([base["image"], base["vessels"][..., None]], axis=2)
    small = transform.resize(stacked, (side, side), anti_aliasing=True).astype(np.float32)
    cx, cy = base["centre"]
    centre = ((cx + 0.5) / BASE_SIZE * 2 - 1, (cy + 0.5) / BASE_SIZE * 2 - 1)
    return torch.from_numpy(small).permute(2, 0, 1)[None].contiguous(), centre, (
        base["radius"] * 2 / BASE_SIZE
    )


def fov_coordinates(params: Sequence[RetinaParams], size: int) -> torch.Tensor:
    """Each output pixel's position in FOV coordinates: float32 (B, H, W, 2) as (x, y)."""
    u = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    ux, uy = u[None, None, :], u[None, :, None]
    mats, shifts = [], []
    for p in params:
        c, s = math.cos(math.radians(p.angle)), math.sin(math.radians(p.angle))
        fx, fy = (-1.0 if p.flip_h else 1.0), (-1.0 if p.flip_v else 1.0)
        k = FRAME / p.zoom
        mats.append([[k * c * fx, -k * s * fy], [k * s * fx, k * c * fy]])
        shifts.append(p.centre)
    m = torch.tensor(mats, dtype=torch.float32)[:, :, :, None, None]
    t = torch.tensor(shifts, dtype=torch.float32)[:, :, None, None]
    px = m[:, 0, 0] * ux + m[:, 0, 1] * uy + t[:, 0]
    py = m[:, 1, 0] * ux + m[:, 1, 1] * uy + t[:, 1]
    return torch.stack([px, py], dim=-1)


def view(
    params: Sequence[RetinaParams], size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The undegraded views: images (B, 3, H, W), FOV, structure masks (B, 1, H, W) bool,
    and the FOV coordinates (B, H, W, 2)."""
    p = fov_coordinates(params, size)
    base, centre, radius = _base_for(size)
    grid = torch.stack([centre[0] + radius * p[..., 0], centre[1] + radius * p[..., 1]], -1)
    b = len(params)
    # one source, many views: the grids stacked along the height are one sampling call
    sampled = F.grid_sample(
        base, grid.reshape(1, b * size, size, 2), mode="bilinear", align_corners=False
    )
    sampled = sampled.reshape(4, b, size, size).transpose(0, 1)
    r2 = p[..., 0] ** 2 + p[..., 1] ** 2
    fov = (r2 <= 1.0)[:, None]
    dx, dy = base_photograph()["disc"]  # type: ignore[misc]
    disc = ((p[..., 0] - dx) ** 2 + (p[..., 1] - dy) ** 2 <= DISC_RADIUS**2)[:, None]
    structures = fov & (disc | (sampled[:, 3:] >= VESSEL_LEVEL))
    image = _jitter(sampled[:, :3], params) * fov
    return image.clamp(0.0, 1.0), fov, structures, p


def _jitter(image: torch.Tensor, params: Sequence[RetinaParams]) -> torch.Tensor:
    """Mild colour jitter: brightness (a gain), contrast, saturation, hue."""
    jit = torch.tensor([p.jitter for p in params], dtype=torch.float32)
    gain, contrast, saturation = (jit[:, k, None, None, None] for k in range(3))
    image = (image * gain - _JITTER_MEAN) * contrast + _JITTER_MEAN
    grey = (0.299 * image[:, :1] + 0.587 * image[:, 1:2] + 0.114 * image[:, 2:]).clamp(0, 1)
    image = (grey + saturation * (image - grey)).clamp(0.0, 1.0)
    return adjust_hue(image, jit[:, 3])


def blur_sigma(strength: float, size: int) -> float:
    """The blur's sigma in pixels at a strength; quadratic, so that the moderate band
    keeps the large vessels (0.7-1.45 px at 64 px) and the strong band erases them
    (2.4-3.9 px): the bands' blurs differ by more than a linear map would make them."""
    a, b = BLUR_SIGMA
    return (a + b * strength**2) * size


def _blur(image: torch.Tensor, sigmas: Sequence[float], size: int) -> torch.Tensor:
    """Gaussian blur with one sigma (px) per image: sums of shifted copies along x then y
    (element-wise, so batch-independent; zero padding, as outside the FOV is black)."""
    radius = max(1, math.ceil(3 * blur_sigma(1.0, size)))
    taps = np.arange(-radius, radius + 1)
    weights = np.stack([np.exp(-(taps**2) / (2 * s * s)) for s in sigmas])
    w = torch.from_numpy((weights / weights.sum(1, keepdims=True)).astype(np.float32))
    for dim in (3, 2):
        pad = (radius, radius, 0, 0) if dim == 3 else (0, 0, radius, radius)
        padded = F.pad(image, pad)
        out = torch.zeros_like(image)
        for k in range(len(taps)):
            out += w[:, k, None, None, None] * padded.narrow(dim, k, image.shape[dim])
        image = out
    return image


def _region(kind: str, region: tuple[float, ...], p: torch.Tensor) -> torch.Tensor:
    """Weight (H, W) in [0, 1] of a degradation over FOV coordinates ``p`` (H, W, 2);
    exactly 0 outside its region, so its mask is ``weight > 0``."""
    x, y = p[..., 0], p[..., 1]
    if not region:  # global
        return torch.ones_like(x)
    if kind in ("illumination", "occlusion"):  # a side of the field, beyond a line
        angle, offset, width = region[:3]
        along = x * math.cos(angle) + y * math.sin(angle)
        w = _smoothstep((along - offset) / width)
        if kind == "occlusion":  # plus eyelash strokes: arcs of circles outside the FOV
            for k in range(3, len(region), 3):
                rot, dist, thick = region[k : k + 3]
                cx, cy = 1.6 * math.cos(angle + rot), 1.6 * math.sin(angle + rot)
                ring = ((x - cx) ** 2 + (y - cy) ** 2).sqrt() - dist
                w = torch.maximum(w, _smoothstep(1 - ring.abs() / thick) * (along > 0))
        return w
    cx, cy, rx, ry, angle = region  # an elliptical patch with a soft rim
    c, s = math.cos(angle), math.sin(angle)
    u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    r = ((u / rx) ** 2 + (v / ry) ** 2).sqrt()
    return _smoothstep((1 - r) / 0.35)


def degrade(
    image: torch.Tensor,
    fov: torch.Tensor,
    p: torch.Tensor,
    params: Sequence[RetinaParams],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply each item's degradations in order; return the images and where they changed.

    Each degradation blends the image towards its degraded version with a weight map that
    is exactly 0 outside its region and outside the FOV: ``x + w * (D(x) - x)``.

    Returns:
        ``(images (B, 3, H, W), degradation masks (B, 1, H, W) bool)``.
    """
    size = image.shape[-1]
    image = image.clone()
    mask = torch.zeros_like(fov)
    slots = max((len(q.degradations) for q in params), default=0)
    for slot in range(slots):
        for i, q in enumerate(params):  # weights and masks, item by item
            if slot >= len(q.degradations):
                continue
            kind, s = q.degradations[slot]
            w = _region(kind, q.regions[slot], p[i])[None] * fov[i]
            mask[i] |= w > 0
            x = image[i : i + 1]
            if kind == "blur":
                target = _blur(x, [blur_sigma(s, size)], size)
            elif kind == "underexposure":
                target = x * (1 - 0.7 * s)
            elif kind == "overexposure":
                target = x * (1 + 1.2 * s) + 0.1 * s
            elif kind == "illumination":
                target = x * (1 - 0.9 * s)
            elif kind == "haze":
                veil = torch.tensor(VEIL).reshape(1, 3, 1, 1)
                target = x + 0.75 * s * (veil - x)
            elif kind == "noise":
                gen = torch.Generator().manual_seed(q.noise_seed + slot)
                target = x + 0.15 * s * torch.randn(x.shape, generator=gen)
            else:  # occlusion: dark lid / lashes
                target = x * (1 - s)
            image[i] = (x + w * (target.clamp(0.0, 1.0) - x))[0]
    return image, mask
