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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from viscope.experiments.config import MatrixConfig, ModelConfig
from viscope.io import atomic_write_json, atomic_write_text, environment
from viscope.report import write_table_set

Log = Callable[[str], None]


@dataclass
class MatrixResult:
    """The tables of one model's matrix (means over seeds, and standard deviations)."""

    model: str
    folder: Path
    invariance: pd.DataFrame
    invariance_std: pd.DataFrame | None
    accuracy: pd.DataFrame
    accuracy_std: pd.DataFrame | None
    trained: int
    measured: int


def _device(cfg: MatrixConfig) -> str:
    want_gpu = cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto")
    return "cuda" if want_gpu and torch.cuda.is_available() else "cpu"


def run_matrix(cfg: MatrixConfig, out: str | Path, *, log: Log | None = print,
               progress: bool = True) -> dict[str, MatrixResult]:
    """Train, measure and tabulate every model of ``cfg`` into ``out`` (resumable).

    Returns:
        The :class:`MatrixResult` of each model, keyed by its folder name.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    atomic_write_json(out / "environment.json", environment())
    results = {}
    for mc in cfg.models:
        results[mc.tag] = _run_model(cfg, mc, out / mc.tag, log or (lambda s: None), progress)
    return results


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


def _run_model(cfg: MatrixConfig, mc: ModelConfig, folder: Path, log: Log,
               progress: bool) -> MatrixResult:
    from viscope import models
    from viscope.invariance import measure
    from viscope.train import evaluate, fit
    from viscope.train.run import RunMismatch

    splits = _splits(cfg)
    classes = len(splits["train"].classes)
    device = _device(cfg)
    total = len(cfg.seeds) * len(cfg.train_families) * (len(cfg.eval_families) + 1)
    done = trained = measured = 0
    measure_in = _plain(_measure_inputs(cfg))
    for seed in cfg.seeds:
        for fam in cfg.train_families:
            tdir = folder / "train" / fam / f"seed{seed}"
            cdir = folder / "cells" / fam / f"seed{seed}"
            train_in = _plain(_train_inputs(cfg, mc, fam, seed))
            inputs = {e: {"train": train_in} if e == "clean"
                      else {"train": train_in, "measure": measure_in}
                      for e in ["clean", *cfg.eval_families]}
            todo = [e for e, want in inputs.items()
                    if (_read_json(cdir / f"{e}.json") or {}).get("inputs") != want]
            done += len(cfg.eval_families) + 1 - len(todo)  # finished in an earlier run
            if not todo:
                continue
            # a training made with other settings is replaced (fit would refuse the folder)
            stored = _read_json(tdir / "inputs.json")
            stale = stored is not None and stored != train_in
            if stored != train_in:
                atomic_write_json(tdir / "inputs.json", train_in)
            before = (tdir / "best.pt").stat().st_mtime_ns if (tdir / "best.pt").exists() \
                else None
            t0 = time.perf_counter()

            def train(overwrite: bool, fam=fam, seed=seed, tdir=tdir):
                torch.manual_seed(seed)  # the initial weights follow the seed too
                net = models.create(mc.name, num_classes=classes, **mc.args)
                return fit(net, splits, augment=None if fam == "identity" else fam,
                           epochs=mc.epochs or cfg.epochs, batch_size=cfg.batch_size,
                           lr=mc.lr or cfg.lr, weight_decay=cfg.weight_decay,
                           augment_p=cfg.augment_p, seed=seed, out=tdir,
                           accelerator=cfg.accelerator, devices=cfg.devices,
                           precision=cfg.precision, num_workers=cfg.num_workers,
                           progress=progress, overwrite=overwrite)

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
                    cell = {"accuracy": evaluate(model, splits["test"], device=device,
                                                 seed=seed)}
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
                atomic_write_json(cdir / f"{ev}.json", cell)
                measured += 1
                done += 1
                if ev != "clean":
                    log(f"[{done}/{total}] {mc.tag} · train {fam} · eval {ev}: "
                        f"NV {cell['nv']:.3f}, accuracy {cell['accuracy']:.3f}")
    return _tabulate(cfg, mc, folder, trained, measured, classes)


def _collect(cfg: MatrixConfig, folder: Path) -> pd.DataFrame:
    rows = []
    for fam in cfg.train_families:
        for seed in cfg.seeds:
            for ev in ["clean", *cfg.eval_families]:
                p = folder / "cells" / fam / f"seed{seed}" / f"{ev}.json"
                if p.exists():
                    c = json.loads(p.read_text())
                    rows.append({"train": fam, "eval": ev, "seed": seed,
                                 "nv": c.get("nv", np.nan), "accuracy": c["accuracy"]})
    return pd.DataFrame(rows, columns=["train", "eval", "seed", "nv", "accuracy"])


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
              measured: int, classes: int | None = None) -> MatrixResult:
    cells = _collect(cfg, folder)
    rows, evs = cfg.train_families, cfg.eval_families
    inv, inv_std, per_seed = _pivot(cells[cells["eval"] != "clean"], "nv", rows, evs)
    # average over evaluation families per seed, then mean/std over seeds
    avg = per_seed.reindex(columns=evs).mean(axis=1).groupby(level="train")
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
                                                         mc.epochs or cfg.epochs, classes))
    return MatrixResult(mc.tag, folder, inv, inv_std, acc, acc_std, trained, measured)


def summary(inv: pd.DataFrame, acc: pd.DataFrame, name: str, cfg: MatrixConfig,
            epochs: int | None = None, classes: int | None = None) -> str:
    """A short, number-backed reading of the two tables."""
    epochs = epochs or cfg.epochs
    lines = [f"# Invariance matrix: {name}", "",
             f"Dataset `{cfg.dataset}` at {cfg.image_size} px; {epochs} epochs per model; "
             f"NV from {cfg.samples} test samples × {cfg.params} parameter values; "
             f"seeds {cfg.seeds}. Lower NV = more invariant.", ""]
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
        diag = [e for e in evs if e in inv.index and e not in noop]
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
    if "clean" in acc.columns:
        clean = acc["clean"]
        lines.append(f"- Clean test accuracy ranges from {clean.min():.3f} "
                     f"({clean.idxmin()}) to {clean.max():.3f} ({clean.idxmax()}).")
        if "identity" in acc.index:
            drops = acc.loc["identity", evs] - acc.loc["identity", "clean"]
            lines.append(f"- The identity-trained model loses most accuracy under "
                         f"{drops.idxmin()} ({drops.min():+.3f}).")
    return "\n".join(lines) + "\n"
