"""The stage bodies of :func:`viscope.experiments.quality.run.run` (each returns the small
result its :class:`~viscope.stages.Stage` records; tables, maps and figures go to files)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from viscope.errors import ViscopeError, suggest
from viscope.experiments.quality.config import QualityConfig
from viscope.experiments.quality.run import QualityData
from viscope.io import atomic_write, atomic_write_json
from viscope.stages import Stage
from viscope.weakseg.run import load_npz, save_npz

Log = Callable[[str], None]

#: the comparison table's metrics and how the figure and summary name them
METRICS = {
    "acc": "test accuracy",
    "macro_f1": "test macro-F1",
    "energy_structures": "map energy on retinal structures",
    "energy_degradation": "map energy on the degradation",
    "deletion_auc": "deletion AUC (lower: more faithful)",
}


def check_settings(cfg: QualityConfig, data: QualityData) -> None:
    """Settings the data or the registries cannot serve, refused before any training."""
    from viscope.explain import list_methods

    v = cfg.validation
    known = list_methods()
    for m in [*v.methods, v.compare_method, *v.options]:
        if m not in known:
            raise ViscopeError(
                f"Unknown explanation method {m!r} in validation.{suggest(m, known)} "
                f"Expected names of `viscope list methods`: {', '.join(known)}."
            )
    if len(data.explained) < v.clusters:
        raise ViscopeError(
            f"Expected at least validation.clusters={v.clusters} explained test images; got "
            f"{len(data.explained)}. Lower validation.clusters or use more data."
        )


def _device(cfg: QualityConfig) -> torch.device:
    wants = cfg.run.accelerator in ("gpu", "cuda", "auto")
    return torch.device("cuda" if wants and torch.cuda.is_available() else "cpu")


# -- training -------------------------------------------------------------------------------

def train_variant(cfg: QualityConfig, data: QualityData, recon_weight: float, seed: int,
                  folder: Path, say: Log) -> dict[str, Any]:
    """Train one variant with one seed; test metrics into ``metrics.json``."""
    from viscope import models
    from viscope.train import fit

    t = cfg.train
    objectives = [f"ce:{t.ce_weight}"] + ([f"recon:{recon_weight}"] if recon_weight > 0 else [])
    say(f"{folder.name}: {cfg.model.name} ({', '.join(objectives)}), {t.epochs} epochs")
    torch.manual_seed(seed)
    model = models.create(cfg.model.name, num_classes=len(data.classes), **cfg.model.args)
    result = fit(model, data.splits, out=folder / "fit", epochs=t.epochs, lr=t.lr,
                 weight_decay=t.weight_decay, batch_size=t.batch_size, augment=t.augment,
                 objectives=objectives, monitor="val_acc", image_size=cfg.data.image_size,
                 seed=seed, accelerator=cfg.run.accelerator, num_workers=cfg.run.num_workers,
                 progress=cfg.run.progress)
    net = result.model.eval()
    logits, labels, recon_mse = predict(net, data.splits["test"], cfg.run.batch_size,
                                        _device(cfg), reconstruct=recon_weight > 0)
    metrics = classification_metrics(logits, labels, data.classes)
    metrics.update(recon_mse=recon_mse, checkpoint=str(result.checkpoint),
                   best_epoch=result.best_epoch, train_seconds=result.seconds)
    atomic_write_json(folder / "metrics.json", metrics)
    say(f"{folder.name}: test accuracy {metrics['acc']:.3f}, macro-F1 "
        f"{metrics['macro_f1']:.3f}" + (f", reconstruction MSE {recon_mse:.4f}"
                                        if recon_mse is not None else ""))
    return metrics


@torch.no_grad()
def predict(net: torch.nn.Module, split: Dataset, batch_size: int, device: torch.device,
            reconstruct: bool = False) -> tuple[Tensor, Tensor, float | None]:
    """Logits and labels of every item of ``split``; with ``reconstruct``, the mean
    squared error of the model's reconstructions too."""
    from viscope.train.features import forward_with_reconstruction

    net = net.to(device)
    logits, labels, sq, pixels = [], [], 0.0, 0
    for batch in DataLoader(split, batch_size=batch_size, shuffle=False):
        x = batch[0].to(device)
        if reconstruct:
            out, _, recon = forward_with_reconstruction(net, x)
            sq += float(((recon.float() - x) ** 2).sum())
            pixels += x.numel()
        else:
            out = net(x)
        logits.append(out.float().cpu())
        labels.append(torch.as_tensor(batch[1]))
    return torch.cat(logits), torch.cat(labels), (sq / pixels if reconstruct else None)


def classification_metrics(logits: Tensor, labels: Tensor, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class recall and the confusion matrix (torchmetrics)."""
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_recall,
    )

    k = len(classes)
    pred = logits.argmax(1)
    recall = multiclass_recall(pred, labels, k, average="none")
    return {
        "acc": float(multiclass_accuracy(pred, labels, k, average="micro")),
        "macro_f1": float(multiclass_f1_score(pred, labels, k, average="macro")),
        "recall": {c: float(r) for c, r in zip(classes, recall, strict=True)},
        "confusion": multiclass_confusion_matrix(pred, labels, k).tolist(),
        "test_images": int(len(labels)),
    }


# -- maps -----------------------------------------------------------------------------------

def explain_variant(cfg: QualityConfig, data: QualityData, trained: Stage, folder: Path,
                    say: Log, *, all_methods: bool) -> dict[str, Any]:
    """Maps of the explained test images (every method on the first seed, the comparison
    method on the others), their energy on the masks and deletion AUC."""
    from viscope import models
    from viscope.evaluate.faithfulness import deletion_auc
    from viscope.evaluate.localisation import energy_pointing_game
    from viscope.explain import METHODS, attribute

    v = cfg.validation
    device = _device(cfg)
    net = models.create(trained.result["checkpoint"]).eval().to(device)
    images = data.images.to(device)
    with torch.no_grad():
        predicted = torch.cat([net(images[i:i + cfg.run.batch_size]).argmax(1)
                               for i in range(0, len(images), cfg.run.batch_size)]).cpu()
    target = predicted if v.target == "predicted" else data.labels
    methods = list(dict.fromkeys([v.compare_method, *(v.methods if all_methods else [])]))
    maps: dict[str, Tensor] = {}
    rows = []
    for method in methods:
        opts = dict(v.options.get(method, {}))
        layer = v.layer if METHODS.get(method).uses_layer else "auto"
        parts = []
        for i in range(0, len(images), cfg.run.batch_size):
            sl = slice(i, i + cfg.run.batch_size)
            parts.append(attribute(net, images[sl], method, layer=layer,
                                   target=target[sl].to(device), **opts).float().cpu())
        m = torch.cat(parts)
        maps[method] = m
        auc = deletion_auc(net, images, m.to(device), target.to(device),
                           steps=v.deletion_steps).cpu()
        table = pd.DataFrame({"method": method, "image": data.explained,
                              "grade": [data.classes[int(c)] for c in data.labels],
                              "predicted": [data.classes[int(c)] for c in predicted],
                              "deletion_auc": auc.numpy()})
        for name, masks in (("structures", data.structures), ("degradation", data.degradation)):
            if masks is None:
                continue
            area = masks.flatten(1).mean(1)
            energy = energy_pointing_game(m, masks)
            table[f"energy_{name}"] = torch.where(area > 0, energy, torch.nan).numpy()
            table[f"area_{name}"] = area.numpy()  # what a uniform map would score
        rows.append(table)
        say(f"{folder.name}: {method} maps of {len(m)} test images")
    per_image = pd.concat(rows, ignore_index=True)
    atomic_write(folder / "per_image.csv", lambda p: per_image.to_csv(p, index=False))
    save_npz(folder / "maps.npz", predicted=predicted, **maps)
    first = per_image[per_image["method"] == v.compare_method]
    return {"methods": methods, **{k: _mean(first, k) for k in
                                   ("energy_structures", "energy_degradation", "deletion_auc")}}


def _mean(table: pd.DataFrame, column: str) -> float | None:
    if column not in table:
        return None
    value = float(np.nanmean(table[column].to_numpy(float))) if table[column].notna().any() \
        else math.nan
    return None if math.isnan(value) else value


def load_maps(stage: Stage) -> dict[str, Tensor]:
    """``maps.npz`` of a maps stage."""
    return load_npz(stage.folder / "maps.npz")
