"""Invariance measures as streaming, mergeable per-layer states.

Each measure is a small class: ``update`` takes the activations of a block of complete
rows of the samples x transformations grid, shaped (b, M, *units) — b samples, each under
all M parameter values — ``merge_`` combines shards, ``compute`` returns per-unit arrays.
The maths lives in :mod:`viscope.invariance.functional`, shared with the one-shot
versions used in tests.

Definitions follow Quiroga et al., "Measuring (in)variances in convolutional networks",
Applied Soft Computing 2023, and its library tmeasures:

* TV (transformational variance) = mean over samples of the std (ddof 1) of a unit's
  activation over the M transformations of that sample.
* SV (sample variance) = mean over transformations of the std (ddof 1) over samples.
* NV = TV / SV, with 0/0 -> 1 and x/0 -> inf; a layer's value is the mean over its
  units' finite values. ``spatial=True`` averages TV and SV over the spatial axes
  (H x W, or tokens) before dividing; ``variance=True`` uses variances instead of stds.
* ``nv_se`` (same-equivariance) is NV of activation maps warped back by the inverse
  transformation, over the positions every transformation maps back and the units that
  are not constant (:class:`SameEquivariantNV`, :mod:`viscope.invariance.equivariance`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from viscope.invariance import functional as F
from viscope.invariance.anova import Anova
from viscope.invariance.distance import NormalizedDistance
from viscope.invariance.goodfellow import Goodfellow
from viscope.invariance.state import LayerState, MeasureOptions
from viscope.invariance.stats import Moments, safe_divide
from viscope.registry import Registry


class NormalizedVariance(LayerState):
    """TV, SV and NV = TV / SV from one pass (state: (2M + 1) float64 per unit)."""

    stackable = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.samples = Moments.empty((self.n_params,), self.unit_shape, self.device)
        self.tv_sum = torch.zeros(self.unit_shape, dtype=torch.float64, device=self.device)
        self.tv_count = torch.zeros((), dtype=torch.float64, device=self.device)

    def update(self, acts: torch.Tensor, stage: int = 0) -> None:
        # add_ promotes the float32 sum into the float64 state (no separate cast)
        self.tv_sum.add_(F.dispersion(acts, dim=1, variance=self.options.variance).sum(0))
        self.tv_count += acts.shape[0]
        self.samples.update(acts)

    def tensors(self) -> list[torch.Tensor]:
        return [self.tv_sum, self.tv_count, *self.samples.tensors()]

    def _load(self, tensors: list[torch.Tensor]) -> None:
        self.tv_sum, self.tv_count = tensors[0].clone(), tensors[1].clone()
        self.samples = Moments(*(t.clone() for t in tensors[2:]))

    def merge_(self, other: NormalizedVariance) -> NormalizedVariance:
        self.tv_sum = self.tv_sum + other.tv_sum
        self.tv_count = self.tv_count + other.tv_count
        self.samples.merge_(other.samples)
        return self

    def counters(self) -> list[torch.Tensor]:
        return [self.tv_count, self.samples.count, self.samples.eps]

    @classmethod
    def stack(cls, states: list[NormalizedVariance]) -> NormalizedVariance:
        first = states[0]
        dims = tuple(d + 1 for d in first.spatial_dims)  # behind the new layer axis
        out = cls(first.n_params, (len(states), *first.unit_shape), dims, first.options,
                  first.device)
        # the counts and epsilon are the same for every layer (each batch feeds them all)
        out._load([torch.stack([st.tv_sum for st in states]), first.tv_count,
                   first.samples.count, torch.stack([st.samples.mean for st in states], 1),
                   torch.stack([st.samples.m2 for st in states], 1), first.samples.eps])
        for k, st in enumerate(states):
            st.tv_sum, st.tv_count = out.tv_sum[k], out.tv_count
            st.samples = Moments(out.samples.count, out.samples.mean[:, k],
                                 out.samples.m2[:, k], out.samples.eps)
        return out

    def compute(self) -> dict[str, torch.Tensor]:
        tv = self.tv_sum / self.tv_count.clamp_min(1)
        spread = self.samples.var() if self.options.variance else self.samples.std()
        sv = spread.mean(0)
        tv, sv = self._spatial_mean(tv), self._spatial_mean(sv)
        return {"tv": tv, "sv": sv, "nv": safe_divide(tv, sv)}


class SameEquivariantNV(NormalizedVariance):
    """NV of activation maps mapped back by the inverse transformation (``nv_se``).

    The engine feeds (b, M, C, h, w) maps already warped back; this state applies the
    rule of :mod:`viscope.invariance.equivariance` when computing: positions outside
    ``valid`` are NaN in every quantity (with ``spatial=True``, TV and SV are averaged
    over valid positions only), and units constant on every image (TV = SV = 0) have a
    NaN ``nv``, so the layer mean counts neither. The streamed statistics are those of
    :class:`NormalizedVariance`, so merging and resuming are unchanged; ``valid`` goes
    with every copy (:meth:`with_tensors`).

    Args:
        valid: (h, w) bool mask of valid positions, or ``None`` (every position).
    """

    stackable = False  # each layer has its own valid positions

    def __init__(self, *args, valid: torch.Tensor | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.valid = valid

    def with_tensors(self, tensors: list[torch.Tensor]) -> SameEquivariantNV:
        other = super().with_tensors(tensors)
        other.valid = self.valid
        return other

    def compute(self) -> dict[str, torch.Tensor]:
        tv = self.tv_sum / self.tv_count.clamp_min(1)
        spread = self.samples.var() if self.options.variance else self.samples.std()
        sv = spread.mean(0)
        valid = torch.ones_like(tv, dtype=torch.bool) if self.valid is None else \
            self.valid.to(tv.device).expand_as(tv)
        floor = self._constant_floor(valid)
        if self.options.spatial and self.spatial_dims:
            dims = self.spatial_dims
            count = valid.sum(dim=dims)  # 0 valid positions: 0 / 0 = NaN
            tv = torch.where(valid, tv, 0.0).sum(dim=dims) / count
            sv = torch.where(valid, sv, 0.0).sum(dim=dims) / count
        else:
            tv = torch.where(valid, tv, torch.nan)
            sv = torch.where(valid, sv, torch.nan)
        nv = safe_divide(tv, sv)  # NaN stays NaN
        constant = (tv <= floor) & (sv <= floor)
        return {"tv": tv, "sv": sv, "nv": torch.where(constant, torch.nan, nv)}

    def _constant_floor(self, valid: torch.Tensor) -> torch.Tensor:
        """The TV / SV at or below which a unit counts as constant on every image:
        16 machine epsilons (of the precision the activations were reduced in) of the
        layer's RMS activation over valid positions. The unit's own mean, which the
        rounding floor of :mod:`~viscope.invariance.stats` uses, is too small a scale
        here: a unit that is a bias on every image (a zero border) picks up noise of a
        few ulp of its neighbours' larger values from the float32 warps (grid
        coordinates off by ~1e-6 px), and that noise over noise would read as any NV."""
        s = self.samples
        count = s.count.reshape(-1, *([1] * len(self.unit_shape))).clamp_min(1)
        square = (s.mean**2 + s.m2 / count).mean(0)  # E[x^2] over samples, mean over M
        weight = valid.double()
        rms = ((square * weight).sum() / weight.sum().clamp_min(1)).sqrt()
        floor = 16 * s.eps * rms
        return floor**2 if self.options.variance else floor

@dataclass(frozen=True)
class MeasureSpec:
    """A registered measure: its state class, outputs and the quantity a layer reports."""

    name: str
    state: type[LayerState]
    primary: str
    description: str
    equivariant: bool = False
    lower_is_invariant: bool = True


MEASURES: Registry[MeasureSpec] = Registry("measure")
for _spec in (
    MeasureSpec("nv", NormalizedVariance, "nv",
                "Normalized Variance TV/SV (also reports TV and SV); lower = more invariant"),
    MeasureSpec("nv_se", SameEquivariantNV, "nv",
                "same-equivariance NV: activation maps warped back with the inverse "
                "geometric transformation, then TV/SV over positions that every "
                "transformation maps back (ones warped there and back stay >= 0.999), "
                "units constant on every image left out; lower = more equivariant",
                equivariant=True),
    MeasureSpec("anova", Anova, "variant",
                "one-way ANOVA per unit (F, p); fraction of units that vary with the "
                "transformation at alpha, Bonferroni-corrected"),
    MeasureSpec("goodfellow", Goodfellow, "invariance",
                "Goodfellow et al. 2009 firing-rate invariance L/G; higher = more invariant",
                lower_is_invariant=False),
    MeasureSpec("distance", NormalizedDistance, "nd",
                "normalised mean pairwise distance TD/SD; lower = more invariant"),
):
    MEASURES.register(_spec.name, _spec)


def list_measures() -> list[str]:
    """Names of the registered measures."""
    return MEASURES.names()


__all__ = [  # the state classes live in their own modules; this is where they are found
    "MEASURES", "Anova", "Goodfellow", "LayerState", "MeasureOptions", "MeasureSpec",
    "NormalizedDistance", "NormalizedVariance", "SameEquivariantNV", "list_measures",
]
