"""Invariance as it forms during training: a Lightning callback that measures it.

:class:`InvarianceTracker` measures a registered invariance measure (NV by default) per
layer, for chosen transformation families, on a fixed seeded probe subset, before
training (epoch 0) and every ``every`` epochs (and after the last), by calling
:func:`viscope.invariance.measure` — the streaming engine, which under
``torch.distributed`` (Lightning DDP) shards the probe over the processes and merges
their states, so every rank ends with the single-process numbers. Rank 0 writes
``invariance_by_epoch.csv`` into the run folder after every measurement and the figures
at the end of training (:func:`plot_tracking`).
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from viscope.errors import ViscopeError
from viscope.io import atomic_write_text

#: The table written after every measurement, in the run folder.
TABLE = "invariance_by_epoch.csv"
#: The figure of the measure against relative depth, a panel per family, a line per epoch.
DEPTH_FIGURE = "invariance_by_epoch.png"
#: The figure of the last measured layer's value against epoch, one line per family.
LAST_LAYER_FIGURE = "invariance_last_layer_by_epoch.png"
#: The trainer's splits the probe can be taken from (``dataset_or_probe="val"``).
SPLITS = ("train", "val")


class InvarianceTracker(pl.Callback):
    """Measure invariance per layer at epoch 0 and every ``every`` epochs of training.

    Epoch ``e`` in the output means "after ``e`` training epochs" (0: the initial
    weights). A measurement runs with the model in eval mode (each module's own mode is
    restored afterwards, so a frozen backbone stays in eval mode), without gradients, and
    with the random number generators of torch (CPU and CUDA), NumPy and Python saved
    and restored, so that training with and without the tracker gives the same weights.
    Its time is logged (``tracking_seconds`` in the trainer's loggers, a ``seconds``
    column per family in the table, :attr:`seconds`).

    A resumed training (``fit`` on an interrupted run folder) reads the table already
    written and replaces rows of an epoch measured again instead of duplicating them.

    Args:
        families: transformation family names (``["rotation", "brightness"]``) or a
            comma-separated string.
        dataset_or_probe: a map-style dataset of ``(image, label, ...)``, a built-in
            dataset name, or ``"val"`` / ``"train"``: the split the trainer validates /
            trains on (the probe subset is the same at every measurement).
        every: measure after every ``every`` epochs (and after the last one; a scheduled
            measurement less than ``every / 2`` epochs before the last is left to it).
        samples: probe images (a subset seeded by ``seed``; the same images at every
            epoch, so that a change between epochs is the model's, not the probe's).
        params: parameter values per family (``family.grid(params)``).

    The defaults (``every=4, samples=16, params=4``) keep the tracker's cost near 15 %
    of the training time at the matrix demo's sizes with its ten families
    (``benchmarks/tracking_overhead.py``); at 16 samples a layer's NV varies by about
    0.02-0.04 between probe seeds on the demo models (as at 32), so compare epochs, not
    runs with different probes.
        layers: layer glob patterns (None: the model's default layers).
        measure: a registered invariance measure (``viscope list measures``).
        seed: seeds the probe subset.
        out: folder of the table and figures (None: the trainer's ``default_root_dir``,
            which is ``fit``'s run folder).
        batch_size: images per forward pass of the measurement.
        figures: write the figures at the end of training.

    Raises:
        ViscopeError: no family, an unknown family or measure, ``every`` < 1, or a
            probe split that the trainer does not have.

    Example:
        >>> tracker = InvarianceTracker("rotation,brightness", "val", every=2)
        >>> tracker.families
        ['rotation', 'brightness']
    """

    def __init__(
        self,
        families: str | Sequence[str],
        dataset_or_probe: Dataset | str = "val",
        *,
        every: int = 4,
        samples: int = 16,
        params: int = 4,
        layers: str | Sequence[str] | None = None,
        measure: str = "nv",
        seed: int = 0,
        out: str | Path | None = None,
        batch_size: int = 256,
        figures: bool = True,
    ) -> None:
        from viscope import transforms
        from viscope.invariance import MEASURES

        names = families.split(",") if isinstance(families, str) else list(families)
        self.families = [f.strip() for f in names if f.strip()]
        if not self.families:
            raise ViscopeError(
                f"Expected at least one transformation family to track; got {families!r}. "
                "Pass e.g. 'rotation,brightness' (viscope list transforms)."
            )
        for name in self.families:
            transforms.create(name)  # unknown names fail here, before any training
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ViscopeError(f"Expected every >= 1 (epochs between measurements); got "
                               f"{every!r}. Use every=1 to measure after every epoch.")
        self.spec = MEASURES.get(measure)
        self.probe = dataset_or_probe
        self.every, self.samples, self.params = every, samples, params
        self.layers, self.measure, self.seed = layers, measure, seed
        self.out = None if out is None else Path(out)
        self.batch_size, self.figures = batch_size, figures
        #: every row measured or read back: epoch, family, layer, depth, quantities, seconds
        self.table = pd.DataFrame()
        #: ``(epoch, seconds)`` of each measurement this session (all families, this rank)
        self.seconds: list[tuple[int, float]] = []
        #: seconds spent writing the figures at the end of training (rank 0)
        self.figure_seconds = 0.0
        self._dataset: Dataset | None = None
        self._folder: Path | None = None
        self._step = -1  # the global step last measured at

    # -- Lightning hooks ---------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._folder = Path(self.out or trainer.default_root_dir)
        self._dataset = self._resolve_probe(trainer)
        n = len(self._dataset)  # type: ignore[arg-type]
        if n < self.samples:
            warnings.warn(f"the invariance probe has {n} items; tracking on all of them, "
                          f"not samples={self.samples}", stacklevel=2)
        if trainer.is_global_zero and (self._folder / TABLE).is_file():
            self.table = pd.read_csv(self._folder / TABLE)  # a resumed run appends to it
        epoch = trainer.current_epoch  # 0, or the epochs a resumed run has done
        if epoch % self.every == 0 and not self._measured(trainer, epoch):
            self._track(trainer, pl_module, epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done = trainer.current_epoch + 1  # Lightning counts the epoch after this hook
        last = trainer.should_stop or (trainer.max_epochs is not None
                                       and done >= trainer.max_epochs)
        if (done % self.every == 0 and not self._near_end(trainer, done)) or last:
            self._track(trainer, pl_module, done)

    def _near_end(self, trainer: pl.Trainer, epoch: int) -> bool:
        """Whether a scheduled measurement at ``epoch`` is closer to the last epoch than half
        a period: the final measurement (which always runs) stands in for it. Over 5
        epochs with ``every=4`` that measures at 0 and 5, not 0, 4 and 5 — two
        measurements of nearly the same weights, a third of the tracker's cost."""
        end = trainer.max_epochs
        return end is not None and end > 0 and 0 < end - epoch < self.every / 2

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._step:  # stopped inside an epoch (max_steps)
            self._track(trainer, pl_module, trainer.current_epoch)
        if self.figures and trainer.is_global_zero and not self.table.empty:
            start = time.perf_counter()
            plot_tracking(self.table, self._folder or Path(trainer.default_root_dir),
                          quantity=self.spec.primary)
            self.figure_seconds = time.perf_counter() - start

    # -- the measurement ---------------------------------------------------------------
    def measure_now(self, model: torch.nn.Module, epoch: int) -> pd.DataFrame:
        """Measure every family on ``model`` now (RNG, modes and gradients untouched).

        Args:
            model: the model (not its Lightning module: layer names are the model's).
            epoch: the epoch label of the rows.

        Returns:
            The rows: ``epoch, family, layer, depth``, the measure's quantities
            (``tv, sv, nv`` for NV) and ``seconds`` (that family's measurement time).
        """
        from viscope.invariance import measure

        dataset = self._dataset if self._dataset is not None else self._named_probe()
        frames = []
        with _preserved_state(model):
            for family in self.families:
                start = time.perf_counter()
                result = measure(model, dataset, family, measure=self.measure,
                                 samples=min(self.samples, len(dataset)),  # type: ignore[arg-type]
                                 params=self.params, layers=self.layers,
                                 batch_size=self.batch_size, seed=self.seed)
                frame = result.per_layer().drop(columns="units")
                frame.insert(0, "family", family)
                frame.insert(0, "epoch", epoch)
                frame["seconds"] = time.perf_counter() - start
                frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def _track(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        """Measure (every rank: the engine merges the shards), log the time, and on rank 0
        write the table."""
        self._step = trainer.global_step
        start = time.perf_counter()
        rows = self.measure_now(getattr(pl_module, "model", pl_module), epoch)
        seconds = time.perf_counter() - start
        self.seconds.append((epoch, seconds))
        for logger in trainer.loggers:  # no "epoch" key: fit's history keeps its own epochs
            logger.log_metrics({"tracking_seconds": seconds, "tracking_epoch": epoch},
                               step=trainer.global_step)
        old = self.table
        if not old.empty:
            old = old[old["epoch"] != epoch]  # measured again after a resume: replace
        self.table = pd.concat([old, rows], ignore_index=True) if not old.empty else rows
        if trainer.is_global_zero:
            folder = self._folder or Path(trainer.default_root_dir)
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / TABLE, self.table.to_csv(index=False))

    def _measured(self, trainer: pl.Trainer, epoch: int) -> bool:
        """Whether the table read back holds every family at ``epoch``: rank 0's answer
        (the others read no table), sent to every rank, since they measure together."""
        have = bool(not self.table.empty and set(self.families) <= set(
            self.table.loc[self.table["epoch"] == epoch, "family"]))
        return bool(trainer.strategy.broadcast(have, src=0))

    def _resolve_probe(self, trainer: pl.Trainer) -> Dataset:
        if not isinstance(self.probe, str):
            return self.probe
        if self.probe not in SPLITS:
            return self._named_probe()
        loaders = trainer.val_dataloaders if self.probe == "val" else trainer.train_dataloader
        loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
        dataset = getattr(loader, "dataset", None)
        if dataset is None:
            raise ViscopeError(
                f"Expected the trainer to hold a {self.probe} data loader for the invariance "
                f"probe; it has none. Pass a dataset as dataset_or_probe instead."
            )
        return dataset

    def _named_probe(self) -> Dataset:
        from viscope import data

        if isinstance(self.probe, str) and self.probe in SPLITS:
            raise ViscopeError(f"The probe {self.probe!r} is the trainer's split, known "
                               "once training starts; pass a dataset to measure before.")
        return data.create(self.probe) if isinstance(self.probe, str) else self.probe


@contextmanager
def _preserved_state(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside; afterwards each module's own train/eval mode
    and the torch (CPU, CUDA), NumPy and Python random states as they were (the engine's
    data loader draws a seed from torch's generator)."""
    modes = [(m, m.training) for m in model.modules()]
    cpu = torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    # the legacy global NumPy generator is the one Lightning's seed_everything seeds
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)


def plot_tracking(table: pd.DataFrame | str | Path, folder: str | Path,
                  quantity: str = "nv") -> list[Path]:
    """Write the figures of a tracking table into ``folder``.

    :data:`DEPTH_FIGURE`: a panel per family of ``quantity`` against relative depth, one
    line per measured epoch coloured by epoch (with a colourbar); and
    :data:`LAST_LAYER_FIGURE`: the last layer's ``quantity`` against epoch, one line per
    family.

    Args:
        table: the rows of :class:`InvarianceTracker` or the path of its CSV.
        folder: where the PNGs go.
        quantity: the column plotted (the measure's primary quantity).

    Returns:
        The paths written.

    Raises:
        ViscopeError: the table lacks ``quantity`` or is empty.
    """
    from viscope.invariance.result import QUANTITY_LABELS
    from viscope.report.figures import pyplot, save_figure

    frame = pd.read_csv(table) if isinstance(table, (str, Path)) else table
    if frame.empty or quantity not in frame:
        raise ViscopeError(f"Expected a tracking table with a {quantity!r} column and rows; "
                           f"got columns {list(frame.columns)}. Plot the measure's "
                           "primary quantity.")
    from matplotlib.ticker import MaxNLocator

    plt, folder = pyplot(), Path(folder)
    label = QUANTITY_LABELS.get(quantity, quantity)
    epochs = sorted(frame["epoch"].unique())
    norm = plt.Normalize(min(epochs), max(max(epochs), min(epochs) + 1))
    cmap = plt.get_cmap("viridis")
    groups = list(frame.groupby("family", sort=False))
    # one figure, a panel per family: ten separate PNGs cost ~3 s at the end of training
    cols = min(len(groups), 4)
    rows_ = -(-len(groups) // cols)
    # fixed margins: constrained layout measured every label, doubling the drawing time
    fig, axes = plt.subplots(rows_, cols, figsize=(3.6 * cols + 1, 3 * rows_ + 0.6),
                             squeeze=False, gridspec_kw={"hspace": 0.35, "wspace": 0.3})
    for ax, (family, rows) in zip(axes.flat, groups, strict=False):
        for epoch, part in rows.groupby("epoch"):
            ax.plot(part["depth"] * 100, part[quantity], marker="o", ms=3,
                    color=cmap(norm(epoch)))
        ax.set_title(str(family))
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    for i, ax in enumerate(axes.flat[:len(groups)]):
        if i + cols >= len(groups):  # no panel below it
            ax.set_xlabel("relative depth of layer (%)")
    for ax in axes[:, 0]:
        ax.set_ylabel(label)
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(),
                       label="epoch (0: before training)", fraction=0.03, pad=0.02)
    bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
    fig.suptitle(f"{label} per layer during training, one line per epoch")
    save_figure(fig, folder / DEPTH_FIGURE)
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    for family, rows in frame.groupby("family", sort=False):
        last = rows[rows["depth"] == rows["depth"].max()].sort_values("epoch")
        ax.plot(last["epoch"], last[quantity], marker="o", label=family)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch (0: before training)", ylabel=f"{label}, last layer",
           title=f"{label} of the last layer during training")
    ax.grid(alpha=0.3)
    ax.legend(title="family", fontsize=8)
    save_figure(fig, folder / LAST_LAYER_FIGURE)
    return [folder / DEPTH_FIGURE, folder / LAST_LAYER_FIGURE]


__all__ = ["DEPTH_FIGURE", "LAST_LAYER_FIGURE", "TABLE", "InvarianceTracker", "plot_tracking"]
