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

The unit (training and cells) lives in :mod:`viscope.experiments.matrix_unit`, the tables
and summary in :mod:`viscope.experiments.matrix_tables`; this module runs the units.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import yaml

from viscope.experiments.config import MatrixConfig
from viscope.experiments.matrix_tables import MatrixResult, _tabulate, summary
from viscope.experiments.matrix_unit import Log, _ModelRun, _train_inputs
from viscope.experiments.units import DEFAULT_LOCK_TIMEOUT, Unit, run_units, select
from viscope.io import atomic_write_json, atomic_write_text, environment
from viscope.train.distributed import Lockstep, group_size, launch, leads

# the names other modules and tests import from here (the module was split in three)
__all__ = ["MatrixResult", "_tabulate", "_train_inputs", "matrix_units", "run_matrix",
           "summary"]


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
    # --collect before any worker started has no config.yaml: the report needs one
    if main and (not collect or not (out / "config.yaml").is_file()):
        atomic_write_text(out / "config.yaml",
                          yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    if not collect and main:
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

    A unit's cost estimate is its epochs (15 % more when tracked) plus a tenth of an
    epoch per measured cell (twice that with an explanation) (a relative figure for the
    balanced assignment; it depends on the config only, so every worker computes the same
    assignment).
    """
    out = Path(out)
    units = []
    for mc in cfg.models:
        ctx = _ModelRun(cfg, mc, out / mc.tag, log or (lambda s: None), progress)
        if runs is not None:
            runs[mc.tag] = ctx
        for seed in cfg.seeds:
            for fam in cfg.train_families:
                # tracking costs ~15 % of a training; an explanation about a cell more
                cost = (mc.epochs or cfg.epochs) * (1.15 if cfg.track_invariance else 1) \
                    + 0.1 * (len(cfg.eval_families) * (2 if cfg.explain else 1) + 1)
                units.append(Unit(f"{mc.tag}/{fam}/seed{seed}", len(units), cost,
                                  run=partial(ctx.run, fam, seed),
                                  done=partial(ctx.done, fam, seed)))
    return units

