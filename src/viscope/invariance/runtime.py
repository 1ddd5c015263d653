"""What the measurement loop needs around it: processes, progress, warnings."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from viscope.invariance.measures import LayerState


def dist_info() -> tuple[int, int]:
    """``(rank, world size)`` under ``torch.distributed``, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def merge_ranks(state: LayerState) -> LayerState:
    """Gather every process's state and merge them in rank order (same on every rank)."""
    import torch.distributed as dist

    rank, world = dist_info()
    if world == 1:
        return state
    gathered = []
    for t in state.tensors():
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        gathered.append(parts)
    shards = [state.with_tensors([g[r] for g in gathered]) for r in range(world)]
    merged = shards[0]
    for other in shards[1:]:
        merged.merge_(other)
    merged.adopt(state)
    return merged


def warn_non_finite(states: dict[str, LayerState], measure: str, stacklevel: int = 3) -> None:
    """Warn about layers whose statistics are not finite: sums of finite activations stay
    finite, so the model produced NaN or infinite activations there."""
    bad = [name for name, st in states.items()
           if any(t.is_floating_point() and not bool(torch.isfinite(t).all())
                  for t in st.tensors())]
    if bad:
        warnings.warn(
            f"The model produced NaN or infinite activations in layers {', '.join(bad)}: "
            f"{measure} is NaN or infinite for the units concerned, and the layer averages "
            "leave them out. Check the weights and the precision (e.g. float16 overflow).",
            stacklevel=stacklevel,
        )


class Progress:
    """A rich progress bar (``progress=True``, rank 0 only) or a callback
    ``progress(done, total)``; nothing for ``False``."""

    def __init__(self, progress: bool | Callable[[int, int], None], total: int,
                 label: str) -> None:
        self.callback = progress if callable(progress) else None
        self.total, self.done = total, 0
        self._bar = None
        if progress is True and dist_info()[0] == 0:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(TextColumn("{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeRemainingColumn(), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(label, total=total)

    def advance(self, steps: int = 1) -> None:
        """Count ``steps`` more batches done."""
        if steps == 0:
            return
        self.done += steps
        if self._bar is not None:
            self._bar.advance(self._task, steps)
        if self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        """Stop the bar (if any)."""
        if self._bar is not None:
            self._bar.stop()


__all__ = ["Progress", "dist_info", "merge_ranks", "warn_non_finite"]
