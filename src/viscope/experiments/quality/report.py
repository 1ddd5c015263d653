"""The report stage of ``viscope quality``: the per-run and comparison tables, the map
groups (per-class means, K-Means / NMF clusters) and every figure, and ``summary.md``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from viscope.evaluate.clusters import class_means, cluster_maps
from viscope.experiments.quality import figures
from viscope.experiments.quality.config import QualityConfig
from viscope.experiments.quality.run import QualityData, stratified_head
from viscope.experiments.quality.stages import METRICS, load_maps
from viscope.io import atomic_write, atomic_write_text
from viscope.stages import Stage

Log = Callable[[str], None]
Keyed = dict[tuple[str, int], Stage]


def report(cfg: QualityConfig, data: QualityData, trained: Keyed, mapped: Keyed, out: Path,
           folder: Path, say: Log) -> dict[str, Any]:
    """Write the tables and figures of the finished trainings and maps."""
    first = cfg.train.seeds[0]
    runs = _runs(trained, mapped, data.classes)
    _csv(folder / "runs.csv", runs)
    comparison = _comparison(runs)
    _csv(folder / "comparison.csv", comparison)
    variants = list(cfg.variants())
    energy = pd.concat([_energy(mapped[v, first], v) for v in variants], ignore_index=True)
    _csv(folder / "energy.csv", energy)
    cluster_rows = []
    for v in variants:
        maps = load_maps(mapped[v, first])
        methods = [m for m in mapped[v, first].result["methods"]]
        means = {m: class_means(maps[m], data.labels, len(data.classes))[0] for m in methods}
        counts = torch.bincount(data.labels, minlength=len(data.classes)).tolist()
        first_of = [int((data.labels == c).nonzero()[0]) if counts[c] else 0
                    for c in range(len(data.classes))]
        figures.plot_class_maps(
            data.images[first_of], {m: maps[m][first_of] for m in methods}, means,
            data.classes, counts, folder / f"class_maps_{v}.png",
            f"{v} (seed {first}): maps per true grade on {len(data.labels)} test images",
            None if data.structures is None else data.structures[first_of],
            None if data.degradation is None else data.degradation[first_of])
        found, composition = {}, {}
        for m in methods:
            for how in cfg.validation.cluster_methods:
                c = cluster_maps(maps[m], k=cfg.validation.clusters, method=how, seed=first)
                name = f"{m} / {how}"
                found[name] = c
                comp = pd.crosstab(c.labels.numpy(), [data.classes[int(g)] for g in data.labels]
                                   ).reindex(index=range(c.k), columns=data.classes,
                                             fill_value=0)
                composition[name] = comp
                for j in range(c.k):
                    cluster_rows.append({"variant": v, "method": m, "clustering": how,
                                         "cluster": j, "images": int(c.sizes[j]),
                                         "share": float(c.shares[j]),
                                         **{f"grade_{g}": int(comp.loc[j, g])
                                            for g in data.classes}})
        figures.plot_clusters(found, composition, folder / f"clusters_{v}.png",
                              f"{v} (seed {first}): clusters of the test images' maps "
                              f"(k = {cfg.validation.clusters}); each panel the cluster's "
                              "mean map")
    _csv(folder / "clusters.csv", pd.DataFrame(cluster_rows))
    confusion = {f"{v} (seed {first})": np.array(_metrics(trained[v, first])["confusion"])
                 for v in variants}
    figures.plot_confusion(confusion, data.classes, folder / "confusion.png",
                           f"Test-split confusion matrices ({len(data.splits['test'])} images)")
    if "fgrnet" in variants:
        _reconstructions(cfg, data, trained["fgrnet", first], folder)
    figures.plot_comparison(runs, METRICS, folder / "comparison.png",
                            f"Plain classifier vs FGR-Net, {len(cfg.train.seeds)} seeds",
                            _chance(energy, cfg.validation.compare_method))
    _summary(cfg, data, runs, comparison, energy, out / "summary.md")
    say(f"report: tables and figures in {folder}")
    return {"variants": variants, "seeds": list(cfg.train.seeds)}


def _metrics(stage: Stage) -> dict[str, Any]:
    return json.loads((stage.folder / "metrics.json").read_text())


def _runs(trained: Keyed, mapped: Keyed, classes: list[str]) -> pd.DataFrame:
    rows = []
    for (variant, seed), t in trained.items():
        m = _metrics(t)
        maps = mapped[variant, seed].result
        rows.append({"variant": variant, "seed": seed, "acc": m["acc"],
                     "macro_f1": m["macro_f1"],
                     **{f"recall_{c}": m["recall"][c] for c in classes},
                     "recon_mse": m["recon_mse"],
                     **{k: maps.get(k) for k in ("energy_structures", "energy_degradation",
                                                 "deletion_auc")},
                     "best_epoch": m["best_epoch"], "train_seconds": m["train_seconds"]})
    return pd.DataFrame(rows)


def _comparison(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (ddof 1) over seeds of every numeric column, per variant."""
    cols = [c for c in runs.columns if c not in ("variant", "seed", "best_epoch")
            and runs[c].notna().any()]
    g = runs.groupby("variant", sort=False)[cols]
    mean, std = g.mean(), g.std(ddof=1)
    out = pd.DataFrame(index=mean.index)
    out["seeds"] = runs.groupby("variant", sort=False).size()
    for c in cols:
        out[f"{c}_mean"], out[f"{c}_std"] = mean[c], std[c]
    return out.reset_index()


def _energy(stage: Stage, variant: str) -> pd.DataFrame:
    """Per method and true grade: mean energy on the masks, the masks' area (a uniform
    map's score) and deletion AUC."""
    table = pd.read_csv(stage.folder / "per_image.csv")
    cols = [c for c in table.columns if c.startswith(("energy_", "area_")) or c == "deletion_auc"]
    out = table.groupby(["method", "grade"], sort=False)[cols].mean().reset_index()
    out.insert(0, "variant", variant)
    out["images"] = table.groupby(["method", "grade"], sort=False).size().to_numpy()
    return out


def _chance(energy: pd.DataFrame, method: str) -> dict[str, float]:
    """What a uniform map scores on each energy metric: the mean mask area over the
    grades the metric counts (degradation: the grades that have one)."""
    rows = energy[energy["method"] == method]
    out = {}
    for c in rows.columns:
        if c.startswith("area_"):
            areas = rows.loc[rows[c] > 0, c]
            if len(areas):
                out[f"energy_{c[5:]}"] = float(areas.mean())
    return out


def _reconstructions(cfg: QualityConfig, data: QualityData, trained: Stage, folder: Path
                     ) -> None:
    from viscope import models
    from viscope.train.features import forward_with_reconstruction

    pick = stratified_head(data.labels.numpy(), cfg.validation.reconstructions)
    net = models.create(_metrics(trained)["checkpoint"]).eval()
    with torch.no_grad():
        _, _, recon = forward_with_reconstruction(net, data.images[pick])
    figures.plot_reconstructions(data.images[pick], recon.float().cpu(), data.labels[pick],
                                 data.classes, folder / "reconstructions.png",
                                 "FGR-Net: test images (top) and their reconstructions "
                                 "(bottom)")


def _csv(path: Path, table: pd.DataFrame) -> None:
    atomic_write(path, lambda p: table.to_csv(p, index=False))


def _cell(row: pd.Series, metric: str) -> str:
    m, s = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if m is None or not np.isfinite(m):
        return "—"
    return f"{m:.3f}" if s is None or not np.isfinite(s) else f"{m:.3f} ± {s:.3f}"


def _summary(cfg: QualityConfig, data: QualityData, runs: pd.DataFrame,
             comparison: pd.DataFrame, energy: pd.DataFrame, path: Path) -> None:
    v = cfg.validation
    metrics = [m for m in METRICS if f"{m}_mean" in comparison]
    lines = [
        f"# {cfg.name}: image quality, plain classifier vs FGR-Net", "",
        f"Data: {cfg.data.csv or cfg.data.dataset}, {len(data.splits['train'])} train / "
        f"{len(data.splits['val'])} val / {len(data.splits['test'])} test images at "
        f"{cfg.data.image_size} px; grades {', '.join(data.classes)}. Model: "
        f"{cfg.model.name} {cfg.model.args}; loss {cfg.train.ce_weight} CE + w MSE with w = 0 "
        f"(plain) or {cfg.train.recon_weight} (FGR-Net); {cfg.train.epochs} epochs, epoch "
        f"chosen on validation accuracy; seeds {cfg.train.seeds}.", "",
        f"Test split, mean ± std over seeds; maps ({v.compare_method}, target "
        f"{v.target}) of {len(data.labels)} test images:", "",
        "| variant | seeds | " + " | ".join(METRICS[m] for m in metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for _, row in comparison.iterrows():
        lines.append(f"| {row['variant']} | {row['seeds']} | "
                     + " | ".join(_cell(row, m) for m in metrics) + " |")
    uniform = _chance(energy, v.compare_method)
    if uniform:
        chance = ", ".join(f"{k[7:]} {val:.3f}" for k, val in uniform.items())
        lines += ["", f"Energy is the share of a map's energy inside the mask; a uniform map "
                  f"scores the mask's area ({chance} on these images). Energy on the "
                  "degradation counts only images that have one (usable, reject)."]
    recall = [c for c in runs.columns if c.startswith("recall_")]
    lines += ["", "Per-class recall (mean over seeds): " + "; ".join(
        f"{variant}: " + ", ".join(f"{c[7:]} {g[c].mean():.3f}" for c in recall)
        for variant, g in runs.groupby("variant", sort=False)), "",
        "Files: report/runs.csv (every run), report/comparison.csv, report/energy.csv "
        "(per method and grade, first seed), report/clusters.csv, and the figures in "
        "report/ (confusion, reconstructions, class_maps_*, clusters_*, comparison)."]
    atomic_write_text(path, "\n".join(lines) + "\n")
