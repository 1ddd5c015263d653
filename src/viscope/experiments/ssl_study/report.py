"""The tables, figure and summary of ``viscope ssl-study``: per backbone and variant, the
mean ± std over seeds of every metric, and a paired t-test of each variant against
``supervised`` over the same seeds (scipy's ``ttest_rel``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from viscope.experiments.ssl_study.config import SSLStudyConfig
from viscope.io import atomic_write, atomic_write_text
from viscope.report.figures import pyplot, save_figure
from viscope.stages import Stage

Log = Callable[[str], None]


def metric_names(cfg: SSLStudyConfig) -> dict[str, str]:
    """The table's metric columns and how the figure names them."""
    out = {"test_acc": "test accuracy", "probe_acc": "linear-probe accuracy"}
    for m in cfg.evaluation.methods:
        out[f"pointing_{m}"] = f"pointing game ({m})"
        out[f"energy_{m}"] = f"energy pointing ({m})"
        out[f"deletion_{m}"] = f"deletion AUC ({m}; lower better)"
    out["nv"] = f"mean NV ({', '.join(cfg.evaluation.families)})"
    return out


def write(cfg: SSLStudyConfig, evals: Mapping[tuple[str, str, int], Stage], out: Path,
          say: Log, missing: Sequence[str] = ()) -> pd.DataFrame:
    """Write ``report/`` and ``summary.md`` from the finished runs ``evals``; return the
    per-run table. ``missing``: ids of the runs not finished yet (the summary says the
    tables are partial)."""
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    names = metric_names(cfg)
    rows = [{"backbone": b, "variant": v, "seed": s, **{k: st.result.get(k) for k in names}}
            for (b, v, s), st in evals.items()]
    runs = pd.DataFrame(rows)
    table = summarise(runs, list(names))
    atomic_write(folder / "runs.csv", lambda p: runs.to_csv(p, index=False))
    atomic_write(folder / "table.csv", lambda p: table.to_csv(p, index=False))
    md = markdown(table, names)
    atomic_write_text(folder / "table.md", md)
    plot(runs, names, folder / "ssl_study.png",
         f"{cfg.name}: {len(cfg.seeds)} seeds on {cfg.data.dataset} "
         f"({cfg.data.image_size} px)")
    atomic_write_text(out / "summary.md", f"# {cfg.name}\n\nTest split, mean ± std over seeds "
                      f"{cfg.seeds}; p: paired t-test against `supervised` over the same seeds "
                      f"(two-sided; — where undefined).\n\n"
                      + (f"**Partial**: {len(missing)} run(s) not finished yet (listed in "
                         f"missing.txt): {', '.join(missing)}.\n\n" if missing else "")
                      + md)
    say(f"report: {folder}")
    return runs


def summarise(runs: pd.DataFrame, metrics: list[str], *,
              group: Sequence[str] = ("backbone", "variant"), baseline: str = "supervised",
              finite_only: bool = False) -> pd.DataFrame:
    """Mean, std (ddof 1) and the paired t-test p-value (scipy's ``ttest_rel``, pairs
    matched by ``seed``) against the ``baseline`` per group and metric.

    Shared by the studies (``ssl-study``: per (backbone, variant) against
    ``supervised``; ``init-study``: per (condition, method) against ``default``).

    Args:
        runs: one row per run: the ``group`` columns, ``seed`` and the metrics.
        metrics: the metric columns.
        group: the columns that define a row of the table; the last one names what is
            compared (its ``baseline`` value is the reference within the other columns).
        baseline: the reference value of ``group[-1]``.
        finite_only: mean and std over the finite values only, and the test over the
            pairs whose two values are finite (a run that never reached a target has no
            epoch count); the columns ``<metric>_n`` and ``<metric>_pairs`` say how many.

    Returns:
        One row per group: its columns, ``seeds`` and ``<metric>_mean``, ``_std``, ``_p``
        (NaN for the baseline, fewer than two pairs, or differences that do not vary).
    """
    from scipy.stats import ttest_rel

    keys, compared = list(group[:-1]), group[-1]
    rows = []
    for names, g in runs.groupby(list(group), sort=False):
        names = names if isinstance(names, tuple) else (names,)
        row = dict(zip(group, names, strict=True))
        base = runs[runs[compared] == baseline]
        for k in keys:
            base = base[base[k] == row[k]]
        row["seeds"] = len(g)
        for m in metrics:
            vals = g[m].to_numpy(float)
            if finite_only:
                vals = vals[np.isfinite(vals)]
                row[f"{m}_n"] = len(vals)
            row[f"{m}_mean"] = float(np.nanmean(vals)) if len(vals) else np.nan
            row[f"{m}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else np.nan
            p = np.nan
            if row[compared] != baseline and len(base):
                pair = g.merge(base, on="seed", suffixes=("", "_base"))
                a, c = pair[m].to_numpy(float), pair[f"{m}_base"].to_numpy(float)
                if finite_only:
                    ok = np.isfinite(a) & np.isfinite(c)
                    a, c = a[ok], c[ok]
                    row[f"{m}_pairs"] = len(a)
                # constant differences (all zero, or all equal as epoch counts often are)
                # have no variance: t is 0/0 or infinite, so p is left undefined
                if len(a) > 1 and np.ptp(a - c) > 0:
                    p = float(ttest_rel(a, c).pvalue)
            row[f"{m}_p"] = p
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame, names: Mapping[str, str]) -> str:
    """The table as GitHub Markdown: ``mean ± std`` cells, ``(p = ...)`` against
    supervised."""
    head = "| backbone | variant | " + " | ".join(names.values()) + " |"
    lines = [head, "|---|---|" + "---|" * len(names)]
    for _, r in table.iterrows():
        cells = []
        for m in names:
            mean, std, p = r[f"{m}_mean"], r[f"{m}_std"], r[f"{m}_p"]
            cell = "—" if not np.isfinite(mean) else (
                f"{mean:.3f}" if not np.isfinite(std) else f"{mean:.3f} ± {std:.3f}")
            if np.isfinite(p):
                cell += f" (p = {p:.2f})"
            cells.append(cell)
        lines.append(f"| {r['backbone']} | {r['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: pd.DataFrame, names: Mapping[str, str], path: Path, title: str) -> None:
    """One panel per metric; per backbone, one bar per variant (mean ± std, seeds as dots)."""
    plt = pyplot()
    metrics = [m for m in names if runs[m].notna().any()]
    backbones = list(dict.fromkeys(runs["backbone"]))
    variants = list(dict.fromkeys(runs["variant"]))
    cols = min(4, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows + 0.6),
                             squeeze=False, gridspec_kw={"wspace": 0.35, "hspace": 0.6})
    width = 0.8 / len(variants)
    for ax, m in zip(axes.ravel(), metrics, strict=False):
        for j, v in enumerate(variants):
            for i, b in enumerate(backbones):
                vals = runs.loc[(runs["backbone"] == b) & (runs["variant"] == v), m]
                vals = vals.dropna().to_numpy(float)
                if not len(vals):
                    continue
                x = i + (j - (len(variants) - 1) / 2) * width
                ax.bar(x, vals.mean(), width, yerr=vals.std(ddof=1) if len(vals) > 1 else 0,
                       color=f"C{j}", alpha=0.75, capsize=3, label=v if i == 0 else None)
                ax.scatter(np.full(len(vals), x), vals, color="k", s=6, zorder=3)
        ax.set_xticks(range(len(backbones)), backbones, fontsize=8)
        ax.set_title(names[m], fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.ravel()[len(metrics):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7, title="variant", title_fontsize=7)
    fig.suptitle(title + " — bars: mean ± std over seeds; dots: seeds", fontsize=9)
    save_figure(fig, path)
