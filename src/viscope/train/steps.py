"""The steps of :func:`viscope.train.fit`, in the order it takes them.

Data (:func:`resolve_data`), model (:func:`resolve_model`), what the run folder holds
(:func:`resume_or_skip`), the objectives' modules (:func:`setup_objectives`), the record
(:func:`start_record`, :func:`write_settings`), training (:func:`train`) and the result
(:func:`finish`, or :func:`skipped_result` for a finished run). They share one
:class:`Run`. Internal to ``fit``: call ``fit`` rather than these.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch import nn
from torch.utils.data import Dataset

from viscope import models
from viscope.errors import ViscopeError, suggest
from viscope.io import atomic_write, atomic_write_json, environment
from viscope.models import spec_of, unwrap
from viscope.models.checkpoint import extract_state_dict, load_weights, read_checkpoint
from viscope.train.data import DatasetArg, class_names, collate, make_loader, resolve_splits
from viscope.train.evaluate import evaluate
from viscope.train.module import TrainModule
from viscope.train.objectives import Objective, is_default
from viscope.train.run import (
    BEST,
    CHECKPOINTS,
    METRICS,
    RECORD,
    SETTINGS,
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
    is_plain,
    remove_checkpoints,
    select_best,
)


@dataclass
class Run:
    """What the steps of one ``fit`` call share: the folder, the data, the model and its
    module, the configuration compared on resume and the record written to
    ``train.json``."""

    out: Path
    config: dict[str, Any]
    splits: dict[str, Dataset]
    classes: list[str]
    model: nn.Module
    module: TrainModule
    started: float
    stored: dict[str, Any] | None = None  # the record of a finished run (nothing to train)
    resume: Path | None = None  # Lightning's last.ckpt of an interrupted run
    record: dict[str, Any] = field(default_factory=dict)
    previous: pd.DataFrame | None = None  # metrics.csv of the sessions before a resume


def resolve_data(
    dataset: DatasetArg, image_size: int, n: int | None, data_seed: int, skip_corrupt: bool
) -> tuple[dict[str, Dataset], list[str]]:
    """The train/val(/test) splits and their shared class names."""
    splits = resolve_splits(dataset, image_size=image_size, n=n, seed=data_seed,
                            skip_corrupt=skip_corrupt)
    return splits, class_names(splits)


def resolve_monitor(monitor: str | None, module: TrainModule) -> tuple[str, str]:
    """The validation value that selects the best epoch, and ``"min"`` or ``"max"``.

    Raises:
        ViscopeError: a value validation does not log (with the close ones).
    """
    logged = module.logged_names()
    if monitor is None:
        classifies = any(o.classifies for o in module.objectives)
        monitor = "val_acc" if classifies and "val_acc" in logged else "val_loss"
    if monitor not in logged:
        raise ViscopeError(
            f"Expected monitor to be a value validation logs; got {monitor!r}."
            f"{suggest(str(monitor), logged)} Logged: {', '.join(logged)}."
        )
    return monitor, "min" if monitor.endswith("loss") else "max"


def resume_or_skip(run: Run, overwrite: bool) -> None:
    """Set ``run.stored`` (a finished run: skip) or ``run.resume`` (an interrupted one);
    neither for a fresh start (a previous run of another configuration is deleted only
    with ``overwrite``)."""
    state = prepare_folder(run.out, run.config, overwrite)
    if isinstance(state, dict):
        run.stored = state
    else:
        run.resume = state


def setup_objectives(run: Run) -> None:
    """Let the objectives build their modules, from a step of two training images (eval
    mode, no gradients; the model's modes are restored)."""
    module = run.module
    train = run.splits["train"]
    items = [train[i] for i in range(min(2, len(train)))]  # type: ignore[arg-type]
    batch = list(collate(items, masks=_uses_masks(module)))
    param = next(run.model.parameters(), None)
    if param is not None:
        batch = [t.to(param.device) for t in batch]
    modes = {m: m.training for m in module.modules()}
    try:
        module.eval()
        with torch.no_grad():
            example = module.make_step("train", batch[0], batch)
        for objective in module.objectives:
            objective.setup(run.model, len(run.classes), example)
    finally:
        for m, training in modes.items():
            m.training = training


def skipped_result(run: Run) -> TrainResult:
    """The stored result of a finished run; the model and the objectives' modules get
    the weights of ``best.pt``."""
    data = read_checkpoint(run.out / BEST)
    load_weights(unwrap(run.model), extract_state_dict(data), repr(str(run.out / BEST)))
    _load_objective_states(run.module, data)
    run.model.eval()
    return TrainResult.from_record(run.out, run.stored or {}, skipped=True, model=run.model)


def start_record(run: Run, hardware: Mapping[str, Any]) -> None:
    """Write ``train.json`` with status ``running`` (rank 0), keeping what a resumed run
    needs: the metrics of its earlier sessions and the hash of its initial weights."""
    init_sha256 = state_sha256(run.model)
    if run.resume:
        stored = read_record(run.out) or {}
        init_sha256 = stored.get("init_sha256", init_sha256)  # the weights it started from
        if (run.out / METRICS).is_file():
            run.previous = pd.read_csv(run.out / METRICS)
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
        "init_sha256": init_sha256,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "resumed_from": str(run.resume) if run.resume else None,
    }
    if _is_rank_zero():
        atomic_write_json(run.out / RECORD, run.record)


def write_settings(run: Run, settings: dict[str, Any]) -> None:
    """``config.yaml``: every setting of the call, as ``viscope train --config`` reads it."""
    if _is_rank_zero():
        text = yaml.safe_dump(plain(settings), sort_keys=False)
        atomic_write(run.out / SETTINGS, lambda p: Path(p).write_text(text))


def train(run: Run, parts: TrainerParts, batch_size: int, num_workers: int
           ) -> tuple[float, int]:
    """Fit on the train split, validating every epoch; load the best epoch into the
    module (model and objectives) and return its (monitored value, epoch)."""
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
        masks=_uses_masks(run.module),
    )
    val_loader = make_loader(run.splits["val"], batch_size, num_workers=num_workers,
                             pin_memory=pin, masks=_uses_masks(run.module))
    trainer.fit(run.module, train_loader, val_loader, ckpt_path=run.resume or None)
    return select_best(parts.best, run.module)


def finish(
    run: Run,
    parts: TrainerParts,
    monitor: str,
    best_score: float,
    best_epoch: int,
    *,
    batch_size: int,
    num_workers: int,
    keep_checkpoints: bool,
) -> TrainResult:
    """Rank 0: merge the metrics, report on the test split once, write ``best.pt`` and
    the finished record; every rank: return the result with the best weights, in eval
    mode."""
    trainer, out, model, module = parts.trainer, run.out, run.model, run.module
    if trainer.is_global_zero:
        metrics = merge_metrics(run.previous, out / METRICS)
        if run.previous is not None and not metrics.empty:
            atomic_write(out / METRICS, lambda p: metrics.to_csv(p, index=False))
        history = history_from_metrics(metrics)
        best_val_acc = _value_at(history, "val_acc", best_epoch, monitor, best_score)
        device = trainer.strategy.root_device
        test_acc, test_metrics = None, None
        if "test" in run.splits:
            if any(o.classifies for o in module.objectives):
                test_acc = evaluate(model, run.splits["test"], batch_size=max(batch_size, 256),
                                    device=device, num_workers=num_workers)
            if not is_default(list(module.objectives)):
                loader = make_loader(run.splits["test"], max(batch_size, 256),
                                     num_workers=num_workers, masks=_uses_masks(module))
                home = next(module.parameters()).device
                test_metrics = module.to(device).evaluate_split(loader, device)
                module.to(home)  # where the trainer left it, as evaluate() does
        models.save_checkpoint(
            model,
            out / BEST,
            objectives=_objective_states(module),
            epoch=best_epoch,
            val_acc=best_val_acc,
            test_acc=test_acc,
            monitor=monitor,
            best_score=best_score,
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
            monitor=monitor,
            best_score=best_score,
            best_val_acc=best_val_acc,
            test_acc=test_acc,
            **({} if test_metrics is None else {"test_metrics": test_metrics}),
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
        data = read_checkpoint(out / BEST)
        load_weights(unwrap(model), extract_state_dict(data), repr(str(out / BEST)))
        _load_objective_states(module, data)
    model.eval()
    return TrainResult.from_record(out, final or run.record, skipped=False, model=model)


# -- helpers ------------------------------------------------------------------------------


def model_record(model: nn.Module, model_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Name and arguments of the model; ``pretrained`` when fit made it with published
    weights (create records only what rebuilds the architecture)."""
    spec = spec_of(model)
    record = {"name": spec.name, "kwargs": spec.kwargs}  # type: ignore[union-attr]
    if (model_kwargs or {}).get("pretrained"):
        record["pretrained"] = True
    return record


def _value_at(history: pd.DataFrame, column: str, epoch: int, monitor: str, score: float
              ) -> float | None:
    """``column`` at ``epoch`` of the history (the selected score itself when it is the
    monitored value), ``None`` where it was not logged."""
    if column == monitor:
        return score
    if column not in history:
        return None
    values = history.loc[history["epoch"] == epoch, column].dropna()
    return float(values.iloc[-1]) if len(values) else None


def _objective_states(module: TrainModule) -> dict[str, dict[str, Any]]:
    """The state of each objective that has one (its head, decoder, ...), by name."""
    states = {o.name: o.state_dict() for o in module.objectives}
    return {name: state for name, state in states.items() if state}


def _load_objective_states(module: TrainModule, checkpoint: Mapping[str, Any]) -> None:
    """Load ``best.pt``'s ``"objectives"`` entry into the objectives that have state."""
    stored = checkpoint.get("objectives") or {}
    for objective in module.objectives:
        if objective.state_dict():
            objective.load_state_dict(stored.get(objective.name, {}), strict=True)


def _uses_masks(module: TrainModule) -> bool:
    return any(o.uses_masks for o in module.objectives)


def _is_rank_zero() -> bool:
    return getattr(rank_zero_only, "rank", 0) == 0


def resolve_model(
    model: nn.Module | str | os.PathLike[str],
    num_classes: int,
    model_kwargs: Mapping[str, Any] | None,
    objectives: Sequence[Objective] = (),
) -> nn.Module:
    outputs, why = model_outputs(objectives, num_classes)
    if isinstance(model, str | os.PathLike):
        model = models.create(model, num_classes=outputs, **dict(model_kwargs or {}))
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
    if isinstance(head, int) and head != outputs:
        raise ViscopeError(
            f"Expected a model with {outputs} outputs ({why}); got a model with "
            f"num_classes={head}. Create it with num_classes={outputs}."
        )
    return model


def model_outputs(objectives: Sequence[Objective], num_classes: int) -> tuple[int, str]:
    """The model outputs the objectives need (one per class unless an objective says
    otherwise, as segmentation's one channel), and why.

    Raises:
        ViscopeError: objectives that need different counts.
    """
    needs = {o.name: o.out_channels for o in objectives if o.out_channels is not None}
    needs.update({o.name: num_classes for o in objectives if o.classifies})
    if len(set(needs.values())) > 1:
        raise ViscopeError(
            f"Expected objectives that need one model output count; got {needs} (outputs "
            "by objective). Train them in separate runs."
        )
    if not needs or set(needs.values()) == {num_classes}:
        return num_classes, "one per class of the dataset"
    name, count = next(iter(needs.items()))
    return count, f"objective {name!r} needs {count}"


def dataset_label(dataset: DatasetArg) -> str:
    if isinstance(dataset, Mapping):
        kinds = sorted({type(d).__name__ for d in dataset.values()})
        return "dict of " + ", ".join(kinds)
    return os.fspath(dataset)


def check_int(what: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ViscopeError(f"Expected {what} to be an int >= {minimum}; got {value!r}.")
