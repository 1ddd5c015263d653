"""Streaming, mergeable statistics in float64 (Welford / Chan et al. 1979).

Every invariance measure is built from these: a state that is updated batch by batch,
merged across shards, and computed at the end. Nothing stores the whole
samples x transformations grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Moments:
    """Count, mean and sum of squared deviations (M2) of observations along one axis.

    ``count`` has the shape of the leading "group" axes (possibly ``()``); ``mean`` and
    ``m2`` have the group shape followed by the unit shape. ``eps`` (a 0-d tensor) is the
    machine epsilon of the coarsest precision the observations were reduced in (0 when
    empty): it sets the rounding floor of :meth:`var`.

    >>> m = Moments.empty((), (2,))
    >>> m.update(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
    >>> m.mean.tolist(), m.var().tolist()
    ([2.0, 4.0], [2.0, 8.0])
    """

    count: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor
    eps: torch.Tensor

    @classmethod
    def empty(
        cls, group_shape: tuple[int, ...], unit_shape: tuple[int, ...], device=None
    ) -> Moments:
        """Moments with no observations."""
        z = torch.zeros((*group_shape, *unit_shape), dtype=torch.float64, device=device)
        return cls(torch.zeros(group_shape, dtype=torch.float64, device=device), z, z.clone(),
                   torch.zeros((), dtype=torch.float64, device=device))

    @classmethod
    def of(cls, x: torch.Tensor, group_ndim: int = 0) -> Moments:
        """One-shot moments of ``x`` (n, *group_shape, *unit_shape) along dim 0.

        ``group_ndim`` says how many axes after the first are groups (each with its own
        count), the rest being units. The batch's own mean and centred sum of squares are
        computed in the activations' precision (float32 or float64; half precision is
        upcast to float32) by the two-pass formula; the result, and every merge after it,
        is float64.
        """
        x = working_precision(x)
        mean, m2 = centred_moments(x, 0)
        count = torch.full(mean.shape[:group_ndim], float(x.shape[0]), dtype=torch.float64,
                           device=x.device)
        eps = torch.tensor(torch.finfo(x.dtype).eps, dtype=torch.float64, device=x.device)
        return cls(count, mean.double(), m2.double(), eps)

    def update(self, x: torch.Tensor) -> None:
        """Add observations ``x`` of shape (n, *group_shape, *unit_shape).

        Same as ``merge_(Moments.of(x))``, in fewer operations: the batch's moments stay
        in ``x``'s precision until the merge promotes them, and every group gets the
        same count (this runs once per layer and batch, so each saved pass over the
        activations shows on small models).
        """
        x = working_precision(x)
        mean, m2 = centred_moments(x, 0)
        self._merge(float(x.shape[0]), mean, m2)
        self.eps.clamp_min_(torch.finfo(x.dtype).eps)

    def merge_(self, other: Moments) -> Moments:
        """Merge ``other`` into ``self`` in place (Chan et al. parallel update)."""
        self._merge(other.count, other.mean, other.m2)
        self.eps.copy_(torch.maximum(self.eps, other.eps))
        return self

    def _merge(self, nb: torch.Tensor | float, mean: torch.Tensor, m2: torch.Tensor) -> None:
        """Chan et al.'s update with ``nb`` observations (per group, or one number for
        every group) of moments ``mean`` / ``m2`` (any float dtype; promoted here).

        Every tensor is updated in place: the state's tensors are its own (``_load``
        and ``with_tensors`` clone), and stacked layers' states are views of one
        stacked state (:mod:`viscope.invariance.stacking`) that must see its updates.
        """
        na = self.count
        n = na + nb
        shape = (*n.shape, *([1] * (self.mean.ndim - n.ndim)))
        w = (nb / n.clamp_min(1.0)).reshape(shape)  # nb / n
        delta = mean - self.mean  # float64 (type promotion)
        self.mean.addcmul_(delta, w)
        self.m2.add_(m2).addcmul_(delta.square_(), na.reshape(shape) * w)  # na nb / n
        self.count.copy_(n)

    def var(self, ddof: int = 1) -> torch.Tensor:
        """Variance with ``ddof`` (0 where there are not more than ``ddof`` observations).

        A variance below the rounding of the mean in the observations' precision (a
        constant unit) is exactly 0, so that 0/0 and x/0 in the Normalized Variance do not
        depend on how batches merged.
        """
        shape = (*self.count.shape, *([1] * (self.mean.ndim - self.count.ndim)))
        denom = (self.count - ddof).reshape(shape)
        v = torch.where(denom > 0, self.m2 / denom.clamp_min(1.0), torch.zeros_like(self.m2))
        return rounding_floor(v, self.mean, self.eps)

    def std(self, ddof: int = 1) -> torch.Tensor:
        """Standard deviation with ``ddof``."""
        return self.var(ddof).sqrt()

    def tensors(self) -> list[torch.Tensor]:
        """The state as a list of tensors (for ``torch.distributed`` gathering)."""
        return [self.count, self.mean, self.m2, self.eps]


def centred_moments(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and centred sum of squares of ``x`` along ``dim`` (two-pass, x's precision).

    The axes after ``dim`` are flattened first: torch's CPU reductions are an order of
    magnitude faster over (n, units) than over (n, C, H, W) (and ``torch.var_mean`` is
    slower still), which is what keeps the measure's overhead small.
    """
    lead = x.shape[: dim + 1]
    flat = x.reshape(*lead, -1)
    mean = flat.mean(dim, keepdim=True)
    dev = flat - mean
    m2 = dev.mul_(dev).sum(dim)  # squared in place: one buffer the size of x, not two
    out_shape = (*x.shape[:dim], *x.shape[dim + 1:])
    return mean.squeeze(dim).reshape(out_shape), m2.reshape(out_shape)


def working_precision(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 or float64 (half precision and integers are upcast to float32)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def rounding_floor(var: torch.Tensor, mean: torch.Tensor,
                   eps: float | torch.Tensor) -> torch.Tensor:
    """Zero the variances that are only rounding noise around ``mean``.

    The moments of a constant unit give M2 ~ (ulp of the mean)^2 instead of 0 once means
    are rounded; anything with std below 16 ulp (machine epsilon ``eps`` of the precision
    the values were reduced in) of |mean| is treated as exactly constant, so that 0/0 and
    x/0 in the NV do not depend on batching.
    """
    tol = (mean * (16 * eps)).square()
    return torch.where(var <= tol, 0.0, var)


def safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` with 0/0 -> 1 and x/0 -> inf, as in Quiroga et al. (2023) and tmeasures."""
    num, den = num.double(), den.double()
    out = num / torch.where(den > 0, den, torch.ones_like(den))
    out = torch.where((den <= 0) & (num <= 0), torch.ones_like(out), out)
    return torch.where((den <= 0) & (num > 0), torch.full_like(out, float("inf")), out)


def finite_mean(values) -> float:
    """Mean over the finite values (NaN and inf excluded); NaN when none is finite."""
    a = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values,
                   dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")
