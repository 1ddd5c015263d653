"""``pretrain``: self-supervised pre-training of a backbone into a run folder, resumably.

The loop is Lightning's, with the pieces ``fit`` uses (timm's optimizer and schedule from
:mod:`viscope.train.optim`, the per-epoch data order of
:class:`~viscope.train.data.EpochShuffleSampler`, the per-epoch reseeding, the throughput
meter, the quiet trainer); the method (:mod:`viscope.train.ssl.methods`) makes the views
and the loss. Labels are read by the probe callback only (:mod:`viscope.train.ssl.probe`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor, nn

from viscope import models
from viscope.errors import ViscopeError
from viscope.io import atomic_write, atomic_write_json
from viscope.models.checkpoint import read_checkpoint
from viscope.train import steps
from viscope.train.augment import mix_seed
from viscope.train.callbacks import ThroughputMeter
from viscope.train.data import DatasetArg, make_loader, split_record
from viscope.train.optim import OptimSettings, make_optimizer, make_scheduler
from viscope.train.run import RunFiles, plain, prepare_folder
from viscope.train.ssl.methods import SSLMethod, create_method
from viscope.train.ssl.probe import ProbeCallback
from viscope.train.trainer import canonical_precision, check_accelerator, quiet
from viscope.transforms import Family

RECORD = "pretrain.json"
HISTORY = "history.csv"
LAST = "last.ckpt"
BACKBONE = "backbone.pt"
FILES = RunFiles(RECORD, BACKBONE, LAST, (RECORD, HISTORY, LAST, BACKBONE), "pre-training")


@dataclass
class PretrainResult:
    """What :func:`pretrain` produced.

    Attributes:
        out: the run folder.
        backbone: ``backbone.pt``, a viscope checkpoint of the pre-trained model with its
            own (untrained) head: ``viscope.models.create(backbone)`` rebuilds it.
        history: one row per epoch count (0: before training): ``epoch, train_loss,
            knn_acc, probe_acc``.
        knn_acc: k-NN accuracy after the last epoch.
        probe_acc: linear-probe accuracy after the last epoch.
        seconds: wall time of the call that finished the run.
        images_per_second: training throughput (first epoch excluded when there were
            several), ``None`` when skipped.
        skipped: the run was already finished; nothing was trained.
        model: the pre-trained model.
    """

    out: Path
    backbone: Path
    history: pd.DataFrame
    knn_acc: float
    probe_acc: float
    seconds: float
    images_per_second: float | None = None
    skipped: bool = False
    model: nn.Module | None = field(default=None, repr=False)


class PretrainModule(pl.LightningModule):
    """The Lightning module of :func:`pretrain`: views, the method's loss, momentum.

    Args:
        method: the method (it holds the model).
        optim: optimizer and schedule settings.
        seed: seed of the views (a CPU generator reseeded every epoch from
            ``(seed, epoch)``) and of torch's global generator (MAE's masks, dropout).
    """

    def __init__(self, method: SSLMethod, optim: OptimSettings, seed: int = 0) -> None:
        super().__init__()
        self.method, self.optim, self.seed = method, optim, int(seed)
        self.generator = torch.Generator(device="cpu")
        self.history: list[dict[str, float]] = []
        self._loss_sum: Tensor | None = None
        self._batches = 0
        self._total = 1

    def on_train_epoch_start(self) -> None:
        epoch = self.current_epoch
        torch.manual_seed(mix_seed(self.seed, epoch, 0))
        self.generator.manual_seed(mix_seed(self.seed, epoch, 1))
        self._loss_sum, self._batches = None, 0

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        images = batch[0]  # batch[1], the labels, is never read
        images = images.to(next(self.method.model.parameters()).dtype)
        loss = self.method.loss(self.method.views(images, self.generator))
        detached = loss.detach()
        self._loss_sum = detached if self._loss_sum is None else self._loss_sum + detached
        self._batches += 1
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return loss

    def on_train_start(self) -> None:
        # counted once: Lightning's estimate walks the loader's length every time it is read
        self._total = max(1, int(self.trainer.estimated_stepping_batches))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.method.on_step_end(self.global_step - 1, self._total)

    def epoch_loss(self) -> float:
        """The mean training loss of the epoch (one sync, at its end)."""
        if self._loss_sum is None:
            return float("nan")
        return float(self._loss_sum) / self._batches

    def configure_optimizers(self) -> Any:
        optimizer = make_optimizer(self.method.model, settings=self.optim,
                                   extra=self.method.heads())
        total = max(1, int(self.trainer.estimated_stepping_batches))
        batches = self.trainer.num_training_batches
        per_epoch = max(1, int(batches)) if math.isfinite(batches) else total
        scheduler = make_scheduler(optimizer, self.optim, total, per_epoch)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        scheduler.step_update(num_updates=self.global_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pretrain_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint.get("pretrain_history", []))


def pretrain(
    model: nn.Module | str,
    dataset: DatasetArg = "shapes",
    *,
    out: str | os.PathLike[str],
    method: str = "simclr",
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    families: Sequence[str | Family] | None = None,
    image_size: int = 32,
    n: int | None = None,
    seed: int = 0,
    probe_split: str = "val",
    knn_k: int = 20,
    accelerator: str = "cpu",
    precision: str | int = "32-true",
    progress: bool = True,
    overwrite: bool = False,
    model_kwargs: Mapping[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
    **method_kwargs: Any,
) -> PretrainResult:
    """Pre-train ``model`` without labels; measure k-NN and linear-probe accuracy each epoch.

    Every epoch draws the views of each batch with the method's transformation families
    and minimises the method's loss (labels are never used for it). Before training and
    after every epoch, the k-NN (``knn_k`` neighbours, cosine, train split as memory
    bank) and linear-probe accuracy of the pooled features on ``probe_split`` are
    measured (:class:`~viscope.train.ssl.probe.ProbeCallback`).

    Run folder: ``pretrain.json`` (configuration, status, results), ``history.csv`` (one
    row per epoch count, written as the run goes), ``last.ckpt`` (Lightning's, after
    every epoch: model, heads, teachers, optimizer, history) and, when finished,
    ``backbone.pt``: the model with its own head as a viscope checkpoint, which
    ``viscope.models.create("out/backbone.pt", num_classes=K)`` and
    ``viscope train --init`` read. Calling again with the same ``out``: a finished run
    with the same configuration is returned as stored (``skipped``, the model loaded
    with ``backbone.pt``); an interrupted one resumes from ``last.ckpt`` and, since
    every epoch is reseeded from ``(seed, epoch)``, ends as the uninterrupted run would
    (on CPU); another configuration is refused unless ``overwrite``.

    Args:
        model: a model from :func:`viscope.models.create` or a name to create (after
            seeding) with one output per class and ``model_kwargs``.
        dataset: a built-in name, folder or CSV, or ``{"train", "val"[, "test"]}``.
        out: the run folder.
        method: a key of :data:`~viscope.train.ssl.methods.SSL_METHODS`.
        epochs: epochs.
        batch_size: batch size (the last incomplete batch is dropped).
        lr: peak learning rate (AdamW, cosine per step).
        weight_decay: decoupled weight decay.
        families: the view families (``None``: the method's defaults).
        image_size: image side of named datasets.
        n: items of named datasets.
        seed: seed of the model's initialisation, data, order, views and masks.
        probe_split: the labelled split the accuracies are measured on.
        knn_k: k-NN neighbours.
        accelerator: Lightning accelerator.
        precision: Lightning precision.
        progress: show Lightning's progress bar.
        overwrite: delete a run of another configuration in ``out``.
        model_kwargs: arguments of :func:`viscope.models.create` for a name.
        callbacks: more Lightning callbacks.
        **method_kwargs: the method's own settings (``temperature``, ``momentum``, ...).

    Returns:
        The :class:`PretrainResult`.

    Raises:
        ViscopeError: bad arguments, an unknown method or split, a model the method
            refuses, or a run folder holding another configuration.
    """
    started = time.perf_counter()
    check_accelerator(accelerator)
    steps.check_int("epochs", epochs, 1)
    steps.check_int("batch_size", batch_size, 1)
    splits, classes = steps.resolve_data(dataset, image_size, n, seed, False)
    if probe_split not in splits:
        raise ViscopeError(
            f"Expected probe_split among {sorted(splits)}; got {probe_split!r}. Use 'val'."
        )
    pl.seed_everything(seed, workers=True, verbose=False)
    model = steps.resolve_model(model, len(classes), model_kwargs)
    ssl = create_method(method, model, families, **method_kwargs)
    settings = OptimSettings(lr=lr, weight_decay=weight_decay)
    module = PretrainModule(ssl, settings, seed)
    named = not isinstance(dataset, Mapping)
    config = plain({
        "model": steps.model_record(model, model_kwargs),
        "dataset": steps.dataset_label(dataset),
        "classes": classes,
        "splits": {s: split_record(part, image_shape=not named) for s, part in splits.items()},
        "image_size": image_size if named else None, "n": n if named else None,
        "seed": seed, "method": ssl.describe(), "epochs": epochs, "batch_size": batch_size,
        **settings.describe(), "probe_split": probe_split, "knn_k": knn_k,
        "precision": canonical_precision(precision),
    })
    out = Path(out)
    resume = prepare_folder(out, config, overwrite, FILES)
    if isinstance(resume, dict):
        return _skipped(out, resume, model, started)
    out.mkdir(parents=True, exist_ok=True)
    record = {"status": "running", "config": config,
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "resumed_from": str(resume) if resume else None,
              "hardware": {"accelerator": accelerator}}
    atomic_write_json(out / RECORD, record)

    probe = ProbeCallback(splits["train"], splits[probe_split], k=knn_k,
                          on_row=lambda m: _write_history(out, m.history))
    meter = ThroughputMeter()
    # the latest epoch, always to out/last.ckpt (Lightning's save_last needs a top-k save)
    last = ModelCheckpoint(dirpath=out, filename=Path(LAST).stem, save_top_k=1,
                           enable_version_counter=False, save_on_train_epoch_end=True)
    train_size = len(splits["train"])  # type: ignore[arg-type]
    loader = make_loader(splits["train"], batch_size, shuffle_seed=seed,
                         drop_last=train_size > batch_size,
                         pin_memory=str(accelerator) in ("gpu", "cuda"))
    with quiet():
        trainer = pl.Trainer(
            max_epochs=epochs, accelerator=accelerator, devices=1, precision=precision,
            enable_progress_bar=progress, enable_model_summary=False, logger=False,
            callbacks=[probe, meter, last, *callbacks], default_root_dir=out,
        )
        trainer.fit(module, loader, ckpt_path=resume)
    model.cpu().eval()
    final = module.history[-1]
    models.save_checkpoint(model, out / BACKBONE, method=ssl.name, epochs=epochs,
                           knn_acc=final["knn_acc"], probe_acc=final["probe_acc"])
    seconds = time.perf_counter() - started
    record.update(status="finished", seconds=seconds, history=plain(module.history),
                  knn_acc=final["knn_acc"], probe_acc=final["probe_acc"],
                  images_per_second=meter.images_per_second(),
                  finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    atomic_write_json(out / RECORD, record)
    return PretrainResult(out, out / BACKBONE, _frame(module.history), final["knn_acc"],
                          final["probe_acc"], seconds, meter.images_per_second(), False, model)


def _skipped(out: Path, record: dict[str, Any], model: nn.Module, started: float
             ) -> PretrainResult:
    state = read_checkpoint(out / BACKBONE)["state_dict"]
    models.unwrap(model).load_state_dict(state)
    model.eval()
    return PretrainResult(out, out / BACKBONE, _frame(record["history"]),
                          float(record["knn_acc"]), float(record["probe_acc"]),
                          time.perf_counter() - started, None, True, model)


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["epoch", "train_loss", "knn_acc", "probe_acc"])
    return frame.astype({"epoch": "int64", "train_loss": "float64", "knn_acc": "float64",
                         "probe_acc": "float64"})


def _write_history(out: Path, rows: list[dict[str, Any]]) -> None:
    text = _frame(rows).to_csv(index=False)
    atomic_write(out / HISTORY, lambda p: Path(p).write_text(text))
