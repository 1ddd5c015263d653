"""The tables of the train x eval matrix: collect the finished cells of one model,
pivot them into the NV and accuracy tables (means over seeds, standard deviations),
write them (CSV, Markdown, LaTeX, heatmap) and the number-backed ``summary.md``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from viscope.experiments.config import MatrixConfig, ModelConfig
from viscope.experiments.matrix_tracking import track_tables
from viscope.experiments.matrix_unit import _ModelRun, _read_json, cell_parts
from viscope.io import atomic_write_text
from viscope.report import write_table_set

#: the explanation-equivariance scores a cell records (equivariance_cell's keys)
EXPLANATION = ("correlation", "difference", "ratio")

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
    #: mean explanation-equivariance correlation (``explain``; None when off)
    explanation: pd.DataFrame | None = None
    explanation_std: pd.DataFrame | None = None


def _collect(cfg: MatrixConfig, mc: ModelConfig, folder: Path) -> pd.DataFrame:
    """The finished cells; one that records other inputs than ``cfg``'s is left out (a
    stale cell waiting to be measured again), one without a record is kept (written by an
    older viscope, or by hand). The explanation scores (``EXPLANATION``) are NaN unless
    the cell's explanation part matches ``cfg.explain``'s settings."""
    run = _ModelRun(cfg, mc, folder, lambda s: None, False)
    rows = []
    for fam in cfg.train_families:
        for seed in cfg.seeds:
            want = run.inputs(fam, seed)
            for ev in ["clean", *cfg.eval_families]:
                c = _read_json(folder / "cells" / fam / f"seed{seed}" / f"{ev}.json")
                if c is None:
                    continue
                parts = cell_parts(c["inputs"], want[ev]) if "inputs" in c else set()
                if "cell" in parts:
                    continue
                expl = c.get("explanation") if "explain" not in parts else None
                rows.append({"train": fam, "eval": ev, "seed": seed,
                             "nv": c.get("nv", np.nan), "accuracy": c["accuracy"],
                             **{k: (expl or {}).get(k, np.nan) for k in EXPLANATION}})
    cols = ["nv", "accuracy", *EXPLANATION]
    return pd.DataFrame(rows, columns=["train", "eval", "seed", *cols]).astype(
        dict.fromkeys(cols, "float64"))


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


def _with_average(cells: pd.DataFrame, value: str, rows: list[str], evs: list[str]):
    """The train x eval table of ``value`` (means over seeds, std when several) with the
    ``average`` column: the average over evaluation families per seed (missing while a
    family is unmeasured: a partial table must not show an average of fewer columns),
    then mean/std over seeds."""
    mean, std, per_seed = _pivot(cells, value, rows, evs)
    avg = per_seed.reindex(columns=evs).mean(axis=1, skipna=False).groupby(level="train")
    mean["average"] = avg.mean().reindex(rows)
    if std is not None:
        std["average"] = avg.std(ddof=1).reindex(rows)
    return mean, std


def _tabulate(cfg: MatrixConfig, mc: ModelConfig, folder: Path, trained: int,
              measured: int, classes: int | None = None,
              missing: list[str] | None = None) -> MatrixResult:
    cells = _collect(cfg, mc, folder)
    rows, evs = cfg.train_families, cfg.eval_families
    inv, inv_std = _with_average(cells[cells["eval"] != "clean"], "nv", rows, evs)
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
    expl = expl_std = None
    if cfg.explain:
        # the correlation is the table: 1 = the map moves exactly with the image, its
        # direction (higher = more equivariant) needs no reference; the NV-style ratio
        # (lower = more equivariant) is written beside it as a CSV
        measured_cells = cells[cells["eval"] != "clean"]
        expl, expl_std = _with_average(measured_cells, "correlation", rows, evs)
        write_table_set(expl, expl_std, folder, "explanation",
                        title=f"{cfg.explain} equivariance · {what}{seeds}\n"
                              f"(correlation; higher = more equivariant)",
                        colorbar="map correlation", lower_is_better=False)
        ratio, _ = _with_average(measured_cells, "ratio", rows, evs)
        atomic_write_text(folder / "explanation_ratio.csv",
                          ratio.to_csv(index_label="train", float_format="%.6g"))
    track_tables(cfg, mc, folder)
    atomic_write_text(folder / "summary.md", summary(inv, acc, mc.label or mc.name, cfg,
                                                         mc.epochs or cfg.epochs, classes,
                                                         missing, expl))
    missing_file = folder / "missing.txt"
    if missing:
        atomic_write_text(missing_file, "\n".join(missing) + "\n")
    else:
        missing_file.unlink(missing_ok=True)
    return MatrixResult(mc.tag, folder, inv, inv_std, acc, acc_std, trained, measured,
                        list(missing or []), explanation=expl, explanation_std=expl_std)


def summary(inv: pd.DataFrame, acc: pd.DataFrame, name: str, cfg: MatrixConfig,
            epochs: int | None = None, classes: int | None = None,
            missing: list[str] | None = None, explanation: pd.DataFrame | None = None
            ) -> str:
    """A short, number-backed reading of the tables (``missing``: the unfinished units of
    a partial matrix, said first; ``explanation``: the explanation-equivariance table,
    read by :func:`explanation_summary`)."""
    epochs = epochs or cfg.epochs
    lines = [f"# Invariance matrix: {name}", "",
             f"Dataset `{cfg.dataset}` at {cfg.image_size} px; {epochs} epochs per model; "
             f"NV from {cfg.samples} test samples × {cfg.params} parameter values; "
             f"{'seed' if len(cfg.seeds) == 1 else 'seeds'} "
             f"{', '.join(map(str, cfg.seeds))}. Lower NV = more invariant.", ""]
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
    if explanation is not None:
        lines += explanation_summary(explanation, cfg.explain or "the explanation")
    return "\n".join(lines) + "\n"


def explanation_summary(expl: pd.DataFrame, method: str, tol: float = 1e-6) -> list[str]:
    """The explanation table's reading: for each evaluation family with a row of its own
    and an identity row, whether training with it made ``method``'s maps more
    equivariant to it (diagonal correlation above the identity-trained model's), as the
    NV lines do for the activations."""
    evs = [c for c in expl.columns if c != "average"]
    lines = ["", f"## {method} equivariance (correlation of the transformed image's map with "
             "the transformed map; higher = more equivariant)", ""]
    if "identity" not in expl.index:
        return [*lines, "- No identity-trained row: nothing to compare the diagonal with."]
    diag = [e for e in evs if e in expl.index and pd.notna(expl.loc[e, e])
            and pd.notna(expl.loc["identity", e])]
    more = [e for e in diag if expl.loc[e, e] > expl.loc["identity", e] + tol]
    lines.append(f"- Training with a family made {method} more equivariant to that family "
                 f"(diagonal correlation above the identity-trained model's) in "
                 f"**{len(more)} of {len(diag)}** columns"
                 + (f": {', '.join(more)}." if more else "."))
    for e in diag:
        d, i = expl.loc[e, e], expl.loc["identity", e]
        lines.append(f"  - {e}: trained with {e} {d:.3f} vs identity {i:.3f} "
                     f"({'more' if d > i + tol else 'not more'} equivariant, Δ = {d - i:+.3f})")
    if expl["average"].notna().any():
        lines.append(f"- Highest average correlation: **{expl['average'].idxmax()}** "
                     f"({expl['average'].max():.3f}); lowest: {expl['average'].idxmin()} "
                     f"({expl['average'].min():.3f}).")
    return lines
