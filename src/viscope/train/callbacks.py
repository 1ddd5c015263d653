"""Lightning callbacks of viscope's training loops."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work on ``device`` (nothing to do on other devices)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ThroughputMeter(pl.Callback):
    """Training images per second, per epoch.

    An epoch's time runs from ``on_train_epoch_start`` to the end of its last training
    batch: data loading, augmentation, forward, backward, optimizer step and logging
    count; the validation that follows and checkpoint writing do not. CUDA is
    synchronised at both ends (never in between, which would stall the pipeline).

    Attributes:
        epochs: ``(epoch, images, seconds)`` for each training epoch run (images summed
            over all processes).
    """

    def __init__(self) -> None:
        self.epochs: list[tuple[int, int, float]] = []
        self._start = 0.0
        self._images = 0
        self._seconds = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize(pl_module.device)
        self._images, self._seconds = 0, 0.0
        self._start = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._images += len(batch[1]) * trainer.world_size
        if batch_idx + 1 >= trainer.num_training_batches:
            synchronize(pl_module.device)
        self._seconds = time.perf_counter() - self._start

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append((trainer.current_epoch, self._images, self._seconds))

    def images_per_second(self) -> float | None:
        """Images/s over the epochs after the first (start-up excluded), or over the only
        epoch when there was one; ``None`` before any epoch."""
        timed = self.epochs[1:] if len(self.epochs) > 1 else self.epochs
        seconds = sum(s for _, _, s in timed)
        if not timed or seconds <= 0:
            return None
        return sum(i for _, i, _ in timed) / seconds


class ValidateAtMaxSteps(pl.Callback):
    """End training through ``trainer.should_stop`` when ``max_steps`` is reached.

    Lightning ends an epoch cut short by ``max_steps`` without validating it; asking it
    to stop instead makes it validate (and checkpoint) the final weights first, so that
    a short run still selects its model on validation.
    """

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True
