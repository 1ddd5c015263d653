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

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from viscope.invariance import functional as F
from viscope.invariance.stats import Moments, safe_divide
from viscope.registry import Registry


@dataclass(frozen=True)
class MeasureOptions:
    """Options shared by the measures.

    Attributes:
        spatial: average TV and SV over spatial axes (H x W, tokens) before dividing.
        variance: use variances instead of standard deviations (TV, SV, NV).
        alpha: significance level of the ANOVA test.
        bonferroni: divide ``alpha`` by the number of units of the layer (stricter).
        firing_quantile: Goodfellow's firing threshold, as a quantile of a normal fitted to
            each unit's activations on untransformed samples (tmeasures' default 0.99).
    """

    spatial: bool = False
    variance: bool = False
    alpha: float = 0.01
    bonferroni: bool = True
    firing_quantile: float = 0.99


class LayerState(ABC):
    """The streaming state of one measure on one layer."""

    #: what each stage feeds: "grid" = (b, M, *U) of transformed images; "reference" =
    #: (b, 1, *U) of untransformed images; "grid+reference" = (b, 1 + M, *U), column 0
    #: untransformed.
    stages: ClassVar[tuple[str, ...]] = ("grid",)
    #: attributes that :meth:`end_stage` derives from the merged state (e.g. thresholds)
    #: and that every shard needs for the next stage.
    derived: ClassVar[tuple[str, ...]] = ()
    #: the fewest parameter values (transformations) the measure is defined for: a spread
    #: over one value is 0, which would read as perfect invariance.
    min_params: ClassVar[int] = 2
    #: the fewest samples :meth:`update` needs in one block of rows.
    min_rows: ClassVar[int] = 1
    #: whether one state over the stacked units of several layers of one unit shape
    #: equals those layers' states (units independent, nothing per layer) and
    #: :meth:`stack` can make them views of it (see :mod:`viscope.invariance.stacking`).
    stackable: ClassVar[bool] = False

    def __init__(
        self,
        n_params: int,
        unit_shape: tuple[int, ...],
        spatial_dims: tuple[int, ...] = (),
        options: MeasureOptions = MeasureOptions(),
        device: torch.device | str | None = None,
    ) -> None:
        self.n_params = n_params
        self.unit_shape = tuple(unit_shape)
        self.spatial_dims = tuple(spatial_dims)
        self.options = options
        self.device = device

    @abstractmethod
    def update(self, acts: torch.Tensor, stage: int = 0) -> None:
        """Add a block of rows (b, M, *U) (see :attr:`stages`)."""

    def end_stage(self, stage: int) -> None:  # noqa: B027 - optional hook
        """Called on the merged state once every shard has finished ``stage``."""

    def adopt(self, merged: LayerState) -> None:
        """Take the :attr:`derived` attributes of the merged state (for the next stage)."""
        for name in self.derived:
            setattr(self, name, getattr(merged, name))

    @abstractmethod
    def tensors(self) -> list[torch.Tensor]:
        """The state as tensors (same shapes on every shard), for merging."""

    @abstractmethod
    def merge_(self, other: LayerState) -> LayerState:
        """Merge another shard's state into this one."""

    @abstractmethod
    def compute(self) -> dict[str, torch.Tensor]:
        """Per-unit results, keyed by quantity name."""

    def with_tensors(self, tensors: list[torch.Tensor]) -> LayerState:
        """A copy of this (empty) state holding ``tensors`` (see :meth:`tensors`)."""
        other = type(self)(self.n_params, self.unit_shape, self.spatial_dims, self.options,
                           self.device)
        other._load(tensors)
        return other

    @abstractmethod
    def _load(self, tensors: list[torch.Tensor]) -> None: ...

    @classmethod
    def stack(cls, states: list[LayerState]) -> LayerState:
        """One state over the units of ``states`` stacked on a new first unit axis, whose
        tensors the given states then view (so that its updates are theirs).

        Only for :attr:`stackable` classes; the states share unit shape and options.
        """
        raise NotImplementedError(f"{cls.__name__} is not stackable")

    def counters(self) -> list[torch.Tensor]:
        """The tensors that count what the state has seen (equal in states fed the same
        batches; a stack shares them)."""
        return []

    def _spatial_mean(self, x: torch.Tensor) -> torch.Tensor:
        if self.options.spatial and self.spatial_dims:
            return x.mean(dim=self.spatial_dims)
        return x


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
