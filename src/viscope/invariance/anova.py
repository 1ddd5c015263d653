"""One-way ANOVA per unit, the transformation being the factor (``anova``)."""

from __future__ import annotations

import math

import torch

from viscope.invariance import functional as F
from viscope.invariance.state import LayerState
from viscope.invariance.stats import Moments


class Anova(LayerState):
    """One-way ANOVA per unit, the transformation being the factor.

    H0: a unit's mean activation is the same under every transformation. ``variant`` is
    1 where H0 is rejected at ``alpha`` (``alpha / units`` with Bonferroni, which is
    stricter — tmeasures divides the *confidence* instead, which makes it laxer). The
    layer value is the fraction of units that vary with the transformation.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.samples = Moments.empty((self.n_params,), self.unit_shape, self.device)

    def update(self, acts: torch.Tensor, stage: int = 0) -> None:
        self.samples.update(acts)

    def tensors(self) -> list[torch.Tensor]:
        return self.samples.tensors()

    def _load(self, tensors: list[torch.Tensor]) -> None:
        self.samples = Moments(*(t.clone() for t in tensors))

    def merge_(self, other: Anova) -> Anova:
        self.samples.merge_(other.samples)
        return self

    def compute(self) -> dict[str, torch.Tensor]:
        s = self.samples
        f, p = F.anova_from_moments(s.count, s.mean, s.m2, s.eps)
        units = math.prod(self.unit_shape)  # tests per layer (1 for a scalar unit)
        alpha = self.options.alpha / units if self.options.bonferroni else self.options.alpha
        return {"f": f, "p": p, "variant": (p < alpha).double()}
