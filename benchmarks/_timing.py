"""Timing of training epochs that the training benchmarks share (``train_throughput``,
``pretrain_throughput``): a Lightning callback and the plain loops time the same span."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl

from viscope.train.callbacks import synchronize


class EpochTimer(pl.Callback):
    """Images and seconds of each training epoch, timed as the benchmarks' plain loops time
    theirs: from the epoch's start to the end of its last batch, synchronised."""

    def __init__(self) -> None:
        self.epochs: list[tuple[int, float]] = []
        self._start = self._end = 0.0
        self._images = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize(pl_module.device)
        self._images = 0
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        self._images += len(batch[0])  # the images
        if idx + 1 == trainer.num_training_batches:
            synchronize(pl_module.device)
        self._end = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append((self._images, self._end - self._start))


def throughput(epochs: list[tuple[int, float]]) -> float:
    """Images/s over all epochs but the first (warm-up)."""
    timed = epochs[1:]
    return sum(i for i, _ in timed) / sum(s for _, s in timed)
