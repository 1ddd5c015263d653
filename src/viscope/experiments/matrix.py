"""The train x eval invariance matrix: one model per augmentation family, each measured
against every family (the study of the published FasterViT table).

Run folder::

    OUT/config.yaml, environment.json
    OUT/<model>/train/<family>/seed<k>/      best.pt, metrics.csv, train.json (viscope.train)
    OUT/<model>/cells/<family>/seed<k>/<eval>.json   one finished cell each (atomic)
    OUT/<model>/invariance.{csv,md,tex,png}, accuracy.{csv,md,tex,png}, summary.md

Every cell is written atomically when done; a re-run skips finished trainings and cells,
so an interruption loses at most the cell in progress. Each cell records the settings it
was made from (``inputs``: training and measurement; not hardware such as batch sizes or
devices) and each training folder its training settings (``inputs.json``): a re-run with
other settings retrains and re-measures what they affect instead of reusing stale results.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from viscope.experiments.config import MatrixConfig, ModelConfig
from viscope.experiments.units import DEFAULT_LOCK_TIMEOUT, Unit, run_units, select
from viscope.io import atomic_write_json, atomic_write_text, environment
from viscope.report import write_table_set
from viscope.train.distributed import Lockstep, broadcast_object, group_size, launch, leads

Log = Callable[[str], None]


@dataclass
class MatrixResult:
    """The tables of one model's matrix (means over seeds, and standard deviations).

    ``missing`` lists the units (``<model>/<family>/seed<k>``) not finished yet, also
    written one per line to ``missing.txt`` in the model's folder (absent when complete);
    ``left`` the units this worker left to others that were running them.
    """

    model: str
    folder: Path
    invariance: pd.DataFrame
    invariance_std: pd.DataFrame | None
    accuracy: pd.DataFrame
    accuracy_std: pd.DataFrame | None
    trained: int
    measured: int
    missing: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


def _device(cfg: MatrixConfig) -> str:
    want_gpu = cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto")
    return "cuda" if want_gpu and torch.cuda.is_available() else "cpu"


def run_matrix(cfg: MatrixConfig, out: str | Path, *, log: Log | None = print,
               progress: bool = True, shard: str | None = None, balance: str = "index",
               lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
               collect: bool = False) -> dict[str, MatrixResult]:
    """Train, measure and tabulate every model of ``cfg`` into ``out`` (resumable).

    The study is a list of units, one per model × training family × seed (its training
    and its measured cells), in the order models, seeds, families. Several workers may
    share ``out``: each runs the units of its ``shard`` (see
    :func:`viscope.experiments.units.select`) under a lock per unit, then tabulates what
    is finished. A unit's seeds depend only on the unit, never on the shard layout.

    Args:
        cfg: the study.
        out: the run folder (re-running resumes it).
        log: receives one line per event (``None``: silent).
        progress: show training progress bars.
        shard: ``"k/n"``: run only the k-th of n shares of the units (all when ``None``).
        balance: ``"index"`` (index ≡ k mod n) or ``"cost"`` (greedy by estimated cost).
        lock_timeout: seconds without heartbeat after which a unit's lock is a dead
            worker's and taken over.
        collect: run nothing; tabulate what is finished and list what is missing.

    Returns:
        The :class:`MatrixResult` of each model, keyed by its folder name.

    Raises:
        ViscopeError: a bad ``shard`` or ``balance``.
    """
    out = Path(out)
    if not collect and isinstance(cfg.devices, int) and cfg.devices > 1:
        # start the DDP processes now, not at the first fit: they must follow rank 0's
        # units from the first (see viscope.train.distributed)
        launch(cfg.devices, cfg.accelerator)
    main = leads()
    log = log if log and main else (lambda s: None)
    runs: dict[str, _ModelRun] = {}
    units = matrix_units(cfg, out, log, progress, runs)
    mine = [] if collect else select(units, shard, balance)
    out.mkdir(parents=True, exist_ok=True)
    if not collect and main:
        atomic_write_text(out / "config.yaml",
                          yaml.safe_dump(cfg.model_dump(), sort_keys=False))
        atomic_write_json(out / "environment.json", environment())
    if group_size() == 1:  # no process group: this process alone (srun without --devices)
        work = run_units(mine, out, timeout=lock_timeout, log=log)
    else:  # rank 0 claims units; the others run the ones it announces, writing nothing
        step = Lockstep()
        if not main:
            by_id = {u.id: u for u in units}
            for uid in step.follow():
                by_id[uid].run()
            return {}
        try:
            work = run_units([replace(u, run=partial(step.lead, u.id, u.run)) for u in mine],
                             out, timeout=lock_timeout, log=log)
        finally:
            step.end()
    results = {}
    for mc in cfg.models:
        ran = [work.results[u] for u in work.ran if u.startswith(f"{mc.tag}/")]
        ours = [u for u in units if u.id.startswith(f"{mc.tag}/")]
        missing = [u.id for u in ours if not u.done()]
        while True:
            res = _tabulate(cfg, mc, out / mc.tag, sum(r[0] for r in ran),
                            sum(r[1] for r in ran), len(runs[mc.tag].splits["train"].classes),
                            missing)
            # another worker finished a unit while we tabulated: our tables may have
            # replaced its complete ones, so tabulate again (the last writer sees all)
            now = [u.id for u in ours if not u.done()]
            if now == missing:
                break
            missing = now
        res.left = [u for u in work.left if u.startswith(f"{mc.tag}/")]
        results[mc.tag] = res
    return results


def matrix_units(cfg: MatrixConfig, out: str | Path, log: Log | None = None,
                 progress: bool = False, runs: dict | None = None) -> list[Unit]:
    """The units of the study in their fixed order: models, then seeds, then families.

    ``runs``, when given, receives each model's runner by tag (its data, loaded once).

    A unit's cost estimate is its epochs plus a tenth of an epoch per measured cell (a
    relative figure for the balanced assignment; it depends on the config only, so every
    worker computes the same assignment).
    """
    out = Path(out)
    units = []
    for mc in cfg.models:
        ctx = _ModelRun(cfg, mc, out / mc.tag, log or (lambda s: None), progress)
        if runs is not None:
            runs[mc.tag] = ctx
        for seed in cfg.seeds:
            for fam in cfg.train_families:
                cost = (mc.epochs or cfg.epochs) + 0.1 * (len(cfg.eval_families) + 1)
                units.append(Unit(f"{mc.tag}/{fam}/seed{seed}", len(units), cost,
                                  run=partial(ctx.run, fam, seed),
                                  done=partial(ctx.done, fam, seed)))
    return units


def _splits(cfg: MatrixConfig) -> dict:
    from viscope import data

    return {s: data.create(cfg.dataset, split=s, size=cfg.image_size, n=cfg.n, seed=0)
            for s in ("train", "val", "test")}


def _train_inputs(cfg: MatrixConfig, mc: ModelConfig, fam: str, seed: int) -> dict:
    """The settings a training depends on (what ``fit`` compares, hardware excluded)."""
    return {"model": mc.name, "args": mc.args, "dataset": cfg.dataset,
            "image_size": cfg.image_size, "n": cfg.n, "augment": fam, "seed": seed,
            "epochs": mc.epochs or cfg.epochs, "lr": mc.lr or cfg.lr,
            "batch_size": cfg.batch_size, "weight_decay": cfg.weight_decay,
            "augment_p": None if fam == "identity" else cfg.augment_p,
            "precision": cfg.precision}


def _measure_inputs(cfg: MatrixConfig) -> dict:
    """The settings a measured cell depends on besides its model (batch size excluded)."""
    return {"samples": cfg.samples, "params": cfg.params, "layers": cfg.layers,
            "accuracy_params": cfg.accuracy_params}


def _read_json(path: Path):
    """The JSON in ``path`` (``None`` when missing or unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _plain(obj):
    return json.loads(json.dumps(obj, default=str))


class _ModelRun:
    """One model's units: what they need (data, loaded once) and how each runs."""

    def __init__(self, cfg: MatrixConfig, mc: ModelConfig, folder: Path, log: Log,
                 progress: bool) -> None:
        self.cfg, self.mc, self.folder, self.log, self.progress = cfg, mc, folder, log, progress
        self.measure_in = _plain(_measure_inputs(cfg))
        self._splits: dict | None = None

    @property
    def splits(self) -> dict:
        if self._splits is None:  # built on first use: --collect and finished units skip it
            self._splits = _splits(self.cfg)
        return self._splits

    def inputs(self, fam: str, seed: int) -> dict[str, dict]:
        """The recorded inputs each cell of the unit (fam, seed) must match."""
        train_in = _plain(_train_inputs(self.cfg, self.mc, fam, seed))
        return {e: {"train": train_in} if e == "clean"
                else {"train": train_in, "measure": self.measure_in}
                for e in ["clean", *self.cfg.eval_families]}

    def todo(self, fam: str, seed: int) -> list[str]:
        """The unit's cells that are missing or were made from other inputs."""
        cdir = self.folder / "cells" / fam / f"seed{seed}"
        return [e for e, want in self.inputs(fam, seed).items()
                if (_read_json(cdir / f"{e}.json") or {}).get("inputs") != want]

    def done(self, fam: str, seed: int) -> bool:
        return not self.todo(fam, seed)

    def run(self, fam: str, seed: int) -> tuple[int, int]:
        """Train (or reuse) the unit's model and measure its unfinished cells.

        Returns:
            ``(trained, measured)``: 1 when a training ran, and the number of new cells.
        """
        from viscope import models
        from viscope.invariance import measure
        from viscope.train import evaluate, fit
        from viscope.train.run import RunMismatch

        cfg, mc, log, splits = self.cfg, self.mc, self.log, self.splits
        classes = len(splits["train"].classes)
        device = _device(cfg)
        tdir = self.folder / "train" / fam / f"seed{seed}"
        cdir = self.folder / "cells" / fam / f"seed{seed}"
        inputs = self.inputs(fam, seed)
        train_in = inputs["clean"]["train"]
        todo = broadcast_object(self.todo(fam, seed))  # under DDP: what rank 0 read
        trained = measured = 0
        if not todo:
            return trained, measured
        # a training made with other settings is replaced (fit would refuse the folder)
        stored = broadcast_object(_read_json(tdir / "inputs.json"))
        stale = stored is not None and stored != train_in
        if stored != train_in and leads():
            atomic_write_json(tdir / "inputs.json", train_in)
        before = (tdir / "best.pt").stat().st_mtime_ns if (tdir / "best.pt").exists() \
            else None
        t0 = time.perf_counter()

        def train(overwrite: bool):
            torch.manual_seed(seed)  # the initial weights follow the seed too
            net = models.create(mc.name, num_classes=classes, **mc.args)
            return fit(net, splits, augment=None if fam == "identity" else fam,
                       epochs=mc.epochs or cfg.epochs, batch_size=cfg.batch_size,
                       lr=mc.lr or cfg.lr, weight_decay=cfg.weight_decay,
                       augment_p=cfg.augment_p, seed=seed, out=tdir,
                       accelerator=cfg.accelerator, devices=cfg.devices,
                       precision=cfg.precision, num_workers=cfg.num_workers,
                       progress=self.progress, overwrite=overwrite)

        try:
            res = train(stale)
        except RunMismatch as err:
            if stored is not None:  # recorded as ours: fit should have agreed
                raise
            # a training folder without inputs.json (an older viscope's, or copied in)
            # made with other settings: replaced, as a recorded one would be
            log(f"{mc.tag} · {tdir} holds a training with other settings; training "
                f"again ({'; '.join(err.differences[:3])})")
            res = train(True)
        after = (tdir / "best.pt").stat().st_mtime_ns
        if after != before:
            trained += 1
            log(f"{mc.tag} · trained with {fam} (seed {seed}) in "
                f"{time.perf_counter() - t0:.0f} s: val acc {res.best_val_acc:.3f}, "
                f"test acc {res.test_acc:.3f}")
        model = models.create(tdir / "best.pt").to(device)
        for ev in todo:
            t0 = time.perf_counter()
            if ev == "clean":
                cell = {"accuracy": evaluate(model, splits["test"], device=device, seed=seed)}
            else:
                r = measure(model, splits["test"], ev, samples=cfg.samples,
                            params=cfg.params, layers=cfg.layers,
                            batch_size=cfg.measure_batch_size, device=device, seed=seed)
                acc = evaluate(model, splits["test"], transform=ev,
                               params=cfg.accuracy_params, device=device, seed=seed)
                cell = {"nv": r.average(), "accuracy": acc,
                        "per_layer": dict(zip(r.layers, r.per_layer()["nv"].tolist(),
                                              strict=True))}
            cell.update(model=mc.name, train=fam, eval=ev, seed=seed,
                        seconds=time.perf_counter() - t0, inputs=inputs[ev])
            if leads():  # every rank has the cell (the measurement merges the ranks)
                atomic_write_json(cdir / f"{ev}.json", cell)
            measured += 1
            if ev != "clean":
                log(f"{mc.tag} · train {fam} (seed {seed}) · eval {ev}: "
                    f"NV {cell['nv']:.3f}, accuracy {cell['accuracy']:.3f}")
        return trained, measured


def _collect(cfg: MatrixConfig, mc: ModelConfig, folder: Path) -> pd.DataFrame:
    """The finished cells; one that records other inputs than ``cfg``'s is left out (a
    stale cell waiting to be measured again), one without a record is kept (written by an
    older viscope, or by hand)."""
    run = _ModelRun(cfg, mc, folder, lambda s: None, False)
    rows = []
    for fam in cfg.train_families:
        for seed in cfg.seeds:
            want = run.inputs(fam, seed)
            for ev in ["clean", *cfg.eval_families]:
                c = _read_json(folder / "cells" / fam / f"seed{seed}" / f"{ev}.json")
                if c is not None and c.get("inputs", want[ev]) == want[ev]:
                    rows.append({"train": fam, "eval": ev, "seed": seed,
                                 "nv": c.get("nv", np.nan), "accuracy": c["accuracy"]})
    return pd.DataFrame(rows, columns=["train", "eval", "seed", "nv", "accuracy"]).astype(
        {"nv": "float64", "accuracy": "float64"})


def _pivot(cells: pd.DataFrame, value: str, rows: list[str], cols: list[str]):
    per_seed = cells.pivot_table(index=["seed", "train"], columns="eval", values=value,
                                 dropna=False)
    mean = cells.pivot_table(index="train", columns="eval", values=value, aggfunc="mean")
    mean = mean.reindex(index=rows, columns=cols)
    n_seeds = cells["seed"].nunique()
    std = None
    if n_seeds > 1:
        std = cells.pivot_table(index="train", columns="eval", values=value,
                                aggfunc=lambda s: float(np.std(s, ddof=1)) if len(s) > 1
                                else np.nan).reindex(index=rows, columns=cols)
    return mean, std, per_seed


def _tabulate(cfg: MatrixConfig, mc: ModelConfig, folder: Path, trained: int,
              measured: int, classes: int | None = None,
              missing: list[str] | None = None) -> MatrixResult:
    cells = _collect(cfg, mc, folder)
    rows, evs = cfg.train_families, cfg.eval_families
    inv, inv_std, per_seed = _pivot(cells[cells["eval"] != "clean"], "nv", rows, evs)
    # average over evaluation families per seed (missing while a family is unmeasured:
    # a partial table must not show an average of fewer columns), then mean/std over seeds
    avg = per_seed.reindex(columns=evs).mean(axis=1, skipna=False).groupby(level="train")
    inv["average"] = avg.mean().reindex(rows)
    if inv_std is not None:
        inv_std["average"] = avg.std(ddof=1).reindex(rows)
    acc, acc_std, _ = _pivot(cells, "accuracy", rows, ["clean", *evs])
    what = f"{mc.label or mc.name} on {cfg.dataset} ({cfg.image_size} px)"
    seeds = f", mean ± std over {len(cfg.seeds)} seeds" if len(cfg.seeds) > 1 else ""
    write_table_set(inv, inv_std, folder, "invariance",
                    title=f"Average Normalized Variance · {what}{seeds}\n"
                          f"(lower = more invariant)",
                    colorbar="average NV over layers (unitless)")
    write_table_set(acc, acc_std, folder, "accuracy",
                    title=f"Test accuracy under each transformation · {what}{seeds}",
                    colorbar="accuracy (fraction correct)", lower_is_better=False)
    atomic_write_text(folder / "summary.md", summary(inv, acc, mc.label or mc.name, cfg,
                                                         mc.epochs or cfg.epochs, classes,
                                                         missing))
    missing_file = folder / "missing.txt"
    if missing:
        atomic_write_text(missing_file, "\n".join(missing) + "\n")
    else:
        missing_file.unlink(missing_ok=True)
    return MatrixResult(mc.tag, folder, inv, inv_std, acc, acc_std, trained, measured,
                        list(missing or []))


def summary(inv: pd.DataFrame, acc: pd.DataFrame, name: str, cfg: MatrixConfig,
            epochs: int | None = None, classes: int | None = None,
            missing: list[str] | None = None) -> str:
    """A short, number-backed reading of the two tables (``missing``: the unfinished
    units of a partial matrix, said first)."""
    epochs = epochs or cfg.epochs
    lines = [f"# Invariance matrix: {name}", "",
             f"Dataset `{cfg.dataset}` at {cfg.image_size} px; {epochs} epochs per model; "
             f"NV from {cfg.samples} test samples × {cfg.params} parameter values; "
             f"seeds {cfg.seeds}. Lower NV = more invariant.", ""]
    if missing:
        lines += [f"**Partial**: {len(missing)} unit(s) not finished yet (listed in "
                  f"missing.txt); their cells are blank and nothing below counts them.", ""]
    evs = [c for c in inv.columns if c != "average"]
    tol = 1e-6
    # NV below 1e-3 for every model: float rounding of a transformation that is the
    # identity on these images (grayscale on gray digits), not invariance learnt
    noop = [e for e in evs if inv[e].notna().all() and (inv[e].abs() < 1e-3).all()]
    if noop:
        lines.append(f"- {', '.join(noop)}: NV = 0 for every model — the family does not change "
                     f"these images (e.g. grayscale on gray images), so the column says nothing "
                     f"about training.")
    if "identity" in inv.index:
        # a partial matrix (--collect) compares only the cells measured so far
        diag = [e for e in evs if e in inv.index and e not in noop
                and pd.notna(inv.loc[e, e]) and pd.notna(inv.loc["identity", e])]
        lower = [e for e in diag if inv.loc[e, e] < inv.loc["identity", e] - tol]
        lines.append(f"- Training with a family lowered NV to that family (diagonal cell below "
                     f"the identity-trained model's) in **{len(lower)} of {len(diag)}** columns"
                     + (f": {', '.join(lower)}." if lower else "."))
        for e in diag:
            d, i = inv.loc[e, e], inv.loc["identity", e]
            lines.append(f"  - {e}: trained with {e} {d:.3f} vs identity {i:.3f} "
                         f"({'lower' if d < i - tol else 'not lower'}, Δ = {d - i:+.3f})")
    best = {e: inv[e].idxmin() for e in evs if inv[e].notna().any() and e not in noop}
    if best:
        def with_ties(e: str, r: str) -> str:
            # the heatmap boxes every row equal to the best at its 2 decimals: name them too
            shown = inv[e].map(lambda v: f"{v:.2f}")  # as the heatmap prints it
            ties = [t for t in inv.index[shown == shown[r]] if t != r]
            return f"{e} → {r}" + (f" (tied at 2 decimals: {', '.join(ties)})" if ties else "")

        lines.append("- Most invariant training family per evaluation family: "
                     + ", ".join(with_ties(e, r) for e, r in best.items()) + ".")
    if inv["average"].notna().any():
        lines.append(f"- Lowest average NV: **{inv['average'].idxmin()}** "
                     f"({inv['average'].min():.3f}); highest: {inv['average'].idxmax()} "
                     f"({inv['average'].max():.3f}).")
    if "clean" in acc.columns and classes:
        weak = acc.index[acc["clean"] < 1.5 / classes].tolist()
        if weak:
            lines.append(f"- Near chance (clean accuracy < 1.5 × 1/{classes}): "
                         f"{', '.join(weak)} — these models did not learn the task, so their "
                         f"NV describes an untrained network more than an invariance.")
    if "clean" in acc.columns and acc["clean"].notna().any():
        clean = acc["clean"]
        lines.append(f"- Clean test accuracy ranges from {clean.min():.3f} "
                     f"({clean.idxmin()}) to {clean.max():.3f} ({clean.idxmax()}).")
        drops = acc.loc["identity", evs] - acc.loc["identity", "clean"] \
            if "identity" in acc.index else pd.Series(dtype=float)
        if drops.notna().any():
            lines.append(f"- The identity-trained model loses most accuracy under "
                         f"{drops.idxmin()} ({drops.min():+.3f}).")
    return "\n".join(lines) + "\n"
