"""The hot loop of a measurement: one stage over the batches, activations consumed in
the forward hooks.

Each forward pass holds complete rows — b samples, each under all M parameter values.
The tap hands each measured layer's output to ``consume`` at hook time, which (for
``nv_se``) warps it back, then updates the layer's state, or copies it into its
stack's buffer (:mod:`viscope.invariance.stacking`); once every measured layer is in,
the rest of the network is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from viscope.activations import Tap
from viscope.errors import ViscopeError
from viscope.invariance.equivariance import spatial_map
from viscope.invariance.stacking import stack_layers
from viscope.invariance.state import LayerState
from viscope.invariance.stats import working_precision


class StopForward(BaseException):
    """Raised from the last measured layer's hook to skip the rest of the forward pass
    (a BaseException, so that a model's own ``except Exception`` cannot swallow it)."""


class BadInput(ViscopeError):
    """Non-finite pixels in a batch; ``done`` batches of the stage are in the states."""

    def __init__(self, message: str, done: int) -> None:
        super().__init__(message)
        self.done = done


@dataclass(frozen=True)
class Plan:
    """What every stage of one measurement shares. ``shard[k]`` is the dataset index of
    this process's k-th sample and ``rows`` the samples per batch (to name bad samples)."""

    model: nn.Module
    family: Any
    grid: torch.Tensor
    records: dict
    tokens: str
    prefix_tokens: int | None
    equivariant: bool
    device: torch.device
    shard: list[int]
    rows: int
    dtype: torch.dtype | None = None  # images are cast to it (the model's dtype)
    measured: list[str] | None = None  # layers that ran in the probe, in order
    skipped: list[str] | None = None  # layers that did not

    def run_stage(self, loader: DataLoader, first: int, states: dict[str, LayerState],
                  stage: str, s: int, after_batch: Callable[[int], None]) -> None:
        """Run stage ``s`` (``stage``) over ``loader`` (batches ``first``, ``first + 1``,
        ...); ``after_batch(done)`` is called once each batch is in the states."""
        model, family, grid, records = self.model, self.family, self.grid, self.records
        equivariant, device, shard, rows = self.equivariant, self.device, self.shard, self.rows
        dtype = self.dtype
        m = grid.shape[0]
        ctx: dict[str, Any] = {}
        # small layers of one shape are updated together (same numbers, fewer operations)
        stacks = stack_layers(states, rows, {"reference": 1, "grid": m}.get(stage, m + 1))
        groups = set(stacks.values())

        def consume(name: str, act: torch.Tensor) -> None:
            b, cols = ctx["rows"], ctx["cols"]
            if equivariant:
                rec = records[name]
                maps = working_precision(spatial_map(act, rec.layout, rec.grid))
                act = family.inverse(maps, ctx["params"])
            act = act.reshape(b, cols, *act.shape[1:])
            stack = stacks.get(name)
            if stack is None:
                states[name].update(act, s)  # the tap only hooks measured layers
            else:
                stack.put(name, act, s)
            ctx["fired"] += 1
            if ctx["fired"] == len(states):
                raise StopForward  # every measured layer is in: the rest of the net is not needed

        with torch.no_grad(), Tap(model, list(states), callback=consume, tokens=self.tokens,
                                  prefix_tokens=self.prefix_tokens):
            for done, x in enumerate(loader, start=first + 1):
                finite = torch.isfinite(x.flatten(1)).all(dim=1)  # on the loader's side: no sync
                if not bool(finite.all()):
                    ids = [shard[(done - 1) * rows + i] for i in (~finite).nonzero()[:, 0].tolist()]
                    raise BadInput(
                        f"Dataset samples {ids} have NaN or infinite pixels: fix them", done - 1)
                x = x.to(device, non_blocking=True)
                b = x.shape[0]
                params = grid.repeat(b, *([1] * (grid.ndim - 1)))
                if stage == "reference":
                    images, cols = x, 1
                else:
                    moved = family.apply(x.repeat_interleave(m, 0), params)
                    if stage == "grid":
                        images, cols = moved, m
                    else:  # grid+reference: column 0 is the untransformed image
                        moved = moved.reshape(b, m, *x.shape[1:])
                        images = torch.cat([x.unsqueeze(1), moved], 1).flatten(0, 1)
                        cols = m + 1
                if dtype is not None and images.dtype != dtype:
                    images = images.to(dtype)  # transformed in the data's precision
                ctx.update(rows=b, cols=cols, params=params, fired=0)
                for stack in groups:
                    stack.start_batch()
                try:
                    model(images)
                except StopForward:
                    pass
                after_batch(done)


__all__ = ["BadInput", "Plan", "StopForward"]
