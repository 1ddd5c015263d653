"""One unit of the train x eval matrix (one model x training family x seed): its
training and its measured cells, and the settings each depends on (its ``inputs``).

A cell records the inputs it was made from; a cell whose record differs from what the
current config asks is stale and measured again (:meth:`_ModelRun.todo`). The
explanation-equivariance part of a cell (``explain``) is an input of its own: a cell
measured without it (or with other explanation settings) gets only that part measured,
and switching ``explain`` off leaves the cells as they are.

Invariance tracking (``track_invariance``) is NOT a training input: the tracker does not
change the weights (the RNG, modes and gradients are restored around each measurement;
``tests/train/test_tracking.py``), so cells measured without it stay valid. A training
folder records its tracking settings in ``tracking.json``; a finished training without
tracking (or tracked with other settings) is trained again from scratch with the tracker
(the only way to get its epoch-by-epoch numbers: the intermediate weights are not kept),
and if its new ``best.pt`` differs from the old one (non-deterministic GPU kernels) its
cells are measured again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from viscope.experiments.config import MatrixConfig, ModelConfig
from viscope.io import atomic_write_json
from viscope.train.distributed import broadcast_object, leads

Log = Callable[[str], None]

#: a training folder's record of the tracking settings its invariance_by_epoch.csv uses
TRACKING = "tracking.json"


def _device(cfg: MatrixConfig) -> str:
    want_gpu = cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto")
    return "cuda" if want_gpu and torch.cuda.is_available() else "cpu"



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


def _explain_inputs(cfg: MatrixConfig) -> dict | None:
    """The settings of a cell's explanation-equivariance part (``None``: not asked)."""
    if cfg.explain is None:
        return None
    return {"method": cfg.explain, "samples": cfg.explain_samples or cfg.samples,
            "params": cfg.explain_params or cfg.params, "target": "clean", "layer": "auto"}


def _track_inputs(cfg: MatrixConfig) -> dict | None:
    """The settings of a training's invariance tracking (``None``: not asked). The probe
    is the val split with seed 0 for every training, so all trainings track the same
    images."""
    if not cfg.track_invariance:
        return None
    return {"families": cfg.track_invariance, "every": cfg.track_every,
            "samples": cfg.track_samples, "params": cfg.track_params, "layers": cfg.layers,
            "probe": "val", "seed": 0}


def cell_parts(stored: dict | None, want: dict) -> set[str]:
    """What of a cell must be measured: ``"cell"`` (NV, accuracy) when its recorded
    inputs differ from ``want`` apart from ``explain``; ``"explain"`` when ``want`` asks
    for an explanation part that is missing, made with other settings, or whose cell is
    measured again. A cell without a record (``stored`` None) needs everything."""
    base = {k: v for k, v in (stored or {}).items() if k != "explain"}
    parts = set()
    if stored is None or base != {k: v for k, v in want.items() if k != "explain"}:
        parts.add("cell")
    if "explain" in want and ("cell" in parts or stored.get("explain") != want["explain"]):
        parts.add("explain")
    return parts


def tracked_epochs(csv: Path, families: list[str]) -> set[int]:
    """The epochs at which ``csv`` (a training's invariance_by_epoch.csv) holds every
    family (empty when missing or unreadable)."""
    try:
        table = pd.read_csv(csv, usecols=["epoch", "family"])
    except (OSError, ValueError):
        return set()
    by_epoch = table.groupby("epoch")["family"].agg(set)
    return {int(e) for e, fams in by_epoch.items() if set(families) <= fams}


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
        self.explain_in = _plain(_explain_inputs(cfg))
        self.track_in = _plain(_track_inputs(cfg))
        self._splits: dict | None = None

    @property
    def splits(self) -> dict:
        if self._splits is None:  # built on first use: --collect and finished units skip it
            self._splits = _splits(self.cfg)
        return self._splits

    def inputs(self, fam: str, seed: int) -> dict[str, dict]:
        """The recorded inputs each cell of the unit (fam, seed) must match."""
        train_in = _plain(_train_inputs(self.cfg, self.mc, fam, seed))
        want = {e: {"train": train_in, "measure": self.measure_in}
                for e in self.cfg.eval_families}
        if self.explain_in is not None:
            for e in want:
                want[e]["explain"] = self.explain_in
        return {"clean": {"train": train_in}, **want}

    def todo(self, fam: str, seed: int) -> dict[str, set[str]]:
        """The unit's cells that are missing or were made from other inputs, each with
        the parts to measure (see :func:`cell_parts`)."""
        cdir = self.folder / "cells" / fam / f"seed{seed}"
        out = {}
        for e, want in self.inputs(fam, seed).items():
            parts = cell_parts((_read_json(cdir / f"{e}.json") or {}).get("inputs"), want)
            if parts:
                out[e] = parts
        return out

    def tdir(self, fam: str, seed: int) -> Path:
        return self.folder / "train" / fam / f"seed{seed}"

    def tracked(self, fam: str, seed: int) -> bool:
        """Whether the training's tracking is finished with the asked settings (always
        when none is asked): its record matches and its table holds the last epoch."""
        if self.track_in is None:
            return True
        from viscope.train.tracking import TABLE

        tdir = self.tdir(fam, seed)
        return _read_json(tdir / TRACKING) == self.track_in and (
            (self.mc.epochs or self.cfg.epochs)
            in tracked_epochs(tdir / TABLE, self.track_in["families"]))

    def done(self, fam: str, seed: int) -> bool:
        return not self.todo(fam, seed) and self.tracked(fam, seed)

    def _tracker(self) -> list:
        """The tracker callback of a training (none when tracking is off)."""
        if self.track_in is None:
            return []
        from viscope.train.tracking import InvarianceTracker

        t = self.track_in
        return [InvarianceTracker(t["families"], "val", every=t["every"], samples=t["samples"],
                                  params=t["params"], layers=t["layers"], seed=t["seed"],
                                  batch_size=self.cfg.measure_batch_size,
                                  # ~1.6 s of matplotlib per training: the matrix draws one
                                  # figure per model from the combined table instead
                                  figures=False)]

    def _start_tracking(self, tdir: Path) -> bool:
        """Before a training: ``True`` when it must start from scratch for its tracking
        (no record, one of other settings, or a table without epoch 0: removed by hand or
        cut before its first row); its old table and figures are removed and the new
        settings recorded (rank 0)."""
        if self.track_in is None:
            return False
        from viscope.train.tracking import TABLE

        fresh = broadcast_object(
            _read_json(tdir / TRACKING) != self.track_in
            or 0 not in tracked_epochs(tdir / TABLE, self.track_in["families"]))
        if fresh and leads():
            from viscope.train.tracking import DEPTH_FIGURE, LAST_LAYER_FIGURE

            for name in (TABLE, DEPTH_FIGURE, LAST_LAYER_FIGURE):
                (tdir / name).unlink(missing_ok=True)  # the tracker would resume from it
            atomic_write_json(tdir / TRACKING, self.track_in)
        return fresh

    def run(self, fam: str, seed: int) -> tuple[int, int]:
        """Train (or reuse) the unit's model and measure its unfinished cells.

        Returns:
            ``(trained, measured)``: 1 when a training ran, and the number of new cells.
        """
        from viscope import models
        from viscope.models.checkpoint import extract_state_dict, read_checkpoint
        from viscope.train import fit
        from viscope.train.run import RunMismatch

        cfg, mc, log, splits = self.cfg, self.mc, self.log, self.splits
        classes = len(splits["train"].classes)
        device = _device(cfg)
        tdir = self.tdir(fam, seed)
        inputs = self.inputs(fam, seed)
        train_in = inputs["clean"]["train"]
        todo = broadcast_object(self.todo(fam, seed))  # under DDP: what rank 0 read
        tracked = broadcast_object(self.tracked(fam, seed))
        trained = measured = 0
        if not todo and tracked:
            return trained, measured
        # a training made with other settings is replaced (fit would refuse the folder)
        stored = broadcast_object(_read_json(tdir / "inputs.json"))
        stale = stored is not None and stored != train_in
        if stored != train_in and leads():
            atomic_write_json(tdir / "inputs.json", train_in)
        fresh_track = self._start_tracking(tdir)
        # retrained for its tracking only: keep the old weights to compare (see module doc)
        old = extract_state_dict(read_checkpoint(tdir / "best.pt")) \
            if fresh_track and not stale and (tdir / "best.pt").exists() else None
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
                       progress=self.progress, overwrite=overwrite,
                       callbacks=self._tracker())

        try:
            res = train(stale or fresh_track)
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
                f"test acc {res.test_acc:.3f}"
                + (f"; invariance tracked ({', '.join(self.track_in['families'])})"
                   if self.track_in else ""))
        if old is not None:
            new = extract_state_dict(read_checkpoint(tdir / "best.pt"))
            if old.keys() != new.keys() or any(not torch.equal(old[k], new[k]) for k in old):
                log(f"{mc.tag} · retrained {fam} (seed {seed}) for its tracking gave other "
                    f"weights; measuring its cells again")
                todo = {e: cell_parts(None, want) for e, want in inputs.items()}
        model = models.create(tdir / "best.pt").to(device)
        for ev, parts in todo.items():
            self._measure(model, fam, seed, ev, parts, inputs[ev], device)
            measured += 1
        return trained, measured

    def _measure(self, model: torch.nn.Module, fam: str, seed: int, ev: str,
                 parts: set[str], inputs: dict, device: str) -> None:
        """Measure the ``parts`` of one cell and write it (rank 0): ``"cell"`` the
        accuracy (and NV), ``"explain"`` the explanation equivariance (kept from the
        cell already written when only that part is measured)."""
        from viscope.invariance import measure
        from viscope.train import evaluate

        cfg, mc, splits = self.cfg, self.mc, self.splits
        path = self.folder / "cells" / fam / f"seed{seed}" / f"{ev}.json"
        t0 = time.perf_counter()
        cell = {} if "cell" in parts else (broadcast_object(_read_json(path)) or {})
        if "cell" in parts and ev == "clean":
            cell = {"accuracy": evaluate(model, splits["test"], device=device, seed=seed)}
        elif "cell" in parts:
            r = measure(model, splits["test"], ev, samples=cfg.samples,
                        params=cfg.params, layers=cfg.layers,
                        batch_size=cfg.measure_batch_size, device=device, seed=seed)
            acc = evaluate(model, splits["test"], transform=ev,
                           params=cfg.accuracy_params, device=device, seed=seed)
            cell = {"nv": r.average(), "accuracy": acc,
                    "per_layer": dict(zip(r.layers, r.per_layer()["nv"].tolist(),
                                          strict=True))}
        if "cell" in parts:  # an explanation added to a cell keeps the cell's own time
            cell["seconds"] = time.perf_counter() - t0
        if "explain" in parts:
            from viscope.evaluate.equivariance import equivariance_cell

            t1 = time.perf_counter()
            e = inputs["explain"]
            # every DDP rank computes it (not sharded; rank 0 writes)
            cell["explanation"] = equivariance_cell(
                model, splits["test"], ev, e["method"], samples=e["samples"],
                params=e["params"], target=e["target"], layer=e["layer"],
                batch_size=cfg.measure_batch_size, device=device, seed=seed)
            cell["explain_seconds"] = time.perf_counter() - t1
        cell.update(model=mc.name, train=fam, eval=ev, seed=seed, inputs=inputs)
        if leads():  # every rank has the cell (the measurement merges the ranks)
            atomic_write_json(path, cell)
        if ev != "clean":
            expl = cell.get("explanation")
            self.log(f"{mc.tag} · train {fam} (seed {seed}) · eval {ev}: "
                     f"NV {cell['nv']:.3f}, accuracy {cell['accuracy']:.3f}"
                     + (f", {cfg.explain} correlation {expl['correlation']:.3f}"
                        if expl else ""))
