"""Update several small layers' states as one: fewer, larger operations per batch.

A measure's update is some twenty tensor operations per layer and batch. On a small
model (timm's ``test_vit``: six blocks of 101 x 64 units) each is so short that the
per-operation cost — Python dispatch, and on several threads the start of a parallel
region — rivals the arithmetic. Layers whose states are :attr:`~LayerState.stackable`
and share a unit shape are therefore grouped: their states become views of one state
over the stacked units (:meth:`LayerState.stack`), each layer's activation is copied
into its slot of a (b, M, layers, *units) buffer as its hook fires, and the stacked
state is updated once the group's last layer is in. Everything else — merging across
processes, saving and resuming, computing — still sees one state per layer, and the
numbers are the same (the reductions run over the same values in the same order).

Large layers are not grouped: their operations are long enough already, and the
buffer would cost memory for nothing.
"""

from __future__ import annotations

import math

import torch

from viscope.invariance.measures import LayerState
from viscope.invariance.stats import working_precision

#: a layer is grouped when one batch of its activations has at most this many values
SMALL_LAYER = 2**20
#: and a group's buffer holds at most this many values (larger groups are split)
MAX_BUFFER = 2**24


class Stack:
    """The stacked state of some layers and the buffer their activations are copied to.

    Args:
        names: the layers, in the order of their slots.
        states: every layer's state (those of ``names`` become views of :attr:`state`).
    """

    def __init__(self, names: list[str], states: dict[str, LayerState]) -> None:
        self.names = names
        self.slot = {name: k for k, name in enumerate(names)}
        self.state = type(states[names[0]]).stack([states[n] for n in names])
        self.buffer: torch.Tensor | None = None
        self.filled = 0

    def start_batch(self) -> None:
        """Forget a batch whose forward pass did not reach every layer of the group."""
        self.filled = 0

    def put(self, name: str, acts: torch.Tensor, stage: int) -> None:
        """Copy layer ``name``'s block of rows (b, M, *units) into its slot; once every
        layer of the group is in, update the stacked state with the whole buffer."""
        b = acts.shape[0]
        dtype = working_precision(acts).dtype
        buf = self.buffer
        shape = (acts.shape[1], len(self.names), *acts.shape[2:])
        if buf is None or buf.shape[1:] != shape or buf.shape[0] < b \
                or buf.device != acts.device:
            buf = self.buffer = torch.empty((b, *shape), dtype=dtype, device=acts.device)
        elif buf.dtype != dtype:  # a layer in float64 among float32 ones: keep its precision
            buf = self.buffer = buf.to(torch.promote_types(buf.dtype, dtype))
        buf[:b, :, self.slot[name]].copy_(acts)
        self.filled += 1
        if self.filled == len(self.names):
            self.filled = 0
            self.state.update(buf[:b], stage)


def stack_layers(states: dict[str, LayerState], rows: int, cols: int) -> dict[str, Stack]:
    """Group the small layers of ``states`` that share a stackable state class, unit shape
    and options, and make their states views of each group's stacked state.

    Args:
        states: every measured layer's state (grouped ones are changed in place).
        rows: samples per batch.
        cols: activations per sample in this stage (the M transformations).

    Returns:
        The :class:`Stack` of each grouped layer (layers left alone are absent).
    """
    groups: dict[tuple, list[str]] = {}
    for name, st in states.items():
        size = rows * cols * math.prod(st.unit_shape)
        if not st.stackable or size > SMALL_LAYER:
            continue
        key = (type(st), st.unit_shape, st.spatial_dims, st.options, st.n_params)
        groups.setdefault(key, []).append(name)
    out: dict[str, Stack] = {}
    for names in groups.values():
        first = states[names[0]]
        per_layer = rows * cols * math.prod(first.unit_shape)
        names = [n for n in names if _same_counts(states[n], first)]
        step = max(1, MAX_BUFFER // per_layer)
        for i in range(0, len(names), step):
            chunk = names[i:i + step]
            if len(chunk) > 1:
                stack = Stack(chunk, states)
                out.update((n, stack) for n in chunk)
    return out


def _same_counts(a: LayerState, b: LayerState) -> bool:
    """Whether two states have seen the same batches, as the layers of a stack must:
    they share one count."""
    return all(torch.equal(x, y) for x, y in zip(a.counters(), b.counters(), strict=True))


__all__ = ["MAX_BUFFER", "SMALL_LAYER", "Stack", "stack_layers"]
