"""The state every invariance measure keeps per layer, and the options they share.

A measure is a small :class:`LayerState` subclass: ``update`` takes a block of complete
rows of the samples x transformations grid, ``merge_`` combines shards, ``compute``
returns per-unit arrays (see :mod:`viscope.invariance.measures`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch


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
