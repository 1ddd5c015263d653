"""Resume an interrupted measurement from its last saved statistics.

The measure's state is a set of mergeable tensors (:meth:`LayerState.tensors`), so a
measurement can stop after any batch and go on later from the same point: the file holds
the stage, the batches of this process's shard already consumed, every layer's tensors
and derived attributes, and a fingerprint of everything that decides the numbers (the
weights, the samples, the grid, the layers, the measure's options, the rows per batch).
A file written for another measurement is refused rather than mixed in.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from viscope.errors import ViscopeError
from viscope.invariance.measures import LayerState
from viscope.io import atomic_write

FORMAT = 2  # 2: Moments carry the epsilon of their precision


def fingerprint(model: nn.Module, config: dict[str, Any]) -> str:
    """A digest of ``config`` (JSON-able) and of the model's weights and buffers.

    Each tensor gives its dtype and sums that see its values (sum, |x|, x^2) and their
    positions (a sum weighted by position, so that permuted channels differ).
    """
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, t in (*model.named_parameters(), *model.named_buffers()):
            d = t.detach().double().flatten()
            w = torch.linspace(1.0, 2.0, d.numel(), dtype=torch.float64, device=d.device)
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}:{float(d.sum())!r}:"
                     f"{float(d.abs().sum())!r}:{float((d * d).sum())!r}:"
                     f"{float((d * w).sum())!r}".encode())
    return h.hexdigest()


class Checkpoint:
    """Periodic saves of a measurement's state to ``path``.

    Args:
        path: the file (one per process under ``torch.distributed``).
        key: the measurement's :func:`fingerprint`.
        every: seconds between saves (0: after every batch).
    """

    def __init__(self, path: str | Path, key: str, every: float = 60.0) -> None:
        self.path, self.key, self.every = Path(path), key, every
        self._last = time.monotonic()

    def load(self, states: dict[str, LayerState]) -> tuple[int, int] | None:
        """Load a saved state into ``states`` (replacing its entries).

        Returns:
            ``(stage, batches done in that stage)``, or ``None`` when there is no file.

        Raises:
            ViscopeError: the file is unreadable or belongs to another measurement.
        """
        if not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ViscopeError(f"Cannot read the resume file {self.path} ({why}); delete it "
                               "to start the measurement again.") from None
        if saved.get("format") != FORMAT or saved.get("key") != self.key:
            raise ViscopeError(
                f"The resume file {self.path} was written by a different measurement (model "
                "weights, data, transformation, layers, options or batch size differ); delete "
                "it, or write this run to another folder."
            )
        for name, st in list(states.items()):
            dev = st.tensors()[0].device
            layer = saved["layers"][name]
            loaded = st.with_tensors([t.to(dev) for t in layer["tensors"]])
            for attr, value in layer["derived"].items():
                setattr(loaded, attr, value.to(dev) if isinstance(value, torch.Tensor) else value)
            states[name] = loaded
        return int(saved["stage"]), int(saved["batches"])

    def due(self) -> bool:
        """Whether ``every`` seconds have passed since the last save."""
        return time.monotonic() - self._last >= self.every

    def save(self, stage: int, batches: int, states: dict[str, LayerState]) -> None:
        """Atomically write the state after ``batches`` batches of ``stage``."""
        payload = {
            "format": FORMAT, "key": self.key, "stage": stage, "batches": batches,
            "layers": {
                # a copy of each tensor: a stacked layer's are views, and torch.save would
                # write the whole stack's storage for each of them
                name: {"tensors": [t.detach().to("cpu", copy=True) for t in st.tensors()],
                       "derived": {a: _cpu(getattr(st, a)) for a in st.derived}}
                for name, st in states.items()
            },
        }
        atomic_write(self.path, lambda p: torch.save(payload, p))
        self._last = time.monotonic()

    def remove(self) -> None:
        """Delete the file (the measurement finished)."""
        self.path.unlink(missing_ok=True)


class GracefulInterrupt:
    """While active (in the main thread), a first Ctrl-C only sets :attr:`requested`, so
    the loop can finish its batch, save and stop with a consistent state; a second
    Ctrl-C interrupts at once as usual. With ``enabled=False`` it changes nothing.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled, self.requested = enabled, False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> GracefulInterrupt:
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)
        print("\nInterrupted: saving after this batch (Ctrl-C again to stop at once).",
              flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False


def _cpu(value: Any) -> Any:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


__all__ = ["Checkpoint", "GracefulInterrupt", "fingerprint"]
