"""An independent brute force of ``nv_se``'s per-layer values, for the tests.

Plain forward hooks that clone the layer's output for the whole N x M grid at once, the
maps laid out (C, h, w) by hand, the family's inverse warp, the valid mask (ones warped
forward and back at (h, w), valid where >= 1 - 1e-3 under every parameter value), and
NumPy TV / SV on valid positions without the units that are constant to float32
precision (TV and SV within 16 eps of the layer's RMS activation over valid positions).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def valid_mask(family, grid: torch.Tensor, h: int, w: int) -> np.ndarray:
    """Positions that every transformation of ``grid`` maps back, at (h, w)."""
    ones = torch.ones(len(grid), 1, h, w, dtype=torch.float64)
    back = family.inverse(family.apply(ones, grid), grid)
    return (back[:, 0] >= 1 - 1e-3).all(0).numpy()


def layer_output(model: nn.Module, images: torch.Tensor, layer: str) -> torch.Tensor:
    """The output of module ``layer`` (its first tensor) on ``images``, cloned."""
    out = {}

    def hook(module, args, output):
        t = output[0] if isinstance(output, (tuple, list)) else output
        out.setdefault("a", t.detach().clone())

    handle = dict(model.named_modules())[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            model.eval()(images)
    finally:
        handle.remove()
    return out["a"]


def reference_nv_se(model: nn.Module, images: torch.Tensor, family, grid: torch.Tensor,
                    layer: str, layout: str = "chw", prefix: int = 0,
                    tokens_hw: tuple[int, int] | None = None, spatial: bool = False) -> dict:
    """Per-layer ``nv``, ``tv``, ``sv`` of nv_se, plus the ``valid`` (h, w) mask and the
    ``counted`` units ((C, h, w), or (C,) with ``spatial``).

    Args:
        layout: ``chw``, ``hwc`` (the output is (B, h, w, C)) or ``tokens`` ((B, N, D)
            with ``prefix`` leading tokens dropped, then a ``tokens_hw`` grid, row-major).
    """
    n, m = len(images), len(grid)
    params = grid.repeat(n, *([1] * (grid.ndim - 1)))
    a = layer_output(model, family.apply(images.repeat_interleave(m, 0), params), layer)
    if layout == "hwc":
        a = a.permute(0, 3, 1, 2)
    elif layout == "tokens":
        h, w = tokens_hw
        a = a[:, prefix:].reshape(len(a), h, w, a.shape[-1]).permute(0, 3, 1, 2)
    a = family.inverse(a.contiguous(), params).double().numpy()
    h, w = a.shape[-2:]
    a = a.reshape(n, m, *a.shape[1:])  # (N, M, C, h, w)
    valid = valid_mask(family, grid, h, w)
    tv = a.std(axis=1, ddof=1).mean(0)  # (C, h, w)
    sv = a.std(axis=0, ddof=1).mean(0)
    floor = 16 * np.finfo(np.float32).eps * np.sqrt((a[:, :, :, valid] ** 2).mean())
    if spatial:  # per channel, over valid positions
        tv = np.where(valid, tv, 0).sum((1, 2)) / valid.sum()
        sv = np.where(valid, sv, 0).sum((1, 2)) / valid.sum()
        counted = (tv > floor) | (sv > floor)
    else:
        counted = valid & ((tv > floor) | (sv > floor))
        tv, sv = np.where(valid, tv, np.nan), np.where(valid, sv, np.nan)
    return {"nv": (tv[counted] / sv[counted]).mean(), "tv": np.nanmean(tv),
            "sv": np.nanmean(sv), "valid": valid, "counted": counted}
