"""Same-equivariance (``nv_se``): mapping activations back, and where that is exact.

``nv_se`` warps each activation map back with the inverse of its image's transformation
and then measures TV / SV as ``nv`` does. The inverse warp fills with zeros what the
transformation pushed out of the frame, and what it moved in from outside was zeros too,
so near the edges the mapped-back maps differ whatever the layer does. The rule, stated
here once and used by the engine (the mask) and the state (what the layer mean counts):

* A position (y, x) of an (h, w) map is **valid** when a map of ones warped forward and
  back, ``inverse(apply(ones, theta_j), theta_j)``, is >= ``1 - VALID_TOLERANCE`` there
  for **every** value theta_j of the grid (the family's own ops at the map's resolution,
  as :meth:`GeometricFamily.inverse` builds them). Units at invalid positions are NaN in
  ``per_unit`` and left out of the layer mean; with ``spatial=True`` TV and SV are
  averaged over valid positions only.
* A unit that is constant on every image (TV = SV = 0: a dead unit, a zero border)
  says nothing about equivariance: its ``nv`` is NaN, left out of the layer mean (plain
  ``nv`` keeps tmeasures' 0/0 -> 1). Constant means to float precision: TV and SV both
  at most 16 machine epsilons of the layer's RMS activation over valid positions, since
  the float32 warps leave a few ulp of noise on a unit that is a bias on every image.
"""

from __future__ import annotations

from typing import Any

import torch

#: How far below 1 a warped-and-back ones mask may fall and still count as valid: the
#: bilinear edge of a non-exact warp blends a pixel with the zero fill, and 1e-3 of a
#: pixel's weight is below what a float32 activation resolves meaningfully.
VALID_TOLERANCE = 1e-3


def valid_positions(family: Any, grid: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The (height, width) bool mask of positions that every transformation of ``grid``
    maps back exactly (see the module docstring for the rule).

    Computed once per layer on the CPU in float64 (it does not depend on the samples).

    Args:
        family: a geometric family (with ``apply`` and ``inverse``).
        grid: the parameter values, (M,) or (M, k), as passed to ``family.apply``.
        height: the activation map's height.
        width: the activation map's width.

    Returns:
        A bool tensor (height, width) on the CPU.

    >>> from viscope.transforms import create
    >>> fam = create("translation", low=0.0, high=0.25)  # shifts of 0 or 1 px at 4 px
    >>> valid_positions(fam, fam.grid(4), 4, 4).int().tolist()  # last row, column: pushed out
    [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    """
    grid = grid.cpu()
    ones = torch.ones(grid.shape[0], 1, int(height), int(width), dtype=torch.float64)
    back = family.inverse(family.apply(ones, grid), grid)
    return (back[:, 0] >= 1.0 - VALID_TOLERANCE).all(dim=0)


def spatial_map(act: torch.Tensor, layout: str, grid: tuple[int, int] | None) -> torch.Tensor:
    """A layer's per-sample activations as (B, C, h, w) maps, ready for the inverse warp.

    Args:
        act: (B, C, h, w) for ``chw``, (B, h, w, C) for ``hwc`` (channels-last, e.g.
            Swin's stages), (B, h * w, D) patch tokens for ``tokens``.
        layout: the tap's layout of the layer.
        grid: (h, w) of the patch tokens (``tokens`` only).

    Returns:
        A (B, C, h, w) view or copy of ``act``.
    """
    if layout == "hwc":
        return act.permute(0, 3, 1, 2)
    if layout == "tokens":
        h, w = grid
        return act.transpose(1, 2).reshape(act.shape[0], act.shape[2], h, w)
    return act


def spatial_unit_shape(layout: str, unit_shape: tuple[int, ...],
                       grid: tuple[int, int] | None) -> tuple[int, int, int]:
    """The (C, h, w) unit shape of :func:`spatial_map`'s output for a layer whose
    per-sample shape is ``unit_shape``."""
    if layout == "hwc":
        h, w, c = unit_shape
        return (c, h, w)
    if layout == "tokens":
        return (unit_shape[1], *grid)
    return tuple(unit_shape)


__all__ = ["VALID_TOLERANCE", "spatial_map", "spatial_unit_shape", "valid_positions"]
