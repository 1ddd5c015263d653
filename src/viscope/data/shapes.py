"""``shapes``: procedurally drawn shapes on textured backgrounds, with exact masks.

Each item is one shape (circle, square, triangle, cross or star) of random colour,
position, size and rotation on a random texture (smooth noise or stripes in two
colours). Item ``i`` depends only on ``(seed, i, size)``: its parameters come from its own
generator ``np.random.default_rng([seed, i])``, and the renderer is a pure, element-wise
function of the parameters, so one item rendered alone equals the same item rendered in
a batch, and any subset is reproducible.

Rendering is vectorised over a batch: every pixel centre is mapped into the shape's own
frame (unit circumscribed radius) and tested against the shape's implicit inside
function. Shapes are always wholly inside the image (centre at least one radius from
every edge), and the foreground and background differ in HSV value by at least 0.25.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from viscope.data.base import Item, VisionDataset, check_seed
from viscope.errors import ViscopeError

SHAPES = ("circle", "square", "triangle", "cross", "star")
_CROSS_HALF_WIDTH = 0.3
_CROSS_HALF_LENGTH = math.sqrt(1.0 - _CROSS_HALF_WIDTH**2)  # arm corners on the unit circle
_STAR_INNER = 0.5  # inner/outer radius; a regular pentagram's 0.382 is too thin at 32 px
_STAR_HALF_SECTOR = math.pi / 5
_NOISE_GRID = 4  # low-frequency noise: a 4x4 random grid, bilinearly upsampled
_PIXEL_NOISE = 0.02
RADIUS_RANGE = (0.22, 0.42)  # circumscribed radius, as a fraction of the image side

#: Area of each shape with circumscribed radius 1 (mask area ~= UNIT_AREA * radius**2).
UNIT_AREA: dict[str, float] = {
    "circle": math.pi,
    "square": 2.0,
    "triangle": 3.0 * math.sqrt(3.0) / 4.0,
    "cross": 8 * _CROSS_HALF_LENGTH * _CROSS_HALF_WIDTH - 4 * _CROSS_HALF_WIDTH**2,
    "star": 5 * _STAR_INNER * math.sin(_STAR_HALF_SECTOR),
}


@dataclass(frozen=True)
class ShapeParams:
    """Everything that determines one ``shapes`` item (lengths in pixels, angles in radians).

    Attributes:
        label: Index into :data:`SHAPES`.
        centre_x: Horizontal centre; pixel ``j`` spans ``[j, j + 1)``.
        centre_y: Vertical centre (rows grow downwards).
        radius: Circumscribed radius in pixels.
        angle_radians: Rotation of the shape.
        foreground: RGB colour of the shape, each in [0, 1].
        background_a: First texture colour.
        background_b: Second texture colour.
        stripes: Stripes texture if true, smooth noise otherwise.
        noise_grid: (4, 4) values in [0, 1] upsampled into the noise texture.
        stripe_cycles: Stripe frequency in cycles per image side.
        stripe_angle_radians: Stripe direction.
        stripe_phase_radians: Stripe phase.
        noise_seed: Seed of the per-pixel noise.
    """

    label: int
    centre_x: float
    centre_y: float
    radius: float
    angle_radians: float
    foreground: tuple[float, float, float]
    background_a: tuple[float, float, float]
    background_b: tuple[float, float, float]
    stripes: bool
    noise_grid: tuple[tuple[float, ...], ...]
    stripe_cycles: float
    stripe_angle_radians: float
    stripe_phase_radians: float
    noise_seed: int

    @property
    def shape(self) -> str:
        """The shape's name."""
        return SHAPES[self.label]

    def vertices(self) -> np.ndarray | None:
        """The polygon's (x, y) corners in pixels, or ``None`` for the circle."""
        local = _unit_polygon(self.shape)
        if local is None:
            return None
        c, s = math.cos(self.angle_radians), math.sin(self.angle_radians)
        x = self.centre_x + self.radius * (c * local[:, 0] - s * local[:, 1])
        y = self.centre_y + self.radius * (s * local[:, 0] + c * local[:, 1])
        return np.stack([x, y], axis=1)


def _unit_polygon(shape: str) -> np.ndarray | None:
    """Corners of ``shape`` at rotation 0 with circumscribed radius 1 (None for the circle)."""
    if shape == "circle":
        return None
    if shape == "square":
        h = 1 / math.sqrt(2)
        return np.array([[h, h], [-h, h], [-h, -h], [h, -h]])
    if shape == "triangle":
        a = np.deg2rad([90.0, 210.0, 330.0])
        return np.stack([np.cos(a), np.sin(a)], axis=1)
    if shape == "cross":
        w, ln = _CROSS_HALF_WIDTH, _CROSS_HALF_LENGTH
        q = [[ln, w], [w, w], [w, ln]]  # one quadrant, counter-clockwise
        pts = []
        for k in range(4):
            c, s = round(math.cos(k * math.pi / 2)), round(math.sin(k * math.pi / 2))
            pts += [[c * x - s * y, s * x + c * y] for x, y in q]
        return np.array(pts, dtype=float)
    k = np.arange(10)
    r = np.where(k % 2 == 0, 1.0, _STAR_INNER)
    return np.stack([r * np.cos(k * _STAR_HALF_SECTOR), r * np.sin(k * _STAR_HALF_SECTOR)], 1)


def sample_params(seed: int, index: int, size: int) -> ShapeParams:
    """Draw the parameters of item ``index``; they depend only on ``(seed, index, size)``.

    Labels cycle through :data:`SHAPES` (``label = index % 5``), so any n is balanced.

    Args:
        seed: Dataset seed.
        index: Item index (non-negative).
        size: Image side in pixels.

    Returns:
        The item's parameters.
    """
    rng = np.random.default_rng([seed, index])
    radius = float(rng.uniform(*RADIUS_RANGE)) * size
    cx, cy = rng.uniform(radius, size - radius, size=2)
    fg_bright = bool(rng.random() < 0.5)
    # HSV: the shape's value is >= 0.7 or <= 0.3 and the texture's is on the other side
    # of a 0.25 gap, with hues at least 0.2 apart, so the shape is always visibly distinct;
    # the texture's two values differ by >= 0.2 so that it is never flat.
    fg_val = rng.uniform(0.7, 1.0) if fg_bright else rng.uniform(0.05, 0.3)
    low = rng.uniform(0.05, 0.2) if fg_bright else rng.uniform(0.55, 0.75)
    high = low + rng.uniform(0.2, 0.25)
    bg_val = (low, high) if rng.random() < 0.5 else (high, low)
    fg_hue = float(rng.random())
    bg_hue = (fg_hue + rng.uniform(0.2, 0.8, size=2)) % 1.0
    sat = rng.uniform(0.3, 1.0, size=3)
    fg, bg_a, bg_b = (
        tuple(colorsys.hsv_to_rgb(float(h), float(sv), float(val)))
        for h, sv, val in zip([fg_hue, *bg_hue], sat, [fg_val, *bg_val], strict=True)
    )
    grid = rng.random((_NOISE_GRID, _NOISE_GRID))
    grid = (grid - grid.min()) / (grid.max() - grid.min())  # the texture spans both colours
    return ShapeParams(
        label=index % len(SHAPES),
        centre_x=float(cx),
        centre_y=float(cy),
        radius=radius,
        angle_radians=float(rng.uniform(0, 2 * math.pi)),
        foreground=fg,  # type: ignore[arg-type]
        background_a=bg_a,  # type: ignore[arg-type]
        background_b=bg_b,  # type: ignore[arg-type]
        stripes=bool(rng.random() < 0.5),
        noise_grid=tuple(tuple(float(v) for v in row) for row in grid),
        stripe_cycles=float(rng.uniform(1.5, 4.0)),
        stripe_angle_radians=float(rng.uniform(0, math.pi)),
        stripe_phase_radians=float(rng.uniform(0, 2 * math.pi)),
        noise_seed=int(rng.integers(2**31)),
    )


def _inside(label: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether local points (u, v) (unit circumscribed radius) fall inside each item's shape."""
    out = np.zeros(u.shape, dtype=bool)
    for k, shape in enumerate(SHAPES):
        sel = label == k
        if not sel.any():
            continue
        x, y = u[sel], v[sel]
        if shape == "circle":
            hit = x * x + y * y <= 1.0
        elif shape == "square":
            hit = np.maximum(np.abs(x), np.abs(y)) <= 1 / math.sqrt(2)
        elif shape == "triangle":
            # Edge normals point away from the corners at 90, 210 and 330 degrees; inradius 1/2.
            hit = np.ones(x.shape, dtype=bool)
            for deg in (270.0, 30.0, 150.0):
                a = math.radians(deg)
                hit &= x * math.cos(a) + y * math.sin(a) <= 0.5
        elif shape == "cross":
            ax, ay = np.abs(x), np.abs(y)
            w, ln = _CROSS_HALF_WIDTH, _CROSS_HALF_LENGTH
            hit = ((ax <= ln) & (ay <= w)) | ((ax <= w) & (ay <= ln))
        else:  # star: fold the angle into one half-sector, test against the edge there
            a = _STAR_HALF_SECTOR
            theta = np.mod(np.arctan2(y, x), 2 * a)
            psi = a - np.abs(theta - a)  # 0 at an outer corner, a at an inner one
            r = np.hypot(x, y)
            px, py = r * np.cos(psi), r * np.sin(psi)
            dx, dy = _STAR_INNER * math.cos(a) - 1.0, _STAR_INNER * math.sin(a)
            hit = dx * py - dy * (px - 1.0) >= 0.0
        out[sel] = hit
    return out


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling (half-pixel centres) of (B, g, g) grids to (B, size, size)."""
    g = grid.shape[-1]
    pos = np.clip((np.arange(size) + 0.5) * g / size - 0.5, 0, g - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, g - 1)
    w = pos - i0
    rows = grid[:, i0, :] * (1 - w)[None, :, None] + grid[:, i1, :] * w[None, :, None]
    return rows[:, :, i0] * (1 - w) + rows[:, :, i1] * w


def render(params: Sequence[ShapeParams], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw items from their parameters, all at once.

    The computation is element-wise per item, so the result for an item does not depend
    on which other items are in ``params``.

    Args:
        params: Parameters from :func:`sample_params`.
        size: Image side in pixels.

    Returns:
        ``(images, masks)``: float32 (B, 3, size, size) in [0, 1] and (B, 1, size, size)
        in {0, 1}.
    """

    def field(name: str) -> np.ndarray:
        return np.array([getattr(p, name) for p in params], dtype=np.float64)

    label = np.array([p.label for p in params], dtype=np.int64)
    centre = (np.arange(size) + 0.5)[None]
    dx = (centre - field("centre_x")[:, None])[:, None, :]  # (B, 1, W)
    dy = (centre - field("centre_y")[:, None])[:, :, None]  # (B, H, 1)
    ang, r = field("angle_radians"), field("radius")
    c, s = (np.cos(ang) / r)[:, None, None], (np.sin(ang) / r)[:, None, None]
    u, v = c * dx + s * dy, c * dy - s * dx
    mask = _inside(label, u, v)

    # The texture and colours are computed in float32: geometry needs float64, colour does not.
    f32 = np.float32
    stripes = field("stripes")[:, None, None] > 0.5
    noise_t = _upsample(field("noise_grid"), size).astype(f32)
    sa = field("stripe_angle_radians")[:, None, None]
    along = ((np.cos(sa) * dx + np.sin(sa) * dy) / size).astype(f32)
    cycles = field("stripe_cycles").astype(f32)[:, None, None]
    phase = field("stripe_phase_radians").astype(f32)[:, None, None]
    stripe_t = f32(0.5) + f32(0.5) * np.sin(f32(2 * math.pi) * cycles * along + phase)
    t = np.where(stripes, stripe_t, noise_t)[:, None]  # (B, 1, H, W)
    bg_a = field("background_a").astype(f32)[:, :, None, None]
    bg_b = field("background_b").astype(f32)[:, :, None, None]
    fg = field("foreground").astype(f32)[:, :, None, None]
    m = mask[:, None].astype(f32)
    image = bg_a + (bg_b - bg_a) * t
    image = np.where(mask[:, None], fg, image)
    image += np.stack(
        [np.random.default_rng(p.noise_seed).standard_normal((3, size, size), f32) for p in params]
    ) * f32(_PIXEL_NOISE)
    np.clip(image, 0.0, 1.0, out=image)
    return torch.from_numpy(image), torch.from_numpy(m)


class ShapesDataset(VisionDataset):
    """Procedurally generated shapes with ground-truth masks; items ``(image, label, mask)``.

    Args:
        size: Image side in pixels (at least 8).
        n: Number of items (default 2000); labels cycle through the classes.
        seed: Generation seed; item ``i`` depends only on ``(seed, i, size)``.
        cache: Render everything once at construction (fast per item; 4 * n * 4 * size**2
            bytes). If false, each item is rendered when it is read.

    Raises:
        ViscopeError: ``size`` or ``n`` is out of range.

    Example:
        >>> ds = ShapesDataset(size=32, n=10)
        >>> image, label, mask = ds[3]
        >>> tuple(image.shape), ds.classes[label], tuple(mask.shape)
        ((3, 32, 32), 'cross', (1, 32, 32))
    """

    def __init__(self, size: int = 32, n: int | None = None, seed: int = 0, cache: bool = True):
        if not isinstance(size, int) or isinstance(size, bool) or size < 8:
            raise ViscopeError(f"Expected shapes image size to be an int >= 8; got {size!r}.")
        n = 2000 if n is None else n
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ViscopeError(f"Expected shapes n to be a positive int; got {n!r}.")
        self.size, self.seed = size, check_seed(seed)
        self.classes = list(SHAPES)
        self.has_masks = True
        self.targets = [i % len(SHAPES) for i in range(n)]
        self._images: torch.Tensor | None = None
        self._masks: torch.Tensor | None = None
        if cache:
            self._images, self._masks = self._render_all(chunk=max(1, 2**19 // size**2))

    def params(self, index: int) -> ShapeParams:
        """The parameters that item ``index`` was drawn from."""
        return sample_params(self.seed, index, self.size)

    def _render_all(self, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.empty(len(self), 3, self.size, self.size, dtype=torch.float32)
        masks = torch.empty(len(self), 1, self.size, self.size, dtype=torch.float32)
        for start in range(0, len(self), chunk):
            stop = min(start + chunk, len(self))
            batch = [self.params(i) for i in range(start, stop)]
            images[start:stop], masks[start:stop] = render(batch, self.size)
        return images, masks

    def _item(self, index: int) -> Item:
        if self._images is not None and self._masks is not None:
            image, mask = self._images[index].clone(), self._masks[index].clone()
        else:
            images, masks = render([self.params(index)], self.size)
            image, mask = images[0], masks[0]
        return image, self.targets[index], mask
