"""``viscope init-study``: the same model trained from each initialisation method (the
default init, PCA / ZCA / K-Means filters from image patches, mimetic attention), over
several seeds and a grid of conditions (fraction of the training data, ViT patch size,
learning rate); how soon each reaches a target validation accuracy.

Run folder (each (condition, method, seed) a cached :class:`~viscope.stages.Stage`, so a
re-run skips finished runs and a changed setting re-runs only the runs it belongs to)::

    OUT/config.yaml, environment.json
    OUT/<condition>/<method>-s<seed>/  fit's folder (fit/best.pt), history.csv (per epoch,
                                       with wall seconds since the start of the init),
                                       filters.npz (first-layer filters right after the
                                       init and of the best checkpoint), init.json
    OUT/report/   history.csv, table.csv, table.md, curves.png, filters.png
    OUT/summary.md
    OUT/missing.txt   the units not finished yet, one id a line (absent when complete)
    OUT/.locks/       a lock file per unit while a worker runs it (--shard)

The training subset of a condition is a stratified, seeded (``data.seed``) part of the
train split (:func:`viscope.data.split_indices`): the same images for every method and
seed, so paired runs differ only in their initialisation (and the seed). ``mimetic``
writes attention layers: for a model without them (a CNN) it is skipped with a note.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch

from viscope.errors import ViscopeError
from viscope.experiments.init_study.config import (
    Condition,
    InitStudyConfig,
    MethodConfig,
    load_config,
)
from viscope.experiments.units import (
    DEFAULT_LOCK_TIMEOUT,
    Unit,
    parse_shard,
    run_and_report,
)
from viscope.io import atomic_write, atomic_write_json
from viscope.stages import Stage, open_run_folder

Log = Callable[[str], None]
SPLITS = ("train", "val", "test")
CLOCK = "epoch_seconds.json"


def run(config: InitStudyConfig | str | Path, out: str | Path, *, log: Log | None = print,
        shard: str | None = None, balance: str = "index",
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT, collect: bool = False) -> pd.DataFrame:
    """Run the study of ``config`` into ``out`` (resumable; see the module).

    The study is a list of work units (:func:`study_units`), one per condition × method ×
    seed. Several workers may share ``out``: each runs the units of its ``shard`` under a
    lock per unit (:mod:`viscope.experiments.units`), then writes the report from what is
    finished (partial, with ``missing.txt`` listing the rest, until every unit is).

    Args:
        config: the study (or its YAML file).
        out: the run folder (re-running resumes it).
        log: receives one line per event (``None``: silent).
        shard: ``"k/n"``: run only the k-th of n shares of the units (all when ``None``).
        balance: ``"index"`` or ``"cost"`` (see :func:`viscope.experiments.units.assign`).
        lock_timeout: seconds without heartbeat after which a unit's lock is a dead
            worker's and taken over.
        collect: run nothing; write the report from what is finished.

    Returns:
        The per-epoch history of every finished run (``report/history.csv``).

    Raises:
        ViscopeError: unknown methods or options, a patch-size grid for a model without a
            patch embedding, a bad ``shard`` or ``balance`` (before any training).
    """
    from viscope.experiments.init_study import report

    cfg = config if isinstance(config, InitStudyConfig) else load_config(config)
    say = log or (lambda _s: None)
    parse_shard(shard)  # a bad --shard fails before anything is written
    attention = _check(cfg)
    out = Path(out) if collect else open_run_folder(out, cfg.model_dump())
    started = time.perf_counter()
    if not attention and any(m.name == "mimetic" for m in cfg.methods):
        say(f"mimetic: skipped: {cfg.model.name} has no attention layers (mimetic "
            "initialises a ViT's attention)")
    stages: dict[tuple[str, str, int], Stage] = {}
    units = study_units(cfg, out, say, attention, stages)
    return run_and_report(
        units, out, stages, lambda finished, missing: report.write(cfg, finished, out, say,
                                                                   missing),
        lambda: pd.DataFrame(columns=report.HISTORY), job="init-study", started=started,
        shard=shard, balance=balance, timeout=lock_timeout, collect=collect, log=say)


def study_units(cfg: InitStudyConfig, out: Path, say: Log, attention: bool,
                stages: dict[tuple[str, str, int], Stage] | None = None) -> list[Unit]:
    """The study's units in their fixed order: conditions, then methods, then seeds; id
    ``<condition>/<method>/seed<k>`` (``mimetic`` left out for a model without attention).

    A unit's seed is its own (never the shard's); its cost estimate is the epochs times
    the condition's training fraction. ``stages``, when given, receives each unit's
    :class:`~viscope.stages.Stage` by ``(condition, method, seed)``.
    """
    data: dict[str, Any] = {}

    def splits() -> dict[str, Any]:  # loaded by the first unit that trains, once
        if not data:
            data.update(_splits(cfg))
        return data

    def body(st: Stage, cond: Condition, method: MethodConfig, seed: int) -> bool:
        def train() -> dict[str, Any]:
            s = splits()
            tr = _subset(s, cond.train_fraction, cfg.data.seed)
            return _train(cfg, cond, method, seed, {**s, "train": tr}, st.folder, say)

        return st.run(train, say, f"{cond.tag}/{st.name}")

    units: list[Unit] = []
    for cond in cfg.grid():
        for method in cfg.methods:
            if method.name == "mimetic" and not attention:
                continue
            for seed in cfg.seeds:
                st = Stage(out / cond.tag, f"{method.tag}-s{seed}", {
                    "data": cfg.data.model_dump(), "model": _model_args(cfg, cond),
                    "method": method.model_dump(), "init": cfg.init.model_dump(),
                    "train": cfg.train.model_dump(), "condition": cond.model_dump(),
                    "seed": seed})
                if stages is not None:
                    stages[cond.tag, method.tag, seed] = st
                units.append(Unit(f"{cond.tag}/{method.tag}/seed{seed}", len(units),
                                  cfg.train.epochs * min(cond.train_fraction, 1.0),
                                  run=partial(body, st, cond, method, seed),
                                  done=st.finished))
    return units


def _model_args(cfg: InitStudyConfig, cond: Condition) -> dict[str, Any]:
    args = dict(cfg.model.args)
    if cond.patch_size is not None:
        args["patch_size"] = cond.patch_size
    return {"name": cfg.model.name, "args": args}


def _check(cfg: InitStudyConfig) -> bool:
    """Refuse unknown methods/options and a patch-size grid for a model without a patch
    embedding; return whether the model has attention layers (for ``mimetic``)."""
    from viscope import init, models
    from viscope.models import unwrap

    for m in cfg.methods:
        init.make(m.name, samples=cfg.init.samples, **m.options)  # raises on unknown names
    net = models.create(cfg.model.name, num_classes=2, **cfg.model.args)
    if any(p is not None for p in cfg.conditions.patch_size) and not hasattr(
            unwrap(net), "patch_embed"):
        raise ViscopeError(
            f"conditions.patch_size sets a ViT's patch size; {cfg.model.name} has no patch "
            "embedding. Remove conditions.patch_size or use a ViT (e.g. test_vit)."
        )
    return bool(init.attention_layers(net))


def _splits(cfg: InitStudyConfig) -> dict[str, Any]:
    from viscope import data
    from viscope.data.base import SubsetDataset

    d = cfg.data
    full = data.create(d.dataset, size=d.image_size, n=d.n, seed=d.seed,
                       skip_corrupt=d.skip_invalid)
    parts = data.split_indices(full, tuple(d.fractions), d.seed)
    return {s: SubsetDataset(full, parts[s], name=s, seed=d.seed) for s in SPLITS}


def _subset(splits: dict[str, Any], fraction: float, seed: int) -> Any:
    """The stratified, seeded ``fraction`` of the train split (all of it at 1)."""
    from viscope import data
    from viscope.data.base import SubsetDataset

    train = splits["train"]
    if fraction >= 1:
        return train
    keep = data.split_indices(train, {"keep": fraction, "rest": 1 - fraction}, seed)["keep"]
    if len(keep) == 0:
        raise ViscopeError(f"conditions.train_fraction {fraction} keeps no training image of "
                           f"{len(train)}; use a larger fraction or data.n.")
    return SubsetDataset(train, keep, name="train", seed=seed)


class EpochClock(pl.Callback):
    """Wall seconds at the end of each training epoch (after its validation), counted from
    the start of the initialisation (``init_seconds["seconds"]``, set by the init before
    training starts). Kept in ``path`` so that a resumed run goes on from the seconds its
    earlier part recorded."""

    def __init__(self, path: Path, init_seconds: dict[str, float]) -> None:
        self.path = path
        self.init_seconds = init_seconds
        self.seconds: dict[int, float] = {}
        if path.exists():
            self.seconds = {int(k): v for k, v in json.loads(path.read_text()).items()}
        self._start = 0.0
        self._offset = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._offset = max(self.seconds.values(), default=self.init_seconds.get("seconds", 0.0))
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds[trainer.current_epoch] = self._offset + time.perf_counter() - self._start
        atomic_write_json(self.path, self.seconds)


def _first_filters(model: torch.nn.Module) -> np.ndarray:
    from viscope.init import first_layer

    return first_layer(model)[1].weight.detach().cpu().numpy().copy()


def _train(cfg: InitStudyConfig, cond: Condition, method: MethodConfig, seed: int,
           splits: dict[str, Any], folder: Path, say: Log) -> dict[str, Any]:
    from viscope import init, models
    from viscope.train import fit

    t = cfg.train
    spec = _model_args(cfg, cond)
    torch.manual_seed(seed)
    model = models.create(spec["name"], num_classes=len(splits["train"].classes),
                          **spec["args"])
    base = init.make(method.name, samples=cfg.init.samples, seed=seed, **method.options)
    timing: dict[str, float] = {}
    initial = folder / "initial_filters.npy"

    def initialise(net: torch.nn.Module, train_split: Any) -> Any:
        t0 = time.perf_counter()
        rep = base(net, train_split)
        timing["seconds"] = time.perf_counter() - t0
        np.save(initial, _first_filters(net))
        atomic_write_json(folder / "init.json", {"seconds": timing["seconds"],
                                                 "report": rep.as_dict()})
        return rep

    initialise.describe = base.describe  # type: ignore[attr-defined]  # the run's config
    clock = EpochClock(folder / CLOCK, timing)
    r = fit(model, splits, out=folder / "fit", epochs=t.epochs, batch_size=t.batch_size,
            lr=cond.lr or t.lr, weight_decay=t.weight_decay, warmup_epochs=t.warmup_epochs,
            init=initialise, monitor="val_acc", image_size=cfg.data.image_size, seed=seed,
            accelerator=cfg.run.accelerator, num_workers=cfg.run.num_workers,
            progress=cfg.run.progress, callbacks=[clock])
    hist = r.history[["epoch", "train_loss", "val_loss", "val_acc"]].copy()
    hist["seconds"] = [clock.seconds.get(int(e), np.nan) for e in hist["epoch"]]
    atomic_write(folder / "history.csv", lambda p: hist.to_csv(p, index=False))
    learned = _first_filters(model)
    with open(folder / "filters.npz", "wb") as f:  # written before stage.json, which marks done
        np.savez(f, initial=np.load(initial), learned=learned)
    reached = hist.loc[hist["val_acc"] >= cfg.target, "epoch"]
    say(f"{cond.tag}/{method.tag} s{seed}: val accuracy {hist['val_acc'].iloc[-1]:.3f} "
        f"after {len(hist)} epochs, test {r.test_acc:.3f}; target {cfg.target} "
        + (f"at epoch {int(reached.iloc[0]) + 1}" if len(reached) else "not reached"))
    return {"test_acc": r.test_acc, "seconds": r.seconds, "best_epoch": r.best_epoch}


__all__ = ["EpochClock", "run", "study_units"]
