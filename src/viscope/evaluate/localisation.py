"""Localisation metrics against ground-truth masks: pointing game (Zhang et al., 2018),
energy-based pointing game (Wang et al., 2020, Score-CAM), IoU and Dice.

>>> maps = torch.zeros(1, 4, 4); maps[0, 1, 1] = 1.0
>>> masks = torch.zeros(1, 4, 4); masks[0, :2, :2] = 1
>>> pointing_game(maps, masks).tolist(), iou(maps, masks).tolist()
([True], [0.25])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from viscope.errors import ViscopeError
from viscope.evaluate._common import check_masks


def pointing_game(
    maps: torch.Tensor, masks: torch.Tensor, tolerance: float = 0.0
) -> torch.Tensor:
    """Whether each map's maximum falls inside its mask, or within ``tolerance`` pixels.

    As in TorchRay's benchmark (the reference implementation of Zhang et al.'s pointing
    game), a point hits when some mask pixel lies at a Euclidean distance strictly below
    ``tolerance``; with ``tolerance=0`` the point itself must be in the mask. The paper
    uses 15 px at 224 px: scale it with the image, ``15 * min(H, W) / 224``.

    Args:
        maps: (B, H, W).
        masks: (B, H, W) or (B, 1, H, W) in {0, 1}.
        tolerance: the radius in pixels (>= 0; need not be an integer).

    Returns:
        (B,) booleans; the first maximum (in pixel order) is the point.

    Example:
        >>> maps = torch.zeros(1, 9, 9); maps[0, 4, 7] = 1.0  # 3 px right of the mask
        >>> masks = torch.zeros(1, 9, 9); masks[0, 4, 4] = 1
        >>> [pointing_game(maps, masks, t).item() for t in (0, 3, 3.01)]
        [False, False, True]
    """
    if not tolerance >= 0:
        raise ViscopeError(f"Expected tolerance >= 0 pixels; got {tolerance}.")
    mask = check_masks(maps, masks)
    if tolerance > 0:
        r = math.ceil(tolerance)
        d = torch.arange(-r, r + 1, device=mask.device, dtype=torch.float32)
        disk = ((d[:, None] ** 2 + d[None, :] ** 2) < tolerance**2).float()
        mask = F.conv2d(mask[:, None].float(), disk[None, None], padding=r)[:, 0] > 0
    point = maps.flatten(1).argmax(dim=1)
    return mask.flatten(1).gather(1, point[:, None])[:, 0]


def energy_pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The share of each map's (clipped, non-negative) energy inside its mask; (B,)."""
    mask = check_masks(maps, masks)
    m = maps.clamp(min=0).flatten(1)
    inside = (m * mask.flatten(1)).sum(dim=1)
    return inside / m.sum(dim=1).clamp(min=torch.finfo(m.dtype).tiny)


def _overlap(maps: torch.Tensor, masks: torch.Tensor, threshold: float):
    mask = check_masks(maps, masks).flatten(1)
    pred = (maps >= threshold).flatten(1)
    inter = (pred & mask).sum(dim=1).to(maps.dtype)
    return inter, pred.sum(dim=1).to(maps.dtype), mask.sum(dim=1).to(maps.dtype)


def iou(maps: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Intersection over union of ``maps >= threshold`` with the masks; (B,), 1 if both empty."""
    inter, p, t = _overlap(maps, masks, threshold)
    union = p + t - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def dice(maps: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Dice coefficient of ``maps >= threshold`` with the masks; (B,), 1 if both empty."""
    inter, p, t = _overlap(maps, masks, threshold)
    total = p + t
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
