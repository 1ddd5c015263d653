"""One unit of the train x eval matrix (one model x training family x seed): its
training and its measured cells, and the settings each depends on (its ``inputs``).

A cell records the inputs it was made from; a cell whose record differs from what the
current config asks is stale and measured again (:meth:`_ModelRun.todo`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from viscope.experiments.config import MatrixConfig, ModelConfig
from viscope.io import atomic_write_json
from viscope.train.distributed import broadcast_object, leads

Log = Callable[[str], None]


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

