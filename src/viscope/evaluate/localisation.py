"""Localisation metrics against ground-truth masks: pointing game (Zhang et al., 2018),
energy-based pointing game (Wang et al., 2020, Score-CAM), IoU and Dice.

>>> maps = torch.zeros(1, 4, 4); maps[0, 1, 1] = 1.0
>>> masks = torch.zeros(1, 4, 4); masks[0, :2, :2] = 1
>>> pointing_game(maps, masks).tolist(), iou(maps, masks).tolist()
([True], [0.25])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from viscope.evaluate._common import check_masks


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """Whether each map's maximum falls inside its mask (or within ``tolerance`` pixels).

    Args:
        maps: (B, H, W).
        masks: (B, H, W) or (B, 1, H, W) in {0, 1}.
        tolerance: pixels by which the mask is dilated with a square kernel, so a hit
            is a point within this Chebyshev distance of the mask (the original paper uses
            15 at 224 px; TorchRay's benchmark uses a Euclidean radius instead).

    Returns:
        (B,) booleans; the first maximum (in pixel order) is the point.
    """
    mask = check_masks(maps, masks)
    if tolerance > 0:
        k = 2 * tolerance + 1
        mask = F.max_pool2d(mask[:, None].float(), k, 1, tolerance)[:, 0] > 0
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
