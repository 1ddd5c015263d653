"""``viscope quality``: train FGR-Net (and the plain classifier with the same encoder) on
graded fundus photographs and validate both with explanation methods.

Run folder (each part a cached :class:`~viscope.stages.Stage`: a re-run skips what is
finished, a changed setting re-runs its stage and those after it, an interrupted training
resumes from its own checkpoint)::

    OUT/config.yaml, environment.json
    OUT/train-<variant>-s<seed>/   fit/ (best.pt, train.json, history), metrics.json
                                   (accuracy, macro-F1, per-class recall, confusion matrix
                                   on the test split)
    OUT/maps-<variant>-s<seed>/    maps.npz (the explained test images' maps per method),
                                   per_image.csv (energy on structures / degradation,
                                   deletion AUC, per image and method)
    OUT/report/                    runs.csv, comparison.csv, energy.csv, clusters.csv,
                                   confusion.png, reconstructions.png, class_maps_*.png,
                                   clusters_*.png, comparison.png
    OUT/summary.md
    OUT/missing.txt                the units not finished yet (absent when complete)
    OUT/.locks/                    a lock file per unit while a worker runs it (--shard)

Variants: ``plain`` (cross-entropy alone, reconstruction weight 0: the same network, its
decoder unused) and ``fgrnet`` (cross-entropy + reconstruction MSE, weighted as the config
says; ``(CE + MSE) / 2`` by default). Every training selects its epoch on the validation
accuracy; the test split is used only for the reported numbers and the maps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from viscope.errors import ViscopeError
from viscope.experiments.quality.config import QualityConfig, load_config
from viscope.experiments.units import (
    DEFAULT_LOCK_TIMEOUT,
    Unit,
    missing_units,
    parse_shard,
    run_units,
    work,
    write_missing,
)
from viscope.stages import Stage, open_run_folder

Log = Callable[[str], None]
SPLITS = ("train", "val", "test")


@dataclass
class QualityData:
    """The dataset of a run, split, and the test images that are explained.

    Attributes:
        full: the whole dataset.
        splits: ``{"train", "val", "test"}`` subsets of it (stratified by grade).
        classes: class names in label order.
        explained: indices into ``splits["test"]`` of the images the maps are made of
            (stratified by class, in test order).
        images: those images (E, 3, H, W); ``labels`` (E,) their grades.
        structures: (E, 1, H, W) retinal structures (vessels, optic disc) or ``None``
            (files carry none); ``degradation`` likewise, where the degradation is;
            ``fov`` the field of view.
    """

    full: Dataset
    splits: dict[str, Dataset]
    classes: list[str]
    explained: np.ndarray
    images: torch.Tensor
    labels: torch.Tensor
    structures: torch.Tensor | None
    degradation: torch.Tensor | None
    fov: torch.Tensor | None


@dataclass
class QualityResult:
    """What :func:`run` produced: the folder, the per-run and comparison tables, and the
    stages this call computed (the others were finished already)."""

    out: Path
    runs: pd.DataFrame
    comparison: pd.DataFrame
    ran: list[str]


def run(config: QualityConfig | str | Path, out: str | Path, *, log: Log | None = print,
        shard: str | None = None, balance: str = "index",
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT, collect: bool = False) -> QualityResult:
    """Run the quality job of ``config`` into ``out`` (resumable; see the module).

    The job is a list of work units (:func:`study_units`), one per variant × seed (its
    training and its maps). Several workers may share ``out``: each runs the units of its
    ``shard`` under a lock per unit (:mod:`viscope.experiments.units`). The report (one
    more locked unit, so only one worker writes it) needs every unit: until then
    ``missing.txt`` lists the units not finished and the tables are empty.

    Args:
        config: the job (or its YAML file).
        out: the run folder (re-running resumes it).
        log: receives one line per event (``None``: silent).
        shard: ``"k/n"``: run only the k-th of n shares of the units (all when ``None``).
        balance: ``"index"`` or ``"cost"`` (see :func:`viscope.experiments.units.assign`).
        lock_timeout: seconds without heartbeat after which a unit's lock is a dead
            worker's and taken over.
        collect: train nothing; write the report if every unit is finished.

    Raises:
        ViscopeError: bad settings or data, a bad ``shard`` or ``balance`` (one line;
            finished stages are kept).
    """
    from viscope.experiments.quality import report as reporting
    from viscope.experiments.quality import stages

    cfg = config if isinstance(config, QualityConfig) else load_config(config)
    say = log or (lambda _s: None)
    parse_shard(shard)  # a bad --shard fails before anything is written
    out = Path(out) if collect else open_run_folder(out, cfg.model_dump())
    started = time.perf_counter()
    data = load_data(cfg)
    stages.check_settings(cfg, data)
    say(f"data: {len(data.splits['train'])} train / {len(data.splits['val'])} val / "
        f"{len(data.splits['test'])} test images ({', '.join(data.classes)}); "
        f"{len(data.explained)} test images explained")
    ran: list[str] = []
    trained: dict[tuple[str, int], Stage] = {}
    mapped: dict[tuple[str, int], Stage] = {}
    units = study_units(cfg, data, out, say, trained, mapped, ran)
    work(units, out, shard=shard, balance=balance, timeout=lock_timeout, collect=collect,
         log=say)
    missing = missing_units(units)
    write_missing(out / "missing.txt", missing)
    if missing:
        say(f"quality: the report waits for {len(missing)} unit(s): {', '.join(missing)}")
        return QualityResult(out, pd.DataFrame(), pd.DataFrame(), ran)
    report = Stage(out, "report", {"clusters": cfg.validation.clusters},
                   after=list(mapped.values()))

    def write() -> None:
        if report.run(lambda: reporting.report(cfg, data, trained, mapped, out,
                                               report.folder, say), say):
            ran.append(report.name)

    # a unit of its own, so that of the workers finishing last only one writes it
    run_units([Unit("report", len(units), run=write, done=report.finished)], out,
              timeout=lock_timeout, log=say)
    if not report.finished():  # another worker is writing it
        return QualityResult(out, pd.DataFrame(), pd.DataFrame(), ran)
    say(f"quality: {time.perf_counter() - started:.0f} s; summary in {out / 'summary.md'}")
    return QualityResult(out, pd.read_csv(out / "report" / "runs.csv"),
                         pd.read_csv(out / "report" / "comparison.csv"), ran)


def study_units(cfg: QualityConfig, data: QualityData, out: Path, say: Log,
                trained: dict[tuple[str, int], Stage] | None = None,
                mapped: dict[tuple[str, int], Stage] | None = None,
                ran: list[str] | None = None) -> list[Unit]:
    """The job's units in their fixed order: variants, then seeds; id
    ``<variant>/seed<k>``; a unit trains its variant (stage ``train-<variant>-s<seed>``)
    and makes its maps (``maps-<variant>-s<seed>``).

    A unit's seed is its own (never the shard's); its cost estimate is the epochs plus
    one for the maps (the first seed's maps use every method: two). ``trained`` and
    ``mapped``, when given, receive the stages by ``(variant, seed)``; ``ran`` the names
    of the stages computed.
    """
    from viscope.experiments.quality import stages

    data_in = cfg.data.model_dump()
    train_in = {k: v for k, v in cfg.train.model_dump().items() if k not in ("seeds", "compare")}
    first = cfg.train.seeds[0]
    done = ran if ran is not None else []

    def body(t: Stage, m: Stage, weight: float, seed: int) -> None:
        if t.run(lambda: stages.train_variant(cfg, data, weight, seed, t.folder, say), say):
            done.append(t.name)
        if m.run(lambda: stages.explain_variant(cfg, data, t, m.folder, say,
                                                all_methods=seed == first), say):
            done.append(m.name)

    units: list[Unit] = []
    for variant, weight in cfg.variants().items():
        for seed in cfg.train.seeds:
            t = Stage(out, f"train-{variant}-s{seed}",
                      {"data": data_in, "model": cfg.model.model_dump(), "train": train_in,
                       "recon_weight": weight, "seed": seed})
            m = Stage(out, f"maps-{variant}-s{seed}",
                      {"validation": cfg.validation.model_dump(), "all_methods": seed == first},
                      after=[t])
            if trained is not None:
                trained[variant, seed] = t
            if mapped is not None:
                mapped[variant, seed] = m
            cost = cfg.train.epochs + (2 if seed == first else 1)
            units.append(Unit(f"{variant}/seed{seed}", len(units), cost,
                              run=partial(body, t, m, weight, seed), done=m.finished))
    return units


def load_data(cfg: QualityConfig) -> QualityData:
    """The dataset of ``cfg.data``, split, and the explained test images with their masks.

    Raises:
        ViscopeError: no data named, classes that do not match the config's, or a split
            too small to explain ``validation.images`` images.
    """
    from viscope import data as vdata
    from viscope.data.base import SubsetDataset

    d = cfg.data
    full = _dataset(cfg)
    classes = list(full.classes)
    if classes != list(d.classes):
        raise ViscopeError(
            f"Expected the classes {d.classes} (data.classes); the data have {classes}. "
            f"Set data.classes to the data's classes, or map the grades (data.grades)."
        )
    parts = vdata.split_indices(full, tuple(d.fractions), d.seed)
    splits = {s: SubsetDataset(full, parts[s], name=s, seed=d.seed) for s in SPLITS}
    test = splits["test"]
    explained = stratified_head(np.asarray(vdata.labels_of(test)), cfg.validation.images)
    items = [test[int(i)] for i in explained]
    images = torch.stack([it[0] for it in items])
    labels = torch.tensor([int(it[1]) for it in items])
    full_idx = np.asarray(parts["test"])[explained]
    masks = {}
    for name in ("structure_masks", "degradation_masks", "fov_masks"):
        fn = getattr(full, name, None)
        masks[name] = fn(full_idx.tolist()).float() if callable(fn) else None
    return QualityData(full, splits, classes, explained, images, labels,
                       masks["structure_masks"], masks["degradation_masks"], masks["fov_masks"])


def _dataset(cfg: QualityConfig) -> Dataset:
    """The full dataset: a CSV ``path,grade``, a folder of class sub-folders, or built-in."""
    from viscope import data as vdata

    d = cfg.data
    if d.csv is not None:
        from viscope.data.fundus import FundusCSV

        ds = FundusCSV(d.csv, root=d.root, classes=tuple(d.classes), grades=d.grades,
                       size=d.image_size, crop=d.crop, skip_invalid=d.skip_invalid)
        return _subset(ds, d.n, d.seed)
    if d.dataset is None:
        raise ViscopeError(
            "Expected data.csv (a CSV path,grade) or data.dataset; got neither. Pass --set "
            "data.csv=/path/to/labels.csv."
        )
    if Path(d.dataset).is_dir() and d.dataset not in vdata.list_datasets():
        from viscope.data.fundus import FundusFolder

        ds = FundusFolder(d.dataset, classes=tuple(d.classes), size=d.image_size, crop=d.crop,
                          skip_invalid=d.skip_invalid)
        return _subset(ds, d.n, d.seed)
    return vdata.create(d.dataset, size=d.image_size, n=d.n, seed=d.seed)


def _subset(ds: Dataset, n: int | None, seed: int) -> Dataset:
    """A seeded subset of ``n`` items (all when ``n`` is None or not smaller)."""
    from viscope.data.base import SubsetDataset

    if n is None or n >= len(ds):
        return ds
    pick = np.sort(np.random.default_rng(seed).permutation(len(ds))[:n])
    return SubsetDataset(ds, pick, name="subset", seed=seed)


def stratified_head(labels: np.ndarray, n: int | None) -> np.ndarray:
    """Indices of ``n`` items taken round-robin over the classes (each class's first
    items in order), sorted; all when ``n`` is None or not smaller.

    >>> stratified_head(np.array([0, 0, 0, 1, 2, 2]), 4).tolist()
    [0, 1, 3, 4]
    """
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    queues = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    picked: list[int] = []
    while len(picked) < n:
        for q in queues:
            if q and len(picked) < n:
                picked.append(int(q.pop(0)))
    return np.sort(np.array(picked))


__all__ = ["QualityData", "QualityResult", "load_data", "run", "stratified_head", "study_units"]
