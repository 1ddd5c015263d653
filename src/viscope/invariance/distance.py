"""Normalised mean pairwise distance TD / SD (``distance``)."""

from __future__ import annotations

import torch

from viscope.invariance import functional as F
from viscope.invariance.state import LayerState
from viscope.invariance.stats import safe_divide


class NormalizedDistance(LayerState):
    """Normalised distance ND = TD / SD, with mean absolute pairwise differences.

    TD: per sample, the mean |a(T_i x) - a(T_j x)| over pairs of transformations (exact).
    SD: per transformation, the mean |a(T x_i) - a(T x_j)| over pairs of samples,
    estimated without storing samples from the pairs inside each block of rows (an
    unbiased U-statistic on disjoint blocks; blocks of one sample contribute no pair, so
    the engine feeds at least two samples per block).
    """

    min_rows = 2

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        z = torch.zeros(self.unit_shape, dtype=torch.float64, device=self.device)
        self.td_sum, self.sd_sum = z.clone(), z.clone()
        self.td_count = torch.zeros((), dtype=torch.float64, device=self.device)
        self.sd_pairs = torch.zeros((), dtype=torch.float64, device=self.device)

    def update(self, acts: torch.Tensor, stage: int = 0) -> None:
        x = acts.double()
        b, m = x.shape[:2]
        self.td_sum += F.mean_pairwise_distance(x, dim=1).sum(0)
        self.td_count += b
        if b > 1:
            pairs = b * (b - 1) / 2
            self.sd_sum += F.mean_pairwise_distance(x, dim=0).mean(0) * pairs
            self.sd_pairs += pairs

    def tensors(self) -> list[torch.Tensor]:
        return [self.td_sum, self.td_count, self.sd_sum, self.sd_pairs]

    def _load(self, tensors: list[torch.Tensor]) -> None:
        self.td_sum, self.td_count, self.sd_sum, self.sd_pairs = (t.clone() for t in tensors)

    def merge_(self, other: NormalizedDistance) -> NormalizedDistance:
        self.td_sum, self.td_count = self.td_sum + other.td_sum, self.td_count + other.td_count
        self.sd_sum, self.sd_pairs = self.sd_sum + other.sd_sum, self.sd_pairs + other.sd_pairs
        return self

    def compute(self) -> dict[str, torch.Tensor]:
        td = self._spatial_mean(self.td_sum / self.td_count.clamp_min(1))
        sd = self._spatial_mean(self.sd_sum / self.sd_pairs.clamp_min(1))
        return {"td": td, "sd": sd, "nd": safe_divide(td, sd)}
