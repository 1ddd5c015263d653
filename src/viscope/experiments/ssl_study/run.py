"""``viscope ssl-study``: one backbone trained (a) supervised, (b) supervised +
reconstruction, (c, d, ...) pre-trained without labels by an SSL method and fine-tuned;
every model scored on accuracy, a linear probe, its explanations and its invariance.

Run folder (each unit a cached :class:`~viscope.stages.Stage`, resumable per (backbone,
variant, seed); a changed setting re-runs its units)::

    OUT/config.yaml, environment.json
    OUT/<backbone>/pretrain-<method>-s<seed>/   viscope pretrain's folder (backbone.pt)
    OUT/<backbone>/train-<variant>-s<seed>/     fit's folder (best.pt) + result
    OUT/<backbone>/eval-<variant>-s<seed>/      metrics.json (test and probe accuracy,
                                                 pointing game, energy, deletion AUC per
                                                 method, NV per family)
    OUT/report/   runs.csv, table.csv (mean ± std, paired t-test against supervised),
                  table.md, ssl_study.png
    OUT/summary.md
    OUT/missing.txt   the units not finished yet, one id a line (absent when complete)
    OUT/.locks/       a lock file per unit while a worker runs it (--shard)

The explanation scores use the test images' object masks (``shapes``); the target is each
image's true class. NV is the mean over layers (default layers), then over the families.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from viscope.errors import ViscopeError
from viscope.experiments.quality.run import stratified_head
from viscope.experiments.ssl_study.config import (
    PLAIN_VARIANTS,
    BackboneConfig,
    SSLStudyConfig,
    load_config,
)
from viscope.experiments.units import (
    DEFAULT_LOCK_TIMEOUT,
    Unit,
    parse_shard,
    run_and_report,
)
from viscope.io import atomic_write_json
from viscope.stages import Stage, open_run_folder

Log = Callable[[str], None]
SPLITS = ("train", "val", "test")


def run(config: SSLStudyConfig | str | Path, out: str | Path, *, log: Log | None = print,
        shard: str | None = None, balance: str = "index",
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT, collect: bool = False) -> pd.DataFrame:
    """Run the study of ``config`` into ``out`` (resumable; see the module).

    The study is a list of work units (:func:`study_units`), one per backbone × variant
    × seed (its pre-training, training and evaluation). Several workers may share
    ``out``: each runs the units of its ``shard`` under a lock per unit
    (:mod:`viscope.experiments.units`), then writes the report from what is finished
    (partial, with ``missing.txt`` listing the rest, until every unit is).

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
        The per-run table of the finished runs (``report/runs.csv``).

    Raises:
        ViscopeError: unknown variants or data without masks, a bad ``shard`` or
            ``balance`` (before any training).
    """
    from viscope.experiments.ssl_study import report

    cfg = config if isinstance(config, SSLStudyConfig) else load_config(config)
    say = log or (lambda _s: None)
    parse_shard(shard)  # a bad --shard fails before anything is written
    _check(cfg)
    out = Path(out) if collect else open_run_folder(out, cfg.model_dump())
    started = time.perf_counter()
    evals: dict[tuple[str, str, int], Stage] = {}
    units = study_units(cfg, out, say, evals)
    return run_and_report(
        units, out, evals, lambda finished, missing: report.write(cfg, finished, out, say,
                                                                  missing),
        pd.DataFrame, job="ssl-study", started=started, shard=shard, balance=balance,
        timeout=lock_timeout, collect=collect, log=say)


def study_units(cfg: SSLStudyConfig, out: Path, say: Log,
                evals: dict[tuple[str, str, int], Stage] | None = None) -> list[Unit]:
    """The study's units in their fixed order: backbones, then variants, then seeds; id
    ``<backbone>/<variant>/seed<k>``. A unit runs its chain pretrain → train → eval (each
    a cached stage, so a unit taken over from a dead worker resumes where it stopped).

    A unit's seed is its own (never the shard's); its cost estimate is its pre-training
    and training epochs. ``evals``, when given, receives each unit's evaluation
    :class:`~viscope.stages.Stage` by ``(backbone, variant, seed)``.
    """
    data: dict[str, Any] = {}

    def splits() -> dict[str, Any]:  # loaded by the first unit that trains, once
        if not data:
            data.update(_splits(cfg))
        return data

    def chain(bb: BackboneConfig, variant: str, seed: int, pre: Stage | None, tr: Stage,
              ev: Stage) -> None:
        if pre is not None:
            pre.run(lambda: _pretrain(cfg, bb, splits(), variant, seed, pre.folder, say), say,
                    f"{bb.tag}/{pre.name}")
        tr.run(lambda: _train(cfg, bb, splits(), variant, seed, pre, tr.folder, say), say,
               f"{bb.tag}/{tr.name}")
        ev.run(lambda: _evaluate(cfg, splits(), tr, ev.folder, say), say,
               f"{bb.tag}/{ev.name}")

    data_in = cfg.data.model_dump()
    units: list[Unit] = []
    for bb in cfg.backbones:
        for variant in cfg.variants:
            for seed in cfg.seeds:
                folder = out / bb.tag
                pre = None
                if variant not in PLAIN_VARIANTS:
                    pre = Stage(folder, f"pretrain-{variant}-s{seed}",
                                {"data": data_in, "backbone": bb.model_dump(),
                                 "pretrain": cfg.pretrain.model_dump(), "seed": seed})
                tr = Stage(folder, f"train-{variant}-s{seed}",
                           {"data": data_in, "backbone": bb.model_dump(),
                            "train": cfg.train.model_dump(), "variant": variant, "seed": seed},
                           after=[pre] if pre is not None else [])
                ev = Stage(folder, f"eval-{variant}-s{seed}",
                           {"evaluation": cfg.evaluation.model_dump()}, after=[tr])
                if evals is not None:
                    evals[bb.tag, variant, seed] = ev
                cost = cfg.train.epochs + (cfg.pretrain.epochs if pre is not None else 0)
                units.append(Unit(f"{bb.tag}/{variant}/seed{seed}", len(units), cost,
                                  run=partial(chain, bb, variant, seed, pre, tr, ev),
                                  done=ev.finished))
    return units


def _check(cfg: SSLStudyConfig) -> None:
    from viscope.explain import list_methods
    from viscope.train.ssl.methods import SSL_METHODS

    known = [*PLAIN_VARIANTS, *SSL_METHODS]
    for v in cfg.variants:
        if v not in known:
            raise ViscopeError(
                f"Unknown variant {v!r}; expected {', '.join(known)} (an SSL method is "
                "pre-trained, then fine-tuned)."
            )
    for m in cfg.evaluation.methods:
        if m not in list_methods():
            raise ViscopeError(f"Unknown explanation method {m!r}; see `viscope list methods`.")


def _splits(cfg: SSLStudyConfig) -> dict:
    from viscope import data
    from viscope.data.base import SubsetDataset

    d = cfg.data
    full = data.create(d.dataset, size=d.image_size, n=d.n, seed=d.seed)
    if not getattr(full, "has_masks", False):
        raise ViscopeError(
            f"Expected a dataset with object masks (explanations are scored on them); "
            f"{d.dataset!r} has none. Use data.dataset=shapes."
        )
    parts = data.split_indices(full, tuple(d.fractions), d.seed)
    return {s: SubsetDataset(full, parts[s], name=s, seed=d.seed) for s in SPLITS}


def _pretrain(cfg: SSLStudyConfig, bb: BackboneConfig, splits: dict, method: str, seed: int,
              folder: Path, say: Log) -> dict[str, Any]:
    from viscope.train.ssl.pretrain import pretrain

    p = cfg.pretrain
    r = pretrain(bb.name, {s: splits[s] for s in ("train", "val")}, out=folder, method=method,
                 epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, families=p.families,
                 image_size=cfg.data.image_size, seed=seed, accelerator=cfg.run.accelerator,
                 progress=cfg.run.progress, model_kwargs=bb.args)
    first = r.history.iloc[0]
    say(f"{bb.tag}/{method} s{seed}: k-NN accuracy {first['knn_acc']:.3f} at random init → "
        f"{r.knn_acc:.3f} after pre-training (probe {r.probe_acc:.3f})")
    return {"backbone": str(r.backbone), "knn_acc": r.knn_acc, "probe_acc": r.probe_acc,
            "knn_acc_init": float(first["knn_acc"]), "seconds": r.seconds}


def _train(cfg: SSLStudyConfig, bb: BackboneConfig, splits: dict, variant: str, seed: int,
           pre: Stage | None, folder: Path, say: Log) -> dict[str, Any]:
    from viscope import models
    from viscope.train import fit

    t = cfg.train
    objectives = ["ce"] + ([f"recon:{t.recon_weight}"] if variant == "recon" else [])
    torch.manual_seed(seed)
    model = models.create(bb.name, num_classes=len(splits["train"].classes), **bb.args)
    init = pre.result["backbone"] if pre is not None else None
    r = fit(model, splits, out=folder / "fit", epochs=t.epochs, batch_size=t.batch_size,
            lr=bb.lr or t.lr, weight_decay=t.weight_decay, objectives=objectives, init=init,
            monitor="val_acc", image_size=cfg.data.image_size, seed=seed,
            accelerator=cfg.run.accelerator, progress=cfg.run.progress)
    say(f"{bb.tag}/{variant} s{seed}: test accuracy {r.test_acc:.3f}")
    return {"checkpoint": str(r.checkpoint), "test_acc": r.test_acc, "seconds": r.seconds}


def _evaluate(cfg: SSLStudyConfig, splits: dict, trained: Stage, folder: Path, say: Log
              ) -> dict[str, Any]:
    from viscope import models
    from viscope.data import labels_of
    from viscope.evaluate.faithfulness import deletion_auc
    from viscope.evaluate.localisation import energy_pointing_game, pointing_game
    from viscope.explain import attribute
    from viscope.invariance import measure
    from viscope.train.ssl.probe import embed, probe_accuracy

    e = cfg.evaluation
    net = models.create(trained.result["checkpoint"]).eval()
    train_f, train_y = embed(net, splits["train"], cfg.run.batch_size)
    test_f, test_y = embed(net, splits["test"], cfg.run.batch_size)
    metrics: dict[str, Any] = {"test_acc": trained.result["test_acc"],
                               "probe_acc": probe_accuracy(train_f, train_y, test_f, test_y)}
    test = splits["test"]
    pick = stratified_head(np.asarray(labels_of(test)), e.images)
    items = [test[int(i)] for i in pick]
    images = torch.stack([it[0] for it in items])
    labels = torch.tensor([int(it[1]) for it in items])
    masks = torch.stack([it[2] for it in items])
    for method in e.methods:
        maps = attribute(net, images, method, target=labels)
        metrics[f"pointing_{method}"] = float(pointing_game(maps, masks).float().mean())
        metrics[f"energy_{method}"] = float(energy_pointing_game(maps, masks).mean())
        metrics[f"deletion_{method}"] = float(
            deletion_auc(net, images, maps, labels, steps=e.deletion_steps).mean())
    nv = {}
    for fam in e.families:
        r = measure(net, test, fam, samples=e.samples, params=e.params,
                    batch_size=cfg.run.batch_size)
        nv[fam] = r.average()
    metrics["nv_families"] = nv
    metrics["nv"] = float(np.nanmean(list(nv.values())))
    atomic_write_json(folder / "metrics.json", metrics)
    say(f"{folder.parent.name}/{folder.name}: probe {metrics['probe_acc']:.3f}, NV "
        f"{metrics['nv']:.3f}, " + ", ".join(f"energy {m} {metrics[f'energy_{m}']:.3f}"
                                            for m in e.methods))
    return metrics


__all__ = ["run", "study_units"]
