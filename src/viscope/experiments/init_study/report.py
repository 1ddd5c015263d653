"""The tables and summary of ``viscope init-study``: per condition and method, the epochs
and wall seconds to reach the target validation accuracy, the final validation and test
accuracy (mean ± std over seeds), a paired t-test against ``default`` over the same seeds
(:func:`viscope.experiments.ssl_study.report.summarise`), and a verdict per condition.

Epochs to target are counted from 1 (the first epoch whose ``val_acc`` is at least the
target); a run that never reaches it has none: it is counted ("2/3 reached"), left out of
the mean and std, and its pair is left out of the t-test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from viscope.experiments.init_study.config import BASELINE, InitStudyConfig
from viscope.experiments.ssl_study.report import summarise
from viscope.io import atomic_write, atomic_write_text
from viscope.stages import Stage

Log = Callable[[str], None]
GROUP = ("condition", "method")
HISTORY = ["condition", "method", "seed", "epoch", "train_loss", "val_loss", "val_acc",
           "seconds"]
#: the table's metrics and how the Markdown table names them
METRICS = {"epochs_to_target": "epochs to target", "seconds_to_target": "seconds to target",
           "final_val_acc": "final val accuracy", "test_acc": "test accuracy"}
#: metrics that exist only for runs that reached the target
CENSORED = ("epochs_to_target", "seconds_to_target")


def write(cfg: InitStudyConfig, stages: Mapping[tuple[str, str, int], Stage], out: Path,
          say: Log, missing: Sequence[str] = ()) -> pd.DataFrame:
    """Write ``report/`` and ``summary.md`` from the finished runs ``stages``; return the
    per-epoch history of every run. ``missing``: ids of the runs not finished yet (the
    summary says the tables are partial)."""
    from viscope.experiments.init_study import figures

    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for (cond, method, seed), st in stages.items():
        h = pd.read_csv(st.folder / "history.csv")
        h.insert(0, "seed", seed)
        h.insert(0, "method", method)
        h.insert(0, "condition", cond)
        parts.append(h)
    history = pd.concat(parts, ignore_index=True)[HISTORY]
    tests = {k: st.result.get("test_acc") for k, st in stages.items()}
    runs = per_run(history, cfg.target, tests)
    table = summarise_runs(runs)
    atomic_write(folder / "history.csv", lambda p: history.to_csv(p, index=False))
    atomic_write(folder / "table.csv", lambda p: table.to_csv(p, index=False))
    md = markdown(table)
    atomic_write_text(folder / "table.md", md)
    verdicts = verdict(table)
    figures.curves(history, cfg.target, folder / "curves.png",
                   f"{cfg.name}: {cfg.model.name} on {cfg.data.dataset}")
    seed0 = cfg.seeds[0]
    cond0 = cfg.grid()[-1].tag  # the last condition: with the grid's defaults, all the data
    shown = {m: st.folder / "filters.npz" for (c, m, s), st in stages.items()
             if c == cond0 and s == seed0}
    figures.filters(shown, folder / "filters.png",
                    f"{cfg.name}: first-layer filters of {cfg.model.name}, seed {seed0}, "
                    f"{cond0} — initial (top) and learned (bottom), each normalised")
    atomic_write_text(out / "summary.md", (
        f"# {cfg.name}\n\n{cfg.model.name} on {cfg.data.dataset} ({cfg.data.image_size} px), "
        f"{cfg.train.epochs} epochs, seeds {cfg.seeds}; target: validation accuracy ≥ "
        f"{cfg.target}. Epochs and seconds to target: mean ± std over the runs that reached "
        f"it (seconds include the initialisation); p: paired t-test against `{BASELINE}` "
        f"over the seeds where both reached it (two-sided; — where undefined). Final val: "
        f"last epoch; test: the best-val checkpoint. A condition `fracF` trains on the "
        f"stratified fraction F of the train split drawn with data.seed (the same images "
        f"for every method and seed).\n\n"
        + (f"**Partial**: {len(missing)} run(s) not finished yet (listed in missing.txt): "
           f"{', '.join(missing)}.\n\n" if missing else "")
        + f"{md}\n## Verdict per condition\n\n"
        + "".join(f"- {v}\n" for v in verdicts)))
    say(f"report: {folder}")
    for v in verdicts:
        say(v)
    return history


def per_run(history: pd.DataFrame, target: float,
            test_acc: Mapping[tuple[str, str, int], float | None] | None = None
            ) -> pd.DataFrame:
    """One row per run: epochs (from 1) and wall seconds until ``val_acc >= target`` (NaN
    when never), final validation accuracy and test accuracy."""
    rows = []
    for (c, m, s), h in history.groupby(["condition", "method", "seed"], sort=False):
        h = h.sort_values("epoch")
        hit = h[h["val_acc"] >= target]
        rows.append({
            "condition": c, "method": m, "seed": s,
            "reached": len(hit) > 0,
            "epochs_to_target": float(hit["epoch"].iloc[0] + 1) if len(hit) else np.nan,
            "seconds_to_target": float(hit["seconds"].iloc[0]) if len(hit) else np.nan,
            "final_val_acc": float(h["val_acc"].iloc[-1]),
            "test_acc": np.nan if not test_acc or test_acc.get((c, m, s)) is None
            else float(test_acc[c, m, s]),
        })
    return pd.DataFrame(rows)


def summarise_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (condition, method): how many runs reached the target, and mean, std and the
    paired p-value against ``default`` of each metric (censored ones over finite values)."""
    censored = summarise(runs, list(CENSORED), group=GROUP, baseline=BASELINE,
                         finite_only=True)
    plain = summarise(runs, [m for m in METRICS if m not in CENSORED], group=GROUP,
                      baseline=BASELINE)
    table = censored.merge(plain.drop(columns="seeds"), on=list(GROUP), sort=False)
    reached = runs.groupby(list(GROUP), sort=False)["reached"].sum().rename("reached")
    return table.merge(reached.reset_index(), on=list(GROUP), sort=False)


def _cell(r: pd.Series, m: str) -> str:
    mean, std, p = r[f"{m}_mean"], r[f"{m}_std"], r[f"{m}_p"]
    cell = "—" if not np.isfinite(mean) else (
        f"{mean:.3g}" if not np.isfinite(std) else f"{mean:.3g} ± {std:.2g}")
    if np.isfinite(p):
        cell += f" (p = {p:.2g})"
    return cell


def markdown(table: pd.DataFrame) -> str:
    """The table as GitHub Markdown: ``reached`` as "k/n", ``mean ± std (p = ...)`` cells."""
    lines = ["| condition | method | reached | " + " | ".join(METRICS.values()) + " |",
             "|---|---|---|" + "---|" * len(METRICS)]
    for _, r in table.iterrows():
        cells = [_cell(r, m) for m in METRICS]
        lines.append(f"| {r['condition']} | {r['method']} | {int(r['reached'])}/"
                     f"{int(r['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def verdict(table: pd.DataFrame) -> list[str]:
    """Per condition, one line: which methods reached the target sooner than ``default``
    (more runs reached it, or as many in fewer epochs on average), with the paired p."""
    out = []
    for cond, g in table.groupby("condition", sort=False):
        base = g[g["method"] == BASELINE]
        if base.empty:
            out.append(f"{cond}: no `{BASELINE}` runs to compare with.")
            continue
        b = base.iloc[0]
        sooner, not_sooner = [], []
        for _, r in g[g["method"] != BASELINE].iterrows():
            more = r["reached"] > b["reached"]
            fewer = (r["reached"] == b["reached"] > 0
                     and r["epochs_to_target_mean"] < b["epochs_to_target_mean"])
            p = r["epochs_to_target_p"]
            what = (f"{r['method']} ({int(r['reached'])}/{int(r['seeds'])} reached, "
                    f"{_num(r['epochs_to_target_mean'])} epochs"
                    + (f", p = {p:.2g}" if np.isfinite(p) else ", p —") + ")")
            (sooner if more or fewer else not_sooner).append(what)
        head = (f"{cond}: `{BASELINE}` {int(b['reached'])}/{int(b['seeds'])} reached, "
                f"{_num(b['epochs_to_target_mean'])} epochs. ")
        out.append(head + ("Sooner: " + "; ".join(sooner) if sooner else "None sooner")
                   + (". Not sooner: " + "; ".join(not_sooner) if not_sooner else "") + ".")
    return out


def _num(x: float) -> str:
    return f"{x:.3g}" if np.isfinite(x) else "—"
