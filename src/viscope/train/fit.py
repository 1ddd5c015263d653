"""``fit``: train a classifier into a run folder, resumably, with Lightning."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from torch import nn

from viscope import models
from viscope.errors import ViscopeError
from viscope.io import atomic_write, atomic_write_json, environment
from viscope.models import spec_of, unwrap
from viscope.models.checkpoint import extract_state_dict, load_weights, read_checkpoint
from viscope.train.augment import AugmentArg, BatchAugment, describe_family, resolve_family
from viscope.train.callbacks import ThroughputMeter, ValidateAtMaxSteps
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

#: Trainer arguments that change where or how fast a run goes, not what it computes;
#: they are recorded but not compared when deciding whether a run folder matches.
HARDWARE_ARGS = frozenset(
    {
        "accelerator",
        "devices",
        "num_nodes",
        "strategy",
        "enable_progress_bar",
        "enable_model_summary",
        "log_every_n_steps",
        "default_root_dir",
        "benchmark",
        "num_sanity_val_steps",
        "profiler",
        "barebones",
        "sync_batchnorm",
    }
)
#: Lightning's notes that fit's own set-up makes expected (resuming into a run folder,
#: in-memory datasets without workers, small epochs); silenced during fit.
_EXPECTED_WARNINGS = (
    r".*exists and is not empty.*",
    r".*does not have many workers.*",
    r".*is smaller than the logging interval.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
)
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning")


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
    extra_callbacks = _as_list(trainer_kwargs.pop("callbacks", None))
    extra_loggers = [
        lg for lg in _as_list(trainer_kwargs.pop("logger", None)) if isinstance(lg, Logger)
    ]
    _check_accelerator(accelerator)
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
    splits = resolve_splits(dataset, image_size=image_size, n=n, seed=data_seed)
    classes = class_names(splits)
    pl.seed_everything(seed, workers=True, verbose=False)
    model = _resolve_model(model, len(classes), model_kwargs)
    spec = spec_of(model)
    config = plain(
        {
            "model": {"name": spec.name, "kwargs": spec.kwargs},  # type: ignore[union-attr]
            "dataset": _dataset_label(dataset),
            "classes": classes,
            "splits": {
                s: split_record(part, image_shape=isinstance(dataset, Mapping))
                for s, part in splits.items()
            },
            "image_size": None if isinstance(dataset, Mapping) else image_size,
            "n": None if isinstance(dataset, Mapping) else n,
            "data_seed": None if isinstance(dataset, Mapping) else data_seed,
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
                k: v for k, v in trainer_kwargs.items() if k not in HARDWARE_ARGS and _is_plain(v)
            },
        }
    )
    out = Path(out)
    resume = prepare_folder(out, config, overwrite)
    if isinstance(resume, dict):
        _load_best(model, out / BEST)
        model.eval()
        return TrainResult.from_record(out, resume, skipped=True, model=model)
    is_zero = getattr(rank_zero_only, "rank", 0) == 0
    record: dict[str, Any] = {
        "status": "running",
        "config": config,
        "hardware": plain(
            {
                "accelerator": accelerator,
                "devices": devices,
                "num_workers": num_workers,
                **{k: v for k, v in trainer_kwargs.items() if k in HARDWARE_ARGS and _is_plain(v)},
            }
        ),
        "init_sha256": state_sha256(model),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "resumed_from": str(resume) if resume else None,
    }
    if is_zero:
        atomic_write_json(out / RECORD, record)
    previous = pd.read_csv(out / METRICS) if resume and (out / METRICS).is_file() else None

    module = Classifier(
        model,
        len(classes),
        lr=lr,
        weight_decay=weight_decay,
        schedule=schedule,
        augment=family,
        augment_p=augment_p,
        seed=seed,
    )
    best = ModelCheckpoint(
        dirpath=out / CHECKPOINTS,
        filename="best-{epoch}",
        monitor="val_acc",
        mode="max",
        save_top_k=1,
        save_last=True,
    )
    meter = ThroughputMeter()
    callbacks: list[Callback] = [best, meter, ValidateAtMaxSteps()]
    if early_stop_patience is not None:
        callbacks.append(EarlyStopping("val_loss", patience=early_stop_patience, mode="min"))
    callbacks += extra_callbacks
    loggers: list[Logger] = [CSVLogger(save_dir=out, name="", version="")]
    if _tensorboard_available():
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=out, name="tensorboard", version=""))
    loggers += extra_loggers

    train_size = len(splits["train"])  # type: ignore[arg-type]
    batches = max(1, train_size // batch_size)
    options: dict[str, Any] = {
        "default_root_dir": out,
        "max_epochs": epochs,
        "max_steps": max_steps,
        "accelerator": accelerator,
        "devices": devices,
        "precision": precision,
        "enable_progress_bar": progress,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": min(50, batches),
    }
    options.update(trainer_kwargs)
    with _quiet():
        trainer = _make_trainer(callbacks, loggers, options)
        pin = trainer.strategy.root_device.type == "cuda"
        train_loader = make_loader(
            splits["train"],
            batch_size,
            shuffle_seed=seed,
            drop_last=train_size > batch_size,
            num_workers=num_workers,
            pin_memory=pin,
        )
        val_loader = make_loader(splits["val"], batch_size, num_workers=num_workers, pin_memory=pin)
        trainer.fit(module, train_loader, val_loader, ckpt_path=resume or None)
        best_val, best_epoch = _select_best(best, module)

    if trainer.is_global_zero:
        metrics = merge_metrics(previous, out / METRICS)
        if previous is not None and not metrics.empty:
            atomic_write(out / METRICS, lambda p: metrics.to_csv(p, index=False))
        history = history_from_metrics(metrics)
        test_acc = None
        if "test" in splits:
            test_acc = evaluate(
                model,
                splits["test"],
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
            classes=classes,
            augment=config["augment"],
            seed=seed,
        )
        seconds = time.perf_counter() - started
        record.update(
            status="finished",
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            epochs_run=int(history["epoch"].max()) + 1 if len(history) else trainer.current_epoch,
            steps=trainer.global_step,
            best_epoch=best_epoch,
            best_val_acc=best_val,
            test_acc=test_acc,
            seconds=seconds,
            images_per_second=meter.images_per_second(),
            throughput_note="training images/s, first epoch excluded when several were run "
            "in this session; validation and checkpoint writing not counted",
            history=plain(history.to_dict("records")),
            environment=environment(),
        )
        atomic_write_json(out / RECORD, record)
        if not keep_checkpoints:
            _remove_checkpoints(out / CHECKPOINTS)
    trainer.strategy.barrier()
    final = read_record(out)
    if not trainer.is_global_zero:
        _load_best(model, out / BEST)
    model.eval()
    return TrainResult.from_record(out, final or record, skipped=False, model=model)


# -- helpers ------------------------------------------------------------------------------


def _check_accelerator(accelerator: Any) -> None:
    """Refuse a CUDA accelerator where there is none, before any work or file is made.

    Lightning would otherwise fail later, with a ``MisconfigurationException`` traceback.
    """
    if str(accelerator).lower() in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ViscopeError(
            f"accelerator={accelerator!r} but no GPU is available here; use "
            "accelerator='cpu' (--accelerator cpu)."
        )


def _make_trainer(
    callbacks: list[Callback], loggers: list[Logger], options: Mapping[str, Any]
) -> pl.Trainer:
    """``pl.Trainer``, with the settings Lightning rejects reported as a ViscopeError.

    Raises:
        ViscopeError: Lightning refused a trainer argument (``devices=0``, an unknown
            ``strategy`` or ``accelerator``, ...); the message is Lightning's, on one line.
    """
    try:
        return pl.Trainer(callbacks=callbacks, logger=loggers, **options)
    except ViscopeError:
        raise
    except (MisconfigurationException, ValueError) as err:
        message = " ".join(str(err).split())
        raise ViscopeError(
            f"Expected trainer settings that Lightning accepts; it refused them: {message} "
            "Change the setting it names (accelerator, devices, strategy, precision, ...)."
        ) from None


def _select_best(best: ModelCheckpoint, module: Classifier) -> tuple[float, int]:
    """Load the best validation epoch's weights into ``module``; return (val_acc, epoch).

    Raises:
        ViscopeError: validation never ran, so there is no model selected on it.
    """
    path = best.best_model_path
    if not path or not Path(path).is_file() or best.best_model_score is None:
        raise ViscopeError(
            "Expected at least one validation epoch to select the model on; got none (was "
            "limit_val_batches=0 or check_val_every_n_epoch larger than epochs passed?). "
            "Let fit validate every epoch."
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(checkpoint["state_dict"])
    return float(best.best_model_score), int(checkpoint["epoch"])


#: Lightning's short precision names and the names they stand for (``"32"`` is ``"32-true"``).
_PRECISION_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}


def canonical_precision(precision: str | int) -> str:
    """Lightning's full name of a precision, so that aliases record the same run.

    Example:
        >>> canonical_precision(32), canonical_precision("bf16"), canonical_precision("16-true")
        ('32-true', 'bf16-mixed', '16-true')
    """
    name = str(precision)
    return _PRECISION_ALIASES.get(name, name)


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


def _is_plain(value: Any) -> bool:
    if isinstance(value, str | int | float | bool | type(None)):
        return True
    if isinstance(value, list | tuple):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _as_list(value: Any) -> list[Any]:
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _tensorboard_available() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))


def _remove_checkpoints(folder: Path) -> None:
    if folder.is_dir():
        for path in folder.glob("*.ckpt"):
            path.unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Lightning's expected warnings and its info messages (hardware found, tips,
    "max_epochs reached"); its warnings still show."""
    levels = {name: logging.getLogger(name).level for name in _LIGHTNING_LOGGERS}
    with warnings.catch_warnings():
        for message in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        try:
            for name in _LIGHTNING_LOGGERS:
                logging.getLogger(name).setLevel(logging.WARNING)
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
