"""Pure functions behind the invariance measures (no state, no hooks).

``nv(acts)`` etc. compute a measure in one shot from a full activation grid
(N samples, M transformations, *units); the streaming states in
:mod:`viscope.invariance.measures` use the same helpers and must agree with them.
"""

from __future__ import annotations

import math

import torch
from scipy import stats as _stats

from viscope.errors import ViscopeError
from viscope.invariance.stats import (
    centred_moments,
    rounding_floor,
    safe_divide,
    working_precision,
)


def dispersion(x: torch.Tensor, dim: int, variance: bool = False) -> torch.Tensor:
    """Std (or variance) with ddof 1 along ``dim``; 0 when there is a single value.

    Computed in ``x``'s precision (float32 or float64) by the two-pass formula.
    """
    x = working_precision(x)
    n = x.shape[dim]
    if n < 2:
        return torch.zeros_like(x.select(dim, 0))
    mean, m2 = centred_moments(x, dim)
    v = rounding_floor(m2.div_(n - 1), mean, torch.finfo(x.dtype).eps)
    return v if variance else v.sqrt_()


def nv(acts: torch.Tensor, variance: bool = False, spatial_dims: tuple[int, ...] = ()) -> dict:
    """One-shot TV, SV and NV per unit from a full grid ``acts`` (N, M, *units).

    >>> a = torch.tensor([[[1.0], [1.0]], [[3.0], [3.0]]])  # invariant to the transform
    >>> {k: round(v.item(), 6) for k, v in nv(a).items()}
    {'tv': 0.0, 'sv': 1.414214, 'nv': 0.0}
    """
    tv = dispersion(acts, 1, variance).double().mean(0)
    sv = dispersion(acts, 0, variance).double().mean(0)
    if spatial_dims:
        tv, sv = tv.mean(dim=spatial_dims), sv.mean(dim=spatial_dims)
    return {"tv": tv, "sv": sv, "nv": safe_divide(tv, sv)}


def anova_from_moments(
    count: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor, eps: float | torch.Tensor = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-way ANOVA F statistic and p-value per unit from per-group moments.

    Args:
        count: (M,) observations per group (transformation).
        mean: (M, *units) group means.
        m2: (M, *units) group sums of squared deviations.
        eps: machine epsilon of the precision the moments were reduced in: spreads within
            and between groups below its rounding floor (see ``rounding_floor``) are 0,
            so a constant unit gets F = NaN instead of a ratio of rounding noise.

    Returns:
        ``(F, p)`` per unit; where the within-group variance is 0, F is inf if the means
        differ (p = 0) and NaN otherwise (p = 1).
    """
    shape = (-1, *([1] * (mean.ndim - 1)))
    n = count.reshape(shape)
    total = count.sum()
    grand = (mean * n).sum(0) / total
    ssb = rounding_floor((n * (mean - grand) ** 2).sum(0) / total, grand, eps) * total
    ssw = (rounding_floor(m2 / n.clamp_min(1), mean, eps) * n).sum(0)
    dfb, dfw = count.numel() - 1, float(total) - count.numel()
    if dfb < 1 or dfw < 1:
        raise ViscopeError(
            f"ANOVA needs at least 2 transformations and more samples than them; got "
            f"{count.numel()} transformations and {int(total)} observations. Use more of both."
        )
    msb, msw = ssb / dfb, ssw / dfw
    f = torch.where(msw > 0, msb / msw.clamp_min(1e-300),
                    torch.where(msb > 0, torch.full_like(msb, math.inf),
                                torch.full_like(msb, math.nan)))
    p = torch.from_numpy(_stats.f.sf(f.cpu().numpy(), dfb, dfw)).to(f)
    p = torch.where(torch.isnan(f), torch.ones_like(p), p)
    return f, p


def normal_quantile(mean: torch.Tensor, std: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q`` quantile of N(mean, std) elementwise (std floored at 1e-16)."""
    z = math.sqrt(2.0) * torch.erfinv(torch.tensor(2 * q - 1, dtype=torch.float64))
    return mean + std.clamp_min(1e-16) * z.to(mean.device)


def mean_pairwise_distance(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of |x_i - x_j| over the pairs i < j along ``dim`` (0 with fewer than 2).

    Uses the sorted-order identity sum_{i<j} (v_j - v_i) = sum_k (2k - n - 1) v_(k), so it
    costs a sort instead of n^2 differences.
    """
    n = x.shape[dim]
    if n < 2:
        return torch.zeros_like(x.select(dim, 0))
    v, _ = torch.sort(x, dim=dim)
    w = torch.arange(1, n + 1, dtype=x.dtype, device=x.device) * 2 - n - 1
    shape = [1] * x.ndim
    shape[dim] = n
    return (v * w.reshape(shape)).sum(dim) / (n * (n - 1) / 2)
