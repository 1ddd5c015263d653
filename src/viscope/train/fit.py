"""``fit``: train a model into a run folder, resumably, with Lightning.

``fit`` reads as its steps: resolve the data, make the model, decide what the run folder
holds (skip a finished run, resume an interrupted one), build the Lightning module and
trainer, train, and write the result. The trainer's parts live in
:mod:`viscope.train.trainer`, the module in :mod:`viscope.train.module`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import Dataset

from viscope import models
from viscope.errors import ViscopeError
from viscope.io import atomic_write, atomic_write_json, environment
from viscope.models import spec_of, unwrap
from viscope.models.checkpoint import extract_state_dict, load_weights, read_checkpoint
from viscope.train.augment import AugmentArg, BatchAugment, describe_family, resolve_family
from viscope.train.data import DatasetArg, class_names, make_loader, resolve_splits, split_record
from viscope.train.evaluate import evaluate
from viscope.train.module import Classifier, check_hyperparameters
from viscope.train.run import (
    BEST,
    CHECKPOINTS,
    METRICS,
    RECORD,
    TrainResult,
    history_from_metrics,
    merge_metrics,
    plain,
    prepare_folder,
    read_record,
    state_sha256,
)
from viscope.train.trainer import (
    HARDWARE_ARGS,
    TrainerParts,
    as_list,
    canonical_precision,
    check_accelerator,
    is_plain,
    make_trainer,
    quiet,
    remove_checkpoints,
    select_best,
)


def fit(
    model: nn.Module | str,
    dataset: DatasetArg = "shapes",
    *,
    out: str | os.PathLike[str],
    augment: AugmentArg = None,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    schedule: str = "cosine",
    image_size: int = 32,
    n: int | None = None,
    seed: int = 0,
    data_seed: int | None = None,
    accelerator: str = "cpu",
    devices: int | str | list[int] = 1,
    precision: str | int = "32-true",
    num_workers: int = 0,
    progress: bool = True,
    max_steps: int = -1,
    augment_p: float = 1.0,
    early_stop_patience: int | None = None,
    overwrite: bool = False,
    keep_checkpoints: bool = False,
    model_kwargs: Mapping[str, Any] | None = None,
    **trainer_kwargs: Any,
) -> TrainResult:
    """Train a classifier on a dataset's train split, select it on val, report test.

    Every epoch trains on the train split (augmented on the batch, see
    :class:`~viscope.train.module.Classifier`) and measures ``val_loss`` / ``val_acc``
    on the val split. The epoch with the best ``val_acc`` is kept (Lightning's
    ``ModelCheckpoint``; ties keep the earlier epoch) and written to ``out/best.pt``; the
    test split is used once, at the end, to report that model's accuracy
    (:func:`~viscope.train.evaluate.evaluate`). The test data never reach the trainer.

    Run folder and resume: ``out/train.json`` records the resolved configuration (model,
    dataset, split sizes and SHA-256 of the split indices, augmentation, optimisation,
    seeds) and, when finished, the results. Calling ``fit`` again with the same ``out``:

    - finished with the same configuration: nothing is trained; the stored result is
      returned (``skipped=True``) and the model given is loaded with ``best.pt``;
    - interrupted with the same configuration: training resumes from Lightning's
      ``out/checkpoints/last.ckpt`` (the last finished epoch), and, since every epoch is
      reseeded from ``(seed, epoch)``, ends as the uninterrupted run would (on CPU; on
      GPU up to non-deterministic kernels unless ``deterministic=True`` is passed);
    - another configuration: :class:`ViscopeError` listing the differences, unless
      ``overwrite=True``, which deletes the run's files and trains again.

    Hardware settings (``accelerator``, ``devices``, ``num_workers``, ``progress``,
    :data:`HARDWARE_ARGS`) are not part of the compared configuration. Neither are the
    model's initial weights: their SHA-256 is recorded (``init_sha256``) but a model
    initialised differently under the same name and arguments counts as the same run.

    Args:
        model: a model from :func:`viscope.models.create` whose classifier has one output
            per class, or a model name/checkpoint path to create (after seeding) with
            ``num_classes`` from the dataset and ``model_kwargs``.
        dataset: a built-in name, a folder or CSV file (split with
            ``viscope.data.create(..., split=..., seed=data_seed)``), or a dict
            ``{"train": ds, "val": ds, "test": ds}`` (``test`` optional).
        out: the run folder.
        augment: ``None``, a family name (default range) or a
            :class:`~viscope.transforms.Family` applied to training batches.
        epochs: maximum number of epochs.
        batch_size: training batch size (per device); the last incomplete batch is
            dropped when the train split holds more than one batch.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (not on biases, norms, tokens).
        schedule: ``"cosine"`` (per step, to 0) or ``"constant"``.
        image_size: image side for named/path datasets.
        n: items for named/path datasets (``None``: the dataset's default).
        seed: seed of initialisation (for model names), data order, augmentation and
            every random op in training.
        data_seed: seed of the dataset's generation and split (``None``: ``seed``).
        accelerator: Lightning accelerator (``"cpu"``, ``"gpu"``, ``"auto"``, ...).
        devices: Lightning devices (``2`` with ``strategy="ddp"`` for two GPUs).
        precision: Lightning precision (``"32-true"``, ``"bf16-mixed"``, ``"16-mixed"``).
        num_workers: data-loader workers (0 suits the in-memory built-in datasets).
        progress: show Lightning's progress bar (its model summary and info messages stay
            off; pass ``enable_model_summary=True`` for the summary).
        max_steps: stop after this many optimizer steps (``-1``: no limit).
        augment_p: probability that a training image is augmented (``1.0``: all).
        early_stop_patience: stop when ``val_loss`` has not improved for this many
            epochs (``None``: never).
        overwrite: delete an existing run in ``out`` (of any configuration) and retrain.
        keep_checkpoints: keep ``out/checkpoints`` (Lightning checkpoints with optimizer
            state) after a finished run; by default only ``best.pt`` stays.
        model_kwargs: keyword arguments for :func:`viscope.models.create` when ``model``
            is a name (e.g. ``{"img_size": 32}``).
        **trainer_kwargs: passed to ``lightning.pytorch.Trainer`` (``strategy``,
            ``gradient_clip_val``, ``accumulate_grad_batches``, ``deterministic``,
            ``limit_train_batches``, ``callbacks`` (added to fit's own), ``logger`` (added
            to the CSV logger), ...).

    Returns:
        The :class:`~viscope.train.run.TrainResult`; ``model`` then holds the best weights,
        in eval mode.

    Raises:
        ViscopeError: bad arguments, a dataset or model error, a model whose classifier
            does not match the classes, a run folder holding another configuration,
            ``accelerator="gpu"`` without a GPU, or trainer settings Lightning rejects.

    Example:
        >>> import tempfile
        >>> result = fit("test_vit", "shapes", out=tempfile.mkdtemp(), epochs=1, n=60,
        ...              model_kwargs={"img_size": 32}, progress=False)  # doctest: +SKIP
        >>> 0.0 <= result.test_acc <= 1.0  # doctest: +SKIP
        True
    """
    started = time.perf_counter()
    extra_callbacks = as_list(trainer_kwargs.pop("callbacks", None))
    extra_loggers = [
        lg for lg in as_list(trainer_kwargs.pop("logger", None)) if isinstance(lg, Logger)
    ]
    check_accelerator(accelerator)
    _check_int("epochs", epochs, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("max_steps", max_steps, -1)
    if early_stop_patience is not None:
        _check_int("early_stop_patience", early_stop_patience, 1)
    check_hyperparameters(lr, weight_decay, schedule)
    family = resolve_family(augment)
    if family is not None:
        BatchAugment(family, augment_p)  # validates augment_p before any work
    data_seed = seed if data_seed is None else data_seed
    splits, classes = _resolve_data(dataset, image_size, n, data_seed)
    pl.seed_everything(seed, workers=True, verbose=False)
    model = _resolve_model(model, len(classes), model_kwargs)
    named = not isinstance(dataset, Mapping)  # a name or path: its size/n/seed make the data
    config = plain(
        {
            "model": _model_record(model),
            "dataset": _dataset_label(dataset),
            "classes": classes,
            "splits": {s: split_record(part, image_shape=not named) for s, part in splits.items()},
            "image_size": image_size if named else None,
            "n": n if named else None,
            "data_seed": data_seed if named else None,
            "seed": seed,
            "augment": describe_family(family),
            "augment_p": float(augment_p) if family is not None else None,
            "epochs": epochs,
            "max_steps": max_steps,
            "batch_size": batch_size,
            "lr": float(lr),
            "weight_decay": float(weight_decay),
            "schedule": schedule,
            "optimizer": "AdamW (timm parameter groups: no decay on biases, norms, tokens)",
            "precision": canonical_precision(precision),
            "early_stop_patience": early_stop_patience,
            "trainer": {
                k: v for k, v in trainer_kwargs.items() if k not in HARDWARE_ARGS and is_plain(v)
            },
        }
    )
    run = _Run(Path(out), config, splits, classes, model, started)
    skipped = _resume_or_skip(run, overwrite)
    if skipped is not None:
        return skipped
    _start_record(run, hardware={"accelerator": accelerator, "devices": devices,
                                 "num_workers": num_workers, **trainer_kwargs})
    module = _build_module(
        run, lr=lr, weight_decay=weight_decay, schedule=schedule, augment=family,
        augment_p=augment_p, seed=seed,
    )
    options: dict[str, Any] = {
        "default_root_dir": run.out,
        "max_epochs": epochs,
        "max_steps": max_steps,
        "accelerator": accelerator,
        "devices": devices,
        "precision": precision,
        "enable_progress_bar": progress,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": min(50, max(1, len(splits["train"]) // batch_size)),  # type: ignore[arg-type]
        **trainer_kwargs,
    }
    with quiet():
        parts = make_trainer(
            run.out, monitor="val_acc", mode="max", early_stop_patience=early_stop_patience,
            extra_callbacks=extra_callbacks, extra_loggers=extra_loggers, options=options,
        )
        best_val, best_epoch = _train(run, module, parts, batch_size, num_workers)
    return _finish(run, parts, best_val, best_epoch, batch_size=batch_size,
                   num_workers=num_workers, keep_checkpoints=keep_checkpoints)


# -- the steps ----------------------------------------------------------------------------


@dataclass
class _Run:
    """What the steps of one ``fit`` call share: the folder, the data, the model, the
    configuration compared on resume and the record written to ``train.json``."""

    out: Path
    config: dict[str, Any]
    splits: dict[str, Dataset]
    classes: list[str]
    model: nn.Module
    started: float
    resume: Path | None = None
    record: dict[str, Any] = field(default_factory=dict)
    previous: pd.DataFrame | None = None  # metrics.csv of the sessions before a resume


def _resolve_data(
    dataset: DatasetArg, image_size: int, n: int | None, data_seed: int
) -> tuple[dict[str, Dataset], list[str]]:
    """The train/val(/test) splits and their shared class names."""
    splits = resolve_splits(dataset, image_size=image_size, n=n, seed=data_seed)
    return splits, class_names(splits)


def _resume_or_skip(run: _Run, overwrite: bool) -> TrainResult | None:
    """The stored result of a finished run (the model gets its best weights), else
    ``None`` with ``run.resume`` set to the checkpoint to resume from, if any."""
    state = prepare_folder(run.out, run.config, overwrite)
    if isinstance(state, dict):
        _load_best(run.model, run.out / BEST)
        run.model.eval()
        return TrainResult.from_record(run.out, state, skipped=True, model=run.model)
    run.resume = state
    return None


def _start_record(run: _Run, hardware: Mapping[str, Any]) -> None:
    """Write ``train.json`` with status ``running`` (rank 0), keeping what a resumed run
    needs: the metrics of its earlier sessions."""
    run.record = {
        "status": "running",
        "config": run.config,
        "hardware": plain(
            {
                k: v
                for k, v in hardware.items()
                if (k in HARDWARE_ARGS or k == "num_workers") and is_plain(v)
            }
        ),
        "init_sha256": state_sha256(run.model),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "resumed_from": str(run.resume) if run.resume else None,
    }
    if getattr(rank_zero_only, "rank", 0) == 0:
        atomic_write_json(run.out / RECORD, run.record)
    if run.resume and (run.out / METRICS).is_file():
        run.previous = pd.read_csv(run.out / METRICS)


def _build_module(run: _Run, **settings: Any) -> Classifier:
    """The Lightning module that trains ``run.model``."""
    return Classifier(run.model, len(run.classes), **settings)


def _train(
    run: _Run, module: Classifier, parts: TrainerParts, batch_size: int, num_workers: int
) -> tuple[float, int]:
    """Fit on the train split, validating every epoch; load the best epoch into the
    module and return its (validation score, epoch)."""
    trainer = parts.trainer
    pin = trainer.strategy.root_device.type == "cuda"
    train_size = len(run.splits["train"])  # type: ignore[arg-type]
    train_loader = make_loader(
        run.splits["train"],
        batch_size,
        shuffle_seed=int(run.config["seed"]),
        drop_last=train_size > batch_size,
        num_workers=num_workers,
        pin_memory=pin,
    )
    val_loader = make_loader(run.splits["val"], batch_size, num_workers=num_workers, pin_memory=pin)
    trainer.fit(module, train_loader, val_loader, ckpt_path=run.resume or None)
    return select_best(parts.best, module)


def _finish(
    run: _Run,
    parts: TrainerParts,
    best_val: float,
    best_epoch: int,
    *,
    batch_size: int,
    num_workers: int,
    keep_checkpoints: bool,
) -> TrainResult:
    """Rank 0: merge the metrics, report test accuracy once, write ``best.pt`` and the
    finished record; every rank: return the result with the best weights, in eval mode."""
    trainer, out, model = parts.trainer, run.out, run.model
    if trainer.is_global_zero:
        metrics = merge_metrics(run.previous, out / METRICS)
        if run.previous is not None and not metrics.empty:
            atomic_write(out / METRICS, lambda p: metrics.to_csv(p, index=False))
        history = history_from_metrics(metrics)
        test_acc = None
        if "test" in run.splits:
            test_acc = evaluate(
                model,
                run.splits["test"],
                batch_size=max(batch_size, 256),
                device=trainer.strategy.root_device,
                num_workers=num_workers,
            )
        models.save_checkpoint(
            model,
            out / BEST,
            epoch=best_epoch,
            val_acc=best_val,
            test_acc=test_acc,
            classes=run.classes,
            augment=run.config["augment"],
            seed=run.config["seed"],
        )
        run.record.update(
            status="finished",
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            epochs_run=int(history["epoch"].max()) + 1 if len(history) else trainer.current_epoch,
            steps=trainer.global_step,
            best_epoch=best_epoch,
            best_val_acc=best_val,
            test_acc=test_acc,
            seconds=time.perf_counter() - run.started,
            images_per_second=parts.meter.images_per_second(),
            throughput_note="training images/s, first epoch excluded when several were run "
            "in this session; validation and checkpoint writing not counted",
            history=plain(history.to_dict("records")),
            environment=environment(),
        )
        atomic_write_json(out / RECORD, run.record)
        if not keep_checkpoints:
            remove_checkpoints(out / CHECKPOINTS)
    trainer.strategy.barrier()
    final = read_record(out)
    if not trainer.is_global_zero:
        _load_best(model, out / BEST)
    model.eval()
    return TrainResult.from_record(out, final or run.record, skipped=False, model=model)


# -- helpers ------------------------------------------------------------------------------


def _model_record(model: nn.Module) -> dict[str, Any]:
    spec = spec_of(model)
    return {"name": spec.name, "kwargs": spec.kwargs}  # type: ignore[union-attr]


def _resolve_model(
    model: nn.Module | str | os.PathLike[str],
    num_classes: int,
    model_kwargs: Mapping[str, Any] | None,
) -> nn.Module:
    if isinstance(model, str | os.PathLike):
        model = models.create(model, num_classes=num_classes, **dict(model_kwargs or {}))
    elif model_kwargs:
        raise ViscopeError(
            f"Expected model_kwargs only with a model name; got a {type(model).__name__} and "
            f"model_kwargs={dict(model_kwargs)}. Pass them to viscope.models.create instead."
        )
    if not isinstance(model, nn.Module) or spec_of(model) is None:
        raise ViscopeError(
            f"Expected a model made by viscope.models.create (so that best.pt can rebuild "
            f"it) or a model name; got {type(model).__name__}. Use "
            "viscope.models.create(name, num_classes=...)."
        )
    head = getattr(unwrap(model), "num_classes", None)
    if isinstance(head, int) and head != num_classes:
        raise ViscopeError(
            f"Expected a classifier with {num_classes} outputs (one per class of the "
            f"dataset); got a model with num_classes={head}. Create it with "
            f"num_classes={num_classes}."
        )
    return model


def _load_best(model: nn.Module, path: Path) -> None:
    load_weights(unwrap(model), extract_state_dict(read_checkpoint(path)), repr(str(path)))


def _dataset_label(dataset: DatasetArg) -> str:
    if isinstance(dataset, Mapping):
        kinds = sorted({type(d).__name__ for d in dataset.values()})
        return "dict of " + ", ".join(kinds)
    return os.fspath(dataset)


def _check_int(what: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ViscopeError(f"Expected {what} to be an int >= {minimum}; got {value!r}.")
