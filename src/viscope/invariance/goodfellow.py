"""Goodfellow et al. (2009) firing-rate invariance (``goodfellow``)."""

from __future__ import annotations

import torch

from viscope.invariance import functional as F
from viscope.invariance.state import LayerState
from viscope.invariance.stats import Moments


class Goodfellow(LayerState):
    """Goodfellow et al. (2009) firing-rate invariance, L / G.

    Stage 0 fits a normal to each unit's activation on untransformed samples and sets the
    firing threshold at its ``firing_quantile`` (as tmeasures does). Stage 1 measures the
    global firing rate G on untransformed samples and the local firing rate L: for the
    samples where the unit fires, the fraction of their transformed versions on which it
    still fires. Higher = more invariant.
    """

    stages = ("reference", "grid+reference")
    derived = ("threshold",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        z = torch.zeros(self.unit_shape, dtype=torch.float64, device=self.device)
        self.reference = Moments.empty((), self.unit_shape, self.device)
        self.fired, self.local = z.clone(), z.clone()
        self.count = torch.zeros((), dtype=torch.float64, device=self.device)
        self.threshold: torch.Tensor | None = None

    def update(self, acts: torch.Tensor, stage: int = 0) -> None:
        x = acts.double()
        if stage == 0:
            self.reference.update(x[:, 0])
            return
        fires = x > self.threshold
        ref, grid = fires[:, 0], fires[:, 1:].double().mean(1)
        self.fired += ref.double().sum(0)
        self.local += torch.where(ref, grid, torch.zeros_like(grid)).sum(0)
        self.count += x.shape[0]

    def end_stage(self, stage: int) -> None:
        if stage == 0:
            self.threshold = F.normal_quantile(
                self.reference.mean, self.reference.std(), self.options.firing_quantile
            )

    def tensors(self) -> list[torch.Tensor]:
        return [*self.reference.tensors(), self.fired, self.local, self.count]

    def _load(self, tensors: list[torch.Tensor]) -> None:
        self.reference = Moments(*(t.clone() for t in tensors[:4]))
        self.fired, self.local, self.count = (t.clone() for t in tensors[4:])

    def merge_(self, other: Goodfellow) -> Goodfellow:
        self.reference.merge_(other.reference)
        self.fired, self.local = self.fired + other.fired, self.local + other.local
        self.count = self.count + other.count
        return self

    def compute(self) -> dict[str, torch.Tensor]:
        g = self.fired / self.count.clamp_min(1)
        local = self.local / self.fired.clamp_min(1)
        nan = torch.full_like(g, torch.nan)
        inv = torch.where(self.fired > 0, local / g.clamp_min(1e-300), nan)
        return {"global_rate": g, "local_rate": local, "invariance": inv}
