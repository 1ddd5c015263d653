"""Geometric families: warps given by a per-image 3x3 pixel-space homography.

Coordinates: pixel ``(x, y)`` has its centre at integer ``(x, y)``, x to the right and y
down; the image covers ``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` and its centre is
``((W - 1) / 2, (H - 1) / 2)``. ``matrix(params, H, W)`` maps a source pixel to where it
lands in the output. Resampling is kornia's ``warp_affine`` / ``warp_perspective``
(bilinear by default), zeros outside the image.

Every family is defined relative to the image extent (fractions of the size, the
centre, the corners), so ``matrix(params, h, w)`` at a coarser resolution is the same
transformation seen on a feature map that covers the image (exactly so for equal
aspect ratios; :func:`rescale_matrix` handles any pair of sizes). :meth:`inverse` uses
this to undo a transformation on CNN or ViT feature maps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from kornia.geometry.transform import get_perspective_transform, warp_affine, warp_perspective
from torch import Tensor

from viscope.errors import ViscopeError
from viscope.transforms.base import Family, ParamsArg, RangeArg, check_images, register_family

_MODES = ("bilinear", "nearest")


def _matrix_dtype(device: torch.device) -> torch.dtype:
    # Matrices are built in float64 for accuracy; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def _homogeneous(top: Tensor) -> Tensor:
    """(B, 2, 3) -> (B, 3, 3) with last row (0, 0, 1)."""
    row = torch.zeros_like(top[:, :1, :])
    row[:, 0, 2] = 1.0
    return torch.cat([top, row], dim=1)


def _about_centre(linear: Tensor, height: int, width: int) -> Tensor:
    """The (B, 3, 3) map ``c + A (p - c)`` for a (B, 2, 2) ``A`` and the image centre ``c``."""
    c = torch.tensor([(width - 1) / 2, (height - 1) / 2], dtype=linear.dtype, device=linear.device)
    shift = c - linear @ c
    return _homogeneous(torch.cat([linear, shift[..., None]], dim=2))


def rescale_matrix(
    matrix: Tensor, source_size: tuple[int, int], target_size: tuple[int, int]
) -> Tensor:
    """Express a pixel-space homography of one resolution at another resolution.

    Both grids cover the same extent (a feature map of stride ``s`` has its pixel ``j``
    centred on image coordinate ``s (j + 0.5) - 0.5``), so the result is ``S M S^-1``
    with ``S`` the source-to-target pixel map, scaled so that its last entry is 1.

    Args:
        matrix: (B, 3, 3) homography in ``source_size`` pixel coordinates.
        source_size: (height, width) the matrix was made for.
        target_size: (height, width) to express it in.

    Returns:
        (B, 3, 3) homography in ``target_size`` pixel coordinates.

    >>> m = torch.eye(3)[None].clone(); m[0, 0, 2] = 4.0  # 4 px to the right at 32 px
    >>> rescale_matrix(m, (32, 32), (8, 8))[0, 0, 2].item()
    1.0
    """
    sy, sx = target_size[0] / source_size[0], target_size[1] / source_size[1]
    s = torch.tensor(
        [[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]],
        dtype=matrix.dtype,
        device=matrix.device,
    )
    out = s @ matrix @ torch.linalg.inv(s)
    return out / out[:, 2:, 2:]


def _warp(x: Tensor, matrix: Tensor, mode: str, affine: bool) -> Tensor:
    # Half precision grids are off by a sizeable fraction of a pixel: warp in float32.
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    m = matrix.to(work.dtype)
    size = (x.shape[-2], x.shape[-1])
    if affine:
        out = warp_affine(
            work, m[:, :2, :], size, mode=mode, padding_mode="zeros", align_corners=True
        )
    else:
        out = warp_perspective(work, m, size, mode=mode, padding_mode="zeros", align_corners=True)
    return out.to(x.dtype)


class GeometricFamily(Family):
    """A family that moves pixels with a homography; adds :meth:`matrix` and :meth:`inverse`."""

    geometric = True
    affine: ClassVar[bool] = True

    def __init__(self, low: RangeArg = None, high: RangeArg = None, *, mode: str = "bilinear"):
        """Create the family.

        Args:
            low: start of the range (see :class:`~viscope.transforms.base.Family`).
            high: end of the range.
            mode: interpolation, ``"bilinear"`` or ``"nearest"``.

        Raises:
            ViscopeError: a bad range or an unknown ``mode``.
        """
        super().__init__(low, high)
        if mode not in _MODES:
            raise ViscopeError(f"Expected mode to be one of {_MODES}; got {mode!r}.")
        self.mode = mode

    def matrix(self, params: ParamsArg, height: int, width: int) -> Tensor:
        """The pixel-space homographies (source -> output) for images of one size.

        Args:
            params: (B,) or (B, k) values, or one value / length-k vector (B = 1).
            height: image height in pixels.
            width: image width in pixels.

        Returns:
            (B, 3, 3) on the device of ``params``, in its dtype if floating (else the
            default dtype).

        Raises:
            ViscopeError: ``params`` has the wrong shape or lies outside the domain.
        """
        is_tensor = isinstance(params, Tensor)
        device = params.device if is_tensor else torch.device("cpu")
        floating = is_tensor and params.is_floating_point()
        dtype = params.dtype if floating else torch.get_default_dtype()
        p = self.check_params(params, None, device, _matrix_dtype(device))
        return self._matrix(p, int(height), int(width)).to(dtype)

    def inverse(
        self,
        features: Tensor,
        params: ParamsArg,
        image_size: Sequence[int] | None = None,
    ) -> Tensor:
        """Warp feature maps back with the inverse of each image's transformation.

        ``inverse(apply(x, p), p)`` equals ``x`` wherever the transformation did not push
        content out of the frame (up to interpolation). Feature maps may have any
        channel count and spatial size; the transformation is expressed at their
        resolution (see :func:`rescale_matrix`). Values are not clamped.

        Args:
            features: (B, C, h, w) float tensor, e.g. a CNN layer at 1/8 resolution.
            params: the parameters used on the images, one per map as in ``apply``.
            image_size: (H, W) of the transformed images. ``None`` builds the
                transformation at (h, w) directly, which is exact when the feature map
                has the image's aspect ratio.

        Returns:
            (B, C, h, w) tensor, dtype and device of ``features``, zeros where the
            inverse map falls outside the feature map.

        Raises:
            ViscopeError: bad ``features``, ``params`` or ``image_size``.
        """
        features = check_images(features, "features")
        b, _, h, w = features.shape
        p = self.check_params(params, b, features.device, _matrix_dtype(features.device))
        if image_size is None:
            m = self._matrix(p, h, w)
        else:
            size = tuple(int(s) for s in image_size)
            if len(size) != 2 or min(size) < 1:
                raise ViscopeError(f"Expected image_size as (height, width); got {image_size!r}.")
            m = rescale_matrix(self._matrix(p, size[0], size[1]), size, (h, w))
        return _warp(features, torch.linalg.inv(m), self.mode, self.affine)

    def _param_dtype(self, images: Tensor) -> torch.dtype:
        """The matrix dtype, not the images': rounding parameters to a half-precision image
        dtype first would move warps (bfloat16 turns 100.3 degrees into 100.5) away from
        :meth:`matrix` and :meth:`inverse`."""
        return _matrix_dtype(images.device)

    def _apply(self, images: Tensor, params: Tensor) -> Tensor:
        m = self._matrix(params, images.shape[-2], images.shape[-1])
        return _warp(images, m, self.mode, self.affine).clamp(0.0, 1.0)

    def _matrix(self, params: Tensor, height: int, width: int) -> Tensor:
        raise NotImplementedError


@register_family
class Scale(GeometricFamily):
    """Zoom about the image centre by ``factor`` (> 1 enlarges); zeros fill the outside.

    Default range 0.5 -> 1.5; neutral 1; factors must lie in [0.01, 100].
    """

    name = "scale"
    param_names = ("factor",)
    low = (0.5,)
    high = (1.5,)
    neutral = (1.0,)
    domain = (0.01, 100.0)
    description = "zoom about the centre by a factor (0.5-1.5), zeros outside"

    def _matrix(self, params: Tensor, height: int, width: int) -> Tensor:
        eye = torch.eye(2, dtype=params.dtype, device=params.device)
        return _about_centre(params.reshape(-1, 1, 1) * eye, height, width)


@register_family
class Perspective(GeometricFamily):
    """Move the four image corners along fixed directions by ``distortion``.

    Corner ``i`` moves by ``distortion * (W / 2, H / 2) * u_i`` with ``u_i`` a unit
    direction drawn once from ``torch.Generator().manual_seed(seed)``: its angle is the
    inward diagonal of that corner plus a uniform offset in (-90, 90) degrees. Keeping
    every direction within 90 degrees of inward (rather than fully uniform) means no
    seed turns the family into a near-translation; the map is the homography taking the
    corners to their moved positions, so one scalar sets the strength and the kind of
    distortion is reproducible. Default range 0 -> 0.5 (0.5 is torchvision
    ``RandomPerspective``'s default strength); neutral 0; distortion must lie in
    [0, 0.7], below which the moved corners always form a convex quadrilateral.
    """

    name = "perspective"
    param_names = ("distortion",)
    low = (0.0,)
    high = (0.5,)
    neutral = (0.0,)
    domain = (0.0, 0.7)
    affine = False
    description = "move the corners along fixed seeded directions, distortion 0-0.5"

    def __init__(
        self,
        low: RangeArg = None,
        high: RangeArg = None,
        *,
        seed: int = 0,
        mode: str = "bilinear",
    ) -> None:
        """Create the family.

        Args:
            low: start of the range.
            high: end of the range.
            seed: seed of the corner directions.
            mode: interpolation, ``"bilinear"`` or ``"nearest"``.

        Raises:
            ViscopeError: a bad range or an unknown ``mode``.
        """
        super().__init__(low, high, mode=mode)
        self.seed = int(seed)
        generator = torch.Generator().manual_seed(self.seed)
        offset = (torch.rand(4, generator=generator, dtype=torch.float64) - 0.5) * math.pi
        inward = torch.tensor([45.0, 135.0, 225.0, 315.0], dtype=torch.float64).deg2rad()
        angle = inward + offset
        # (4, 2) unit vectors for the corners top-left, top-right, bottom-right, bottom-left.
        self.directions = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)

    def _matrix(self, params: Tensor, height: int, width: int) -> Tensor:
        kw = {"dtype": params.dtype, "device": params.device}
        x0, y0, x1, y1 = -0.5, -0.5, width - 0.5, height - 0.5
        corners = torch.tensor([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], **kw)
        half = torch.tensor([width / 2, height / 2], **kw)
        moved = corners + params.reshape(-1, 1, 1) * half * self.directions.to(**kw)
        return get_perspective_transform(corners.expand_as(moved), moved)

    def __repr__(self) -> str:
        return f"Perspective(low={self.low}, high={self.high}, seed={self.seed})"


@register_family
class Rotation(GeometricFamily):
    """Rotate about the image centre by ``degrees``, counter-clockwise as displayed.

    With y pointing down, the map is ``x' = c + R (x - c)``, ``R = [[cos, sin],
    [-sin, cos]]``, so +90 on a square image equals ``torch.rot90(x, 1, dims=(-2, -1))``
    (the right edge moves to the top). Default range -180 -> 180; neutral 0. Both ends
    are the same rotation, so ``grid(n)`` visits it twice (kept so that the grid is
    symmetric about 0 and ``grid(1)`` is 0).
    """

    name = "rotation"
    param_names = ("degrees",)
    low = (-180.0,)
    high = (180.0,)
    neutral = (0.0,)
    description = "rotate about the centre, degrees -180..180, counter-clockwise positive"

    def _matrix(self, params: Tensor, height: int, width: int) -> Tensor:
        theta = torch.deg2rad(params)
        cos, sin = torch.cos(theta), torch.sin(theta)
        linear = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
        return _about_centre(linear, height, width)


@register_family
class Translation(GeometricFamily):
    """Shift by ``fraction_x`` of the width and ``fraction_y`` of the height.

    Positive x moves content right, positive y moves it down; zeros fill the uncovered
    part. Default range -0.25 -> 0.25 for both; neutral (0, 0). ``grid(n)`` is a
    ``k x k`` grid when ``n == k**2``, otherwise a rank-1 lattice
    (:func:`~viscope.transforms.base.lattice_2d`); ``grid(1)`` is (0, 0).
    """

    name = "translation"
    param_names = ("fraction_x", "fraction_y")
    low = (-0.25, -0.25)
    high = (0.25, 0.25)
    neutral = (0.0, 0.0)
    description = "shift by fractions of the width and height (-0.25..0.25 each)"

    def _matrix(self, params: Tensor, height: int, width: int) -> Tensor:
        eye = torch.eye(2, dtype=params.dtype, device=params.device).expand(len(params), 2, 2)
        shift = params * torch.tensor([width, height], dtype=params.dtype, device=params.device)
        return _homogeneous(torch.cat([eye, shift[..., None]], dim=2))


@register_family
class Identity(GeometricFamily):
    """No change: ``apply`` returns a copy whatever the parameter.

    The single parameter ``none`` has range 0 -> 0, so ``grid(n)`` is ``zeros(n)``. It
    is geometric in the sense that it has ``matrix`` (the identity) and ``inverse`` (a
    copy), so measures that need those accept it as a baseline.
    """

    name = "identity"
    param_names = ("none",)
    low = (0.0,)
    high = (0.0,)
    neutral = (0.0,)
    description = "no change (baseline)"

    def _matrix(self, params: Tensor, height: int, width: int) -> Tensor:
        return torch.eye(3, dtype=params.dtype, device=params.device).repeat(len(params), 1, 1)

    def _apply(self, images: Tensor, params: Tensor) -> Tensor:
        return images.clone()

    def inverse(
        self,
        features: Tensor,
        params: ParamsArg,
        image_size: Sequence[int] | None = None,
    ) -> Tensor:
        """Return a copy of ``features`` (after checking the arguments like the base)."""
        features = check_images(features, "features")
        self.check_params(params, features.shape[0], features.device, features.dtype)
        return features.clone()
