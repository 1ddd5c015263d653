"""``fit``: train a model into a run folder, resumably, with Lightning.

``fit`` checks its arguments, records them, and takes its steps
(:mod:`viscope.train.steps`): resolve the data, make the model and its Lightning module,
decide what the run folder holds (skip a finished run, resume an interrupted one),
initialise, set up the objectives, build the trainer, train, and write the result. The
trainer's parts live in :mod:`viscope.train.trainer`, the module in
:mod:`viscope.train.module`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import Logger
from torch import nn

from viscope.train import steps
from viscope.train.augment import AugmentArg, BatchAugment, describe_family, resolve_family
from viscope.train.data import DatasetArg, split_record
from viscope.train.finetune import check_freeze, checkpoint_init, resolve_freeze
from viscope.train.initialisers import InitArg, describe_init, resolve_init
from viscope.train.module import TrainModule
from viscope.train.objectives import Objective, ObjectivesArg, is_default, resolve_objectives
from viscope.train.optim import OptimSettings
from viscope.train.run import TrainResult, plain
from viscope.train.trainer import (
    HARDWARE_ARGS,
    as_list,
    canonical_precision,
    check_accelerator,
    is_plain,
    make_trainer,
    quiet,
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
    optimizer: str = "adamw",
    momentum: float = 0.9,
    warmup_epochs: float = 0.0,
    warmup_steps: int = 0,
    warmup_lr: float = 0.0,
    min_lr: float = 0.0,
    decay_epochs: float | None = None,
    decay_rate: float = 0.1,
    label_smoothing: float = 0.0,
    objectives: ObjectivesArg = None,
    init: InitArg | os.PathLike[str] = None,
    freeze: str | None = None,
    monitor: str | None = None,
    image_size: int = 32,
    n: int | None = None,
    seed: int = 0,
    data_seed: int | None = None,
    skip_corrupt: bool = False,
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
    """Train a model on a dataset's train split, select it on val, report on test.

    Every epoch trains on the train split (augmented on the batch, see
    :class:`~viscope.train.module.TrainModule`) with the sum of the ``objectives``
    (cross-entropy by default) and validates on the val split: ``val_loss`` and each
    objective's metrics (``val_acc`` for cross-entropy). The epoch with the best
    ``monitor`` value is kept (Lightning's ``ModelCheckpoint``; ties keep the earlier
    epoch) and written to ``out/best.pt``, with the weights of the objectives' own modules
    (heads, decoders) under ``"objectives"``. The test split is used once, at the end, to
    report that model's accuracy (:func:`~viscope.train.evaluate.evaluate`) and, with
    objectives other than plain cross-entropy, their test losses and metrics
    (``test_metrics``). The test data never reach the trainer.

    Plug-in points (each a file of its own, not a branch here): an objective
    (:mod:`viscope.train.objectives`: a loss term that may add trained modules and
    validation metrics); an initialiser (``init``, :mod:`viscope.train.initialisers`:
    called on the model with the train split after seeding, before the initial weights
    are hashed); the optimizer and schedule (:class:`~viscope.train.optim.OptimSettings`,
    timm's).

    Run folder and resume: ``out/train.json`` records the resolved configuration (model,
    dataset, split sizes and SHA-256 of the split indices, augmentation, optimisation,
    objectives, initialiser, seeds) and, when finished, the results; ``out/config.yaml``
    holds every setting of the call under ``fit``'s (and ``viscope train --config``'s)
    names. Calling ``fit`` again with the same ``out``:

    - finished with the same configuration: nothing is trained; the stored result is
      returned (``skipped=True``) and the model given (and the objectives' modules) is
      loaded with ``best.pt``;
    - interrupted with the same configuration: training resumes from Lightning's
      ``out/checkpoints/last.ckpt`` (the last finished epoch), and, since every epoch is
      reseeded from ``(seed, epoch)``, ends as the uninterrupted run would (on CPU; on
      GPU up to non-deterministic kernels unless ``deterministic=True`` is passed);
    - another configuration: :class:`ViscopeError` listing the differences, unless
      ``overwrite=True``, which deletes the run's files and trains again.

    Hardware settings (``accelerator``, ``devices``, ``num_workers``, ``progress``,
    :data:`~viscope.train.trainer.HARDWARE_ARGS`) are not part of the compared
    configuration. Neither are the model's initial weights: their SHA-256 is recorded
    (``init_sha256``) but a model initialised differently under the same name and
    arguments counts as the same run (an initialiser given as ``init`` is compared).

    Args:
        model: a model from :func:`viscope.models.create` whose classifier has one output
            per class (or as many as the objectives need: one channel for ``"seg"``), or
            a model name/checkpoint path to create (after seeding) with that
            ``num_classes`` and ``model_kwargs`` (``"smp:unet"`` for segmentation).
        dataset: a built-in name, a folder or CSV file (split with
            ``viscope.data.create(..., split=..., seed=data_seed)``), or a dict
            ``{"train": ds, "val": ds, "test": ds}`` (``test`` optional).
        out: the run folder.
        augment: ``None``, a family name (default range) or a
            :class:`~viscope.transforms.Family` applied to training batches.
        epochs: maximum number of epochs.
        batch_size: training batch size (per device); the last incomplete batch is
            dropped when the train split holds more than one batch.
        lr: peak learning rate.
        weight_decay: decoupled weight decay (not on biases, norms, tokens).
        schedule: ``"cosine"`` (per step, to ``min_lr``), ``"step"`` or ``"constant"``.
        optimizer: a timm optimizer name (``"adamw"``, ``"sgd"`` (Nesterov),
            ``"momentum"``, ``"adam"``, ...).
        momentum: momentum of SGD-like optimizers.
        warmup_epochs: linear warmup from ``warmup_lr`` over this many epochs.
        warmup_steps: the warmup in optimizer steps instead.
        warmup_lr: the learning rate the warmup starts at.
        min_lr: the cosine schedule's final learning rate.
        decay_epochs: epochs between decays of the ``"step"`` schedule.
        decay_rate: the ``"step"`` schedule's factor.
        label_smoothing: label smoothing of the cross-entropy objective (training only).
        objectives: the loss terms (see
            :func:`~viscope.train.objectives.resolve_objectives`): ``None`` (cross-entropy),
            names (``["ce", "recon:0.5"]``), a ``{name: weight}`` dict or
            :class:`~viscope.train.objectives.Objective` objects.
        init: an initialiser ``init(model, train_split)``, a registered name, or the path
            of a pre-trained checkpoint (viscope, timm, Lightning ``.ckpt``) whose
            backbone weights are loaded, the classifier head kept new
            (:func:`~viscope.train.finetune.load_backbone`; the file's SHA-256 is
            recorded); called on fresh runs only (not when skipping or resuming).
        freeze: ``"backbone"`` trains the classifier head alone (linear probing): the
            backbone's parameters get no gradient, stay out of the optimizer and run in
            eval mode; ``None`` trains everything.
        monitor: the validation value that selects the best epoch (``"val_acc"`` with a
            classifying objective, else ``"val_loss"``); names ending in ``loss`` are
            minimised, others maximised.
        image_size: image side for named/path datasets.
        n: items for named/path datasets (``None``: the dataset's default).
        seed: seed of initialisation (for model names), data order, augmentation and
            every random op in training.
        data_seed: seed of the dataset's generation and split (``None``: ``seed``).
        skip_corrupt: skip unreadable image files of a folder or CSV dataset (with one
            warning; the split hashes record which items were used).
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
            is a name (e.g. ``{"img_size": 32}``, ``{"pretrained": True}``).
        **trainer_kwargs: passed to ``lightning.pytorch.Trainer`` (``gradient_clip_val``
            for gradient clipping, ``strategy``, ``accumulate_grad_batches``,
            ``deterministic``, ``limit_train_batches``, ``callbacks`` (added to fit's
            own), ``logger`` (added to the CSV logger), ...).

    Returns:
        The :class:`~viscope.train.run.TrainResult`; ``model`` then holds the best weights,
        in eval mode.

    Raises:
        ViscopeError: bad arguments, a dataset or model error, a model whose classifier
            does not match the classes, an unknown objective, initialiser or monitor, a
            run folder holding another configuration, ``accelerator="gpu"`` without a
            GPU, or trainer settings Lightning rejects.

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
    steps.check_int("epochs", epochs, 1)
    steps.check_int("batch_size", batch_size, 1)
    steps.check_int("max_steps", max_steps, -1)
    if early_stop_patience is not None:
        steps.check_int("early_stop_patience", early_stop_patience, 1)
    settings = OptimSettings(
        lr=lr, weight_decay=weight_decay, optimizer=optimizer, momentum=momentum,
        schedule=schedule, warmup_epochs=warmup_epochs, warmup_steps=warmup_steps,
        warmup_lr=warmup_lr, min_lr=min_lr, decay_epochs=decay_epochs, decay_rate=decay_rate,
    )
    terms = resolve_objectives(objectives, label_smoothing=label_smoothing)
    if isinstance(init, os.PathLike):
        init = str(init)  # config.yaml keeps the path as viscope train --init reads it
    init_made = checkpoint_init(init)
    initialiser = resolve_init(init_made)
    check_freeze(freeze)
    family = resolve_family(augment)
    if family is not None:
        BatchAugment(family, augment_p)  # validates augment_p before any work
    data_seed = seed if data_seed is None else data_seed

    splits, classes = steps.resolve_data(dataset, image_size, n, data_seed, skip_corrupt)
    pl.seed_everything(seed, workers=True, verbose=False)
    model = steps.resolve_model(model, len(classes), model_kwargs, terms)
    module = TrainModule(model, len(classes), objectives=terms, optim=settings,
                         augment=family, augment_p=augment_p, seed=seed)
    monitor, mode = steps.resolve_monitor(monitor, module)
    named = not isinstance(dataset, Mapping)  # a name or path: its size/n/seed make the data
    config = plain(
        {
            "model": steps.model_record(model, model_kwargs),
            "dataset": steps.dataset_label(dataset),
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
            **settings.describe(),
            # recorded only when not the default, so earlier runs still match
            **({} if is_default(terms) else {"objectives": [o.describe() for o in terms]}),
            **({} if init is None else {"init": describe_init(init_made)}),
            **({} if freeze is None else {"freeze": freeze}),
            **({} if monitor == "val_acc" else {"monitor": monitor}),
            "precision": canonical_precision(precision),
            "early_stop_patience": early_stop_patience,
            "trainer": {
                k: v for k, v in trainer_kwargs.items() if k not in HARDWARE_ARGS and is_plain(v)
            },
        }
    )

    run = steps.Run(Path(out), config, splits, classes, model, module, started)
    steps.resume_or_skip(run, overwrite)
    if run.stored is None and run.resume is None and initialiser is not None:
        initialiser(model, splits["train"])  # fresh runs only: a checkpoint has the weights
    steps.setup_objectives(run)
    if run.stored is not None:
        return steps.skipped_result(run)
    extra_callbacks += resolve_freeze(freeze, model)  # fresh and resumed runs alike
    hardware = {"accelerator": accelerator, "devices": devices, "num_workers": num_workers,
                **trainer_kwargs}
    steps.start_record(run, hardware)
    steps.write_settings(run, {
        **_command_line_names(config, terms, init),
        "image_size": image_size, "n": n, "seed": seed, "data_seed": data_seed,
        "skip_corrupt": skip_corrupt,
        "augment": None if family is None else family.name, "augment_p": augment_p,
        "epochs": epochs, "max_steps": max_steps, "batch_size": batch_size, "freeze": freeze,
        **settings.as_dict(), "label_smoothing": label_smoothing, "monitor": monitor,
        "precision": canonical_precision(precision), "early_stop_patience": early_stop_patience,
        "accelerator": accelerator, "devices": devices, "num_workers": num_workers,
        "trainer": {k: v for k, v in trainer_kwargs.items() if is_plain(v)},
    })
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
            run.out, monitor=monitor, mode=mode, early_stop_patience=early_stop_patience,
            extra_callbacks=extra_callbacks, extra_loggers=extra_loggers, options=options,
        )
        best_score, best_epoch = steps.train(run, parts, batch_size, num_workers)
    return steps.finish(run, parts, monitor, best_score, best_epoch, batch_size=batch_size,
                        num_workers=num_workers, keep_checkpoints=keep_checkpoints)


def _command_line_names(
    config: Mapping[str, Any], terms: list[Objective], init: InitArg
) -> dict[str, Any]:
    """The model, data, objectives and initialiser of ``config.yaml``, under the names
    ``viscope train --config`` reads (``num_classes`` comes from the data there)."""
    model = config["model"]
    return {
        "model": model["name"],
        "model_args": {k: v for k, v in model["kwargs"].items() if k != "num_classes"},
        "pretrained": bool(model.get("pretrained", False)),
        "dataset": config["dataset"],
        "objectives": [f"{o.name}:{o.weight:g}" for o in terms],
        "init": init if init is None or isinstance(init, str) else describe_init(init),
    }
