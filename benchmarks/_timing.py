"""Timing of training epochs that the training benchmarks share (``train_throughput``,
``pretrain_throughput``): a Lightning callback and the plain loops time the same span, the
options, the data and the alternating comparison."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from _common import add_host_args, host

from viscope import data
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


def add_run_args(parser: argparse.ArgumentParser, *, models: str, batch_size: int) -> None:
    """The options every training benchmark takes (models, data size, epochs, repeats,
    device, seed, threads)."""
    parser.add_argument("--models", default=models)
    parser.add_argument("--n", type=int, default=1000, help="training images")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--seed", type=int, default=0)
    add_host_args(parser)


def prepare(args: argparse.Namespace) -> tuple[torch.device, dict[str, Any]]:
    """Check the options, set the threads, and make the ``shapes`` train and val splits
    (n / 0.7 items, so that the train split holds about n images)."""
    device = host(args)
    if args.epochs < 2:
        sys.exit(f"--epochs must be at least 2 (the first is an untimed warm-up); got "
                 f"{args.epochs}. Use --epochs 2 or more")
    total = round(args.n / 0.7)
    return device, {s: data.create("shapes", split=s, n=total, seed=args.seed)
                    for s in ("train", "val")}


Run = Callable[[str], list[tuple[int, float]]]


def compare(args: argparse.Namespace, splits: dict[str, Any], detail: str, plain: Run,
            ours: Run, label: str) -> None:
    """Time ``plain(model_name)`` and ``ours(model_name)`` alternately ``args.repeats``
    times per model and print the medians' throughput and their ratio."""
    print(
        f"device={args.device} torch={torch.__version__} lightning={pl.__version__} "
        f"threads={torch.get_num_threads()} load={os.getloadavg()[0]:.1f} | "
        f"{len(splits['train'])} train images, batch {args.batch_size}, "
        f"{len(splits['train']) // args.batch_size} steps/epoch, {args.epochs} epochs (first "
        f"excluded), {detail}, {args.repeats} alternating repeats"
    )
    for name in args.models.split(","):
        plain_runs, our_runs = [], []
        for _ in range(args.repeats):
            plain_runs.append(throughput(plain(name)))
            our_runs.append(throughput(ours(name)))
        a, b = statistics.median(plain_runs), statistics.median(our_runs)
        print(f"{name:18s} plain {a:8.1f} img/s   {label} {b:8.1f} img/s   ratio {b / a:.3f}   "
              f"(runs plain {[round(r) for r in plain_runs]}, {label} "
              f"{[round(r) for r in our_runs]})")
    print(f"load at end={os.getloadavg()[0]:.1f}")
