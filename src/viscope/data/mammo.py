"""``mammo``: generated screening mammograms with dense-tissue and breast masks.

Each item is one greyscale view, already flipped so that the breast lies against the LEFT
edge (as a real loader does, see :class:`viscope.data.density.DensityCSV`): a half-ellipse
of breast tissue on a dark background, its skin line irregular and darker (the compressed
breast thins there), a bright pectoral-muscle triangle in the top-left corner, and
fibroglandular (dense) tissue: a smooth random field, thresholded inside the breast so
that the dense AREA FRACTION of the breast (pectoral muscle excluded, as density software
does) falls in the band of the item's BI-RADS density class:

======  ==============  =========================
class   BI-RADS band    fraction drawn uniformly
======  ==============  =========================
A       < 25 %          5 % .. 20 %
B       25 .. 50 %      30 % .. 45 %
C       50 .. 75 %      55 % .. 70 %
D       > 75 %          80 % .. 95 %
======  ==============  =========================

(:data:`BANDS`; 5 points away from every class border, so no item is ambiguous.) Dense
tissue is brighter than fat and more textured; some images carry a small bright mass
(not dense tissue, so not in the mask) and all carry pixel noise.

Exposure is set per image the way a mammography unit's automatic exposure control does:
it aims at a target mean brightness (drawn independently of the class), so a dense breast
gets darker fat rather than a brighter image. Mean brightness alone therefore hardly
separates A from D; a classifier has to look at the area and texture of the bright tissue.

Item ``i`` depends only on ``(seed, i, size)`` and the class list: its class is
``classes[i % len(classes)]`` (balanced for any ``n``; splits stay stratified) and its
parameters come from ``np.random.default_rng([seed, i])``. Random fields are drawn on
grids of fixed size and upsampled, so an item looks the same at 64 and 128 px. The
renderer uses only element-wise arithmetic and per-item sorts, so an item rendered alone
equals the same item rendered in a batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from viscope.data.base import Item, VisionDataset, check_seed, normalise_index
from viscope.errors import ViscopeError

#: Density classes and the (low, high) dense area fraction each is drawn from.
BANDS: dict[str, tuple[float, float]] = {
    "A": (0.05, 0.20),
    "B": (0.30, 0.45),
    "C": (0.55, 0.70),
    "D": (0.80, 0.95),
}
#: BI-RADS borders of each class (the bands above keep 0.05 away from them).
BIRADS: dict[str, tuple[float, float]] = {
    "A": (0.0, 0.25),
    "B": (0.25, 0.50),
    "C": (0.50, 0.75),
    "D": (0.75, 1.0),
}
MIN_SIZE = 8  # the registry-wide smallest; 64 to 128 px suit a CPU
# Grid sides of the random fields (upsampled to the image): the skin line's wobble, the
# dense tissue (two octaves) and the texture.
_EDGE_GRID, _DENSE_GRIDS, _TEXTURE_GRID = 4, (5, 9), 17
_FALLOFF_WIDTH = 0.15  # of the breast's radius: the darker band along the skin line
_TEXTURE_DENSE, _TEXTURE_FAT = 0.10, 0.04  # texture amplitude in dense tissue and in fat


@dataclass(frozen=True, eq=False)
class MammoParams:
    """Everything that determines one ``mammo`` item (lengths as fractions of the side).

    Attributes:
        label: Index into the dataset's classes.
        density: The class name (``"A"`` .. ``"D"``).
        dense_fraction: The dense area fraction aimed at (the rendered mask's fraction
            differs from it by at most half a pixel's share of the breast).
        half_width: Horizontal semi-axis of the breast ellipse (from the left edge).
        half_height: Vertical semi-axis.
        centre_y: Vertical centre of the ellipse.
        edge_wobble: Amplitude of the skin line's irregularity (in ellipse radii).
        pectoral_width: Where the pectoral triangle meets the top edge.
        pectoral_height: Where it meets the left edge.
        pectoral_level: Muscle brightness above fat, in units of ``contrast``.
        centre_bias: How much the dense tissue prefers the inside of the breast.
        contrast: Brightness of dense tissue above fat.
        mean_level: Target mean brightness of the breast (automatic exposure).
        background: Brightness outside the body.
        mass: ``(x, y, radius, amplitude)`` of a bright blob; amplitude 0 means none.
        edge_grid: (4, 4) random values of the skin line's wobble.
        dense_grids: (5, 5) and (9, 9) random values of the dense-tissue field.
        texture_grid: (17, 17) random values of the texture.
        noise_seed: Seed of the per-pixel noise.
    """

    label: int
    density: str
    dense_fraction: float
    half_width: float
    half_height: float
    centre_y: float
    edge_wobble: float
    pectoral_width: float
    pectoral_height: float
    pectoral_level: float
    centre_bias: float
    contrast: float
    mean_level: float
    background: float
    mass: tuple[float, float, float, float]
    edge_grid: np.ndarray
    dense_grids: tuple[np.ndarray, np.ndarray]
    texture_grid: np.ndarray
    noise_seed: int


def check_classes(classes: Sequence[str] | str) -> list[str]:
    """The density classes as a list of distinct names from ``"A"`` .. ``"D"``, in the given order.

    Raises:
        ViscopeError: An unknown or repeated name, or no names at all.
    """
    if isinstance(classes, str):  # "AD" or "A,D"
        names = [c for c in classes.upper() if c not in " ,"]
    else:
        names = [str(c).strip().upper() for c in classes]
    bad = [c for c in names if c not in BANDS]
    if not names or bad or len(set(names)) != len(names):
        raise ViscopeError(
            f"Expected density classes to be distinct names among A, B, C, D; got {classes!r}. "
            "Pass e.g. classes=('A', 'D') or classes=('A', 'B', 'C', 'D')."
        )
    return names


def sample_params(
    seed: int, index: int, classes: Sequence[str] = ("A", "B", "C", "D")
) -> MammoParams:
    """Draw the parameters of item ``index``; they depend only on ``(seed, index, classes)``.

    The class comes first (``classes[index % len(classes)]``), then every random value is
    drawn from ``np.random.default_rng([seed, index])`` in a fixed order.

    Args:
        seed: Dataset seed.
        index: Item index (non-negative).
        classes: The density classes generated (names from :data:`BANDS`).

    Returns:
        The item's parameters.
    """
    label = index % len(classes)
    density = classes[label]
    rng = np.random.default_rng([seed, index])
    low, high = BANDS[density]
    u = rng.random(14)
    has_mass = rng.random() < 0.25
    # a mass well inside the breast: within 0.6 ellipse radii of the chest-wall centre
    angle, radial = rng.uniform(-0.45 * math.pi, 0.45 * math.pi), math.sqrt(rng.random()) * 0.6
    half_width, half_height, centre_y = 0.6 + 0.25 * u[1], 0.36 + 0.1 * u[2], 0.46 + 0.08 * u[3]
    mass = (
        radial * half_width * math.cos(angle),
        centre_y + radial * half_height * math.sin(angle),
        0.02 + 0.02 * u[12],
        (0.4 + 0.4 * u[13]) if has_mass else 0.0,
    )
    return MammoParams(
        label=label,
        density=density,
        dense_fraction=float(low + (high - low) * u[0]),
        half_width=float(half_width),
        half_height=float(half_height),
        centre_y=float(centre_y),
        edge_wobble=float(0.04 + 0.06 * u[4]),
        pectoral_width=float(0.12 + 0.13 * u[5]),
        pectoral_height=float(0.3 + 0.2 * u[6]),
        pectoral_level=float(1.0 + 0.3 * u[7]),
        centre_bias=float(0.2 + 0.4 * u[8]),
        contrast=float(0.2 + 0.12 * u[9]),
        mean_level=float(0.42 + 0.18 * u[10]),
        background=float(0.05 * u[11]),
        mass=tuple(float(v) for v in mass),  # type: ignore[arg-type]
        edge_grid=rng.random((_EDGE_GRID, _EDGE_GRID)),
        dense_grids=(rng.random((_DENSE_GRIDS[0],) * 2), rng.random((_DENSE_GRIDS[1],) * 2)),
        texture_grid=rng.random((_TEXTURE_GRID, _TEXTURE_GRID)),
        noise_seed=int(rng.integers(2**31)),
    )


def _smooth_upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """(B, g, g) random grids -> (B, size, size) smooth fields ("value noise").

    The grid's corners sit on the image's corners whatever ``size`` is, and the
    interpolation weights follow smoothstep (3t^2 - 2t^3), whose zero slope at the grid
    nodes makes the field C1: thresholded, it gives round blobs, not creased polygons.
    """
    g = grid.shape[-1]
    pos = (np.arange(size) + 0.5) * (g - 1) / size
    i0 = np.minimum(np.floor(pos).astype(np.int64), g - 2)
    t = pos - i0
    w = (t * t * (3.0 - 2.0 * t)).astype(np.float32)
    grid = grid.astype(np.float32)
    rows = grid[:, i0, :] * (1 - w)[None, :, None] + grid[:, i0 + 1, :] * w[None, :, None]
    return rows[:, :, i0] * (1 - w) + rows[:, :, i0 + 1] * w


def render(
    params: Sequence[MammoParams], size: int, noise: float = 0.02
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw items from their parameters, all at once.

    Everything is computed in float32 by element-wise arithmetic (no transcendental
    functions, which may round differently in vectorised and scalar code paths) and
    per-item sorts, so an item's pixels do not depend on the rest of the batch.

    Args:
        params: Parameters from :func:`sample_params`.
        size: Image side in pixels.
        noise: Standard deviation of the Gaussian pixel noise.

    Returns:
        ``(images, dense, breast)``: float32 (B, 1, size, size) greyscale in [0, 1], and
        the dense-tissue and breast masks as bool (B, 1, size, size).
    """
    f32 = np.float32

    def field(name: str) -> np.ndarray:
        return np.array([getattr(p, name) for p in params], dtype=f32)[:, None, None]

    def stacked(values: list[np.ndarray]) -> np.ndarray:
        return _smooth_upsample(np.stack(values), size)

    b = len(params)
    pix = ((np.arange(size) + 0.5) / size).astype(f32)
    x, y = pix[None, None, :], pix[None, :, None]
    r = np.sqrt(
        (x / field("half_width")) ** 2 + ((y - field("centre_y")) / field("half_height")) ** 2
    )
    r_edge = r + field("edge_wobble") * (stacked([p.edge_grid for p in params]) - f32(0.5))
    tissue = r_edge <= 1.0
    pectoral = x / field("pectoral_width") + y / field("pectoral_height") <= 1.0
    breast = tissue & ~pectoral

    # Dense tissue: the top `fraction` of a smooth field over the breast's pixels, so the
    # area fraction is exact up to one pixel (a per-item sort, not a global threshold).
    f = f32(0.65) * stacked([p.dense_grids[0] for p in params])
    f += f32(0.35) * stacked([p.dense_grids[1] for p in params])
    f += field("centre_bias") * (1 - np.minimum(r, f32(1)))
    ranked = np.sort(np.where(breast, f, -np.inf).reshape(b, -1), axis=1)
    n_breast = breast.reshape(b, -1).sum(axis=1)
    fraction = np.array([p.dense_fraction for p in params])
    k = np.clip(np.rint(fraction * n_breast).astype(np.int64), 1, np.maximum(n_breast, 1))
    threshold = ranked[np.arange(b), size * size - k]
    dense = breast & (f >= threshold[:, None, None])

    texture = stacked([p.texture_grid for p in params]) - f32(0.5)
    contrast = field("contrast")
    amplitude = np.where(dense, f32(2 * _TEXTURE_DENSE), f32(2 * _TEXTURE_FAT))
    mx, my, mr, ma = (np.array([p.mass[j] for p in params], f32)[:, None, None] for j in range(4))
    bump = np.clip(1 - ((x - mx) ** 2 + (y - my) ** 2) / mr**2, f32(0), f32(1)) ** 2
    # Automatic exposure: fat sits below the target mean by the dense share of the contrast.
    fat = field("mean_level") - contrast * fraction.astype(f32)[:, None, None]
    skin = f32(0.7) + f32(0.3) * np.clip((1 - r_edge) / f32(_FALLOFF_WIDTH), f32(0), f32(1))
    body = (fat + contrast * dense + amplitude * texture + contrast * ma * bump) * skin
    muscle = fat + contrast * field("pectoral_level") + f32(0.5 * _TEXTURE_FAT) * texture
    image = np.where(pectoral, muscle, np.where(tissue, body, field("background")))
    image += np.stack(
        [np.random.default_rng(p.noise_seed).standard_normal((size, size), f32) for p in params]
    ) * f32(noise)
    np.clip(image, 0.0, 1.0, out=image)
    return (
        torch.from_numpy(image[:, None]),
        torch.from_numpy(dense[:, None]),
        torch.from_numpy(breast[:, None]),
    )


class MammoDataset(VisionDataset):
    """Generated mammograms with dense-tissue masks; items ``(image, label, mask)``.

    ``image`` is float32 (3, H, W) in [0, 1] (greyscale in three channels), ``label`` an
    index into ``classes`` and ``mask`` float32 (1, H, W), 1 on dense tissue. The breast
    mask (the region of interest; pectoral muscle and background excluded) comes from
    :meth:`breast_mask` and the true percent density from :meth:`dense_fraction`.

    Args:
        n: Number of items (default 800); classes cycle, so any n is balanced.
        size: Image side in pixels, at least 8 (64 to 128 suits a CPU).
        seed: Generation seed; item ``i`` depends only on ``(seed, i, size, classes)``.
        classes: Density classes to generate, among ``"A"`` .. ``"D"``; labels index this
            list in the order given (``("A", "D")``: A is 0, D is 1).
        noise: Standard deviation of the pixel noise.
        cache: Render everything at construction (fast items; about
            ``n * size**2 * 6`` bytes). If false, each item is rendered when read.

    Raises:
        ViscopeError: ``n``, ``size``, ``seed``, ``classes`` or ``noise`` is invalid.

    Example:
        >>> ds = MammoDataset(n=8, size=64, classes=("A", "D"))
        >>> image, label, mask = ds[1]
        >>> tuple(image.shape), ds.classes[label], tuple(mask.shape)
        ((3, 64, 64), 'D', (1, 64, 64))
        >>> 0.80 <= ds.dense_fraction(1) <= 0.95
        True
    """

    def __init__(
        self,
        n: int | None = 800,
        size: int = 64,
        seed: int = 0,
        classes: Sequence[str] | str = ("A", "B", "C", "D"),
        noise: float = 0.02,
        cache: bool = True,
    ) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < MIN_SIZE:
            raise ViscopeError(
                f"Expected mammo image size to be an int >= {MIN_SIZE}; got {size!r}. "
                "Use 64 to 128 on a CPU."
            )
        n = 800 if n is None else n
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ViscopeError(f"Expected mammo n to be a positive int; got {n!r}.")
        if not isinstance(noise, (int, float)) or not 0 <= noise <= 0.5:
            raise ViscopeError(f"Expected mammo noise in [0, 0.5]; got {noise!r}.")
        self.size, self.seed, self.noise = size, check_seed(seed), float(noise)
        self.classes = check_classes(classes)
        self.has_masks = True
        self.targets = [i % len(self.classes) for i in range(n)]
        self._cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        if cache:
            self._cache = self._render(range(n))

    def params(self, index: int) -> MammoParams:
        """The parameters that item ``index`` was drawn from."""
        return sample_params(self.seed, normalise_index(index, len(self)), self.classes)

    def _render(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images (B, 1, H, W) float32 and dense / breast masks (B, 1, H, W) bool, in chunks."""
        indices = list(indices)
        chunk = max(1, 2**18 // self.size**2)  # keeps the temporaries in the CPU's cache
        parts = [
            render([self.params(i) for i in indices[start : start + chunk]], self.size, self.noise)
            for start in range(0, len(indices), chunk)
        ]
        return tuple(torch.cat([p[k] for p in parts]) for k in range(3))  # type: ignore[return-value]

    def _rendered(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        checked = [normalise_index(i, len(self)) for i in indices]
        if self._cache is not None:
            return tuple(t[checked] for t in self._cache)  # type: ignore[return-value]
        return self._render(checked)

    def _item(self, index: int) -> Item:
        if self._cache is not None:
            image, dense = self._cache[0][index], self._cache[1][index]
        else:
            image, dense, _ = (t[0] for t in self._render([index]))
        return image.expand(3, -1, -1).clone(), self.targets[index], dense.float()

    def breast_mask(self, index: int) -> torch.Tensor:
        """The breast (region of interest) of item ``index``: float32 (1, H, W) in {0, 1}."""
        return self.breast_masks([index])[0]

    def breast_masks(self, indices: Sequence[int]) -> torch.Tensor:
        """The breast masks of several items: float32 (B, 1, H, W) in {0, 1}."""
        return self._rendered(list(indices))[2].float()

    def dense_fraction(self, index: int) -> float:
        """The true percent density / 100 of item ``index``: dense pixels / breast pixels."""
        _, dense, breast = self._rendered([index])
        return float(dense.sum()) / float(breast.sum())
