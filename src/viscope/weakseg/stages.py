"""The stage bodies of :func:`viscope.weakseg.run` (each returns the small result its
:class:`~viscope.stages.Stage` records; the big outputs go to files in its folder)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from viscope.data.base import IGNORE
from viscope.errors import ViscopeError
from viscope.io import atomic_write
from viscope.stages import Stage
from viscope.weakseg.config import WeaksegConfig
from viscope.weakseg.run import SPLITS, load_npz, ordinal_classes, save_npz
from viscope.weakseg.tensors import SplitTensors, TensorDataset, class_subset

Log = Callable[[str], None]


# -- classifier -----------------------------------------------------------------------------

def train_classifier(cfg: WeaksegConfig, splits: dict[str, SplitTensors], folder: Path,
                     say: Log) -> dict[str, Any]:
    """Train the classifier on ``classifier.classes``; ``classifier.csv`` gives, per true
    class of the test split (all classes), how often each trained class is predicted."""
    from viscope import models
    from viscope.train import fit

    c = cfg.classifier
    parts = {s: class_subset(splits[s], c.classes) for s in SPLITS}
    names = parts["train"].classes
    say(f"classifier: {c.model} on {', '.join(names)} "
        f"({len(parts['train'])} train / {len(parts['val'])} val images)")
    torch.manual_seed(c.seed)
    model = models.create(c.model, num_classes=len(names), **c.args)
    result = fit(model, parts, out=folder / "fit", epochs=c.epochs, lr=c.lr,
                 weight_decay=c.weight_decay, batch_size=c.batch_size, augment=c.augment,
                 image_size=cfg.data.image_size, seed=c.seed, accelerator=cfg.run.accelerator,
                 num_workers=cfg.run.num_workers, progress=cfg.run.progress)
    net = result.model.eval()
    test = splits["test"]
    predicted = _predict(net, test.images, cfg.run.batch_size, _device(cfg)).argmax(1)
    rows = []
    for k, cls in enumerate(test.classes):
        sel = test.labels == k
        if not sel.any():
            continue
        row: dict[str, Any] = {"class": cls, "images": int(sel.sum())}
        for j, name in enumerate(names):
            row[f"predicted_{name}"] = float((predicted[sel] == j).float().mean())
        if cls in names:
            row["accuracy"] = row[f"predicted_{cls}"]
        rows.append(row)
    table = pd.DataFrame(rows)
    atomic_write(folder / "classifier.csv", lambda p: table.to_csv(p, index=False))
    say(f"classifier: test accuracy {result.test_acc:.3f} ({' vs '.join(names)})")
    return {"checkpoint": str(result.checkpoint), "test_acc": result.test_acc,
            "classes": names}


def _device(cfg: WeaksegConfig) -> torch.device:
    wants = cfg.run.accelerator in ("gpu", "cuda", "auto")
    return torch.device("cuda" if wants and torch.cuda.is_available() else "cpu")


@torch.no_grad()
def _predict(net: torch.nn.Module, images: Tensor, batch_size: int, device: torch.device
             ) -> Tensor:
    net = net.to(device)
    return torch.cat([net(images[i:i + batch_size].to(device)).float().cpu()
                      for i in range(0, len(images), batch_size)])


# -- maps -----------------------------------------------------------------------------------

def _target(cfg: WeaksegConfig, names: list[str], split: SplitTensors) -> Any:
    """The class explained for each image of ``split``."""
    t = cfg.cam.target.strip()
    if t == "predicted":
        return None
    if t == "true":
        if names != split.classes:
            raise ViscopeError(
                f"Expected cam.target 'true' only when the classifier knows every class; it "
                f"was trained on {names} of {split.classes}. Name the class to explain "
                f"(cam.target={names[-1]}) or train on all (classifier.classes=null)."
            )
        return split.labels
    if t not in names:
        raise ViscopeError(
            f"Expected cam.target to be a class of the classifier ({', '.join(names)}), "
            f"'true' or 'predicted'; got {t!r}."
        )
    return names.index(t)


def compute_maps(cfg: WeaksegConfig, splits: dict[str, SplitTensors], clf: Stage, folder: Path,
                 say: Log) -> dict[str, Any]:
    """The class maps of every image of every split (``maps.npz``)."""
    from viscope import models
    from viscope.weakseg.pseudo import class_maps

    net = models.create(clf.result["checkpoint"]).eval().to(_device(cfg))
    names = list(clf.result["classes"])
    maps = {}
    for s in SPLITS:
        images = splits[s].images.to(_device(cfg))
        maps[s] = class_maps(net, images, _target(cfg, names, splits[s]), method=cfg.cam.method,
                             layer=cfg.cam.layer, scales=tuple(cfg.cam.scales),
                             flip=cfg.cam.flip, batch_size=cfg.run.batch_size).float().cpu()
    save_npz(folder / "maps.npz", **maps)
    say(f"cam: {cfg.cam.method} maps of {sum(len(m) for m in maps.values())} images")
    return {"method": cfg.cam.method}


# -- pseudo-masks ---------------------------------------------------------------------------

def region(cfg: WeaksegConfig, split: SplitTensors) -> Tensor:
    """The region of interest of every image (B, 1, H, W) bool."""
    from viscope.weakseg.pseudo import roi_otsu

    if cfg.pseudo.roi == "given":
        if split.roi is None:
            raise ViscopeError(
                "Expected a dataset that gives its region of interest (mammo's breast masks) "
                "for pseudo.roi=given; this one does not. Use pseudo.roi=otsu."
            )
        return split.roi
    if cfg.pseudo.roi == "otsu":
        return roi_otsu(split.images)
    return torch.ones_like(split.images[:, :1], dtype=torch.bool)


def prepared(cfg: WeaksegConfig, maps: Tensor, images: Tensor) -> Tensor:
    """The maps that are thresholded: refined by the image (``pseudo.refine``) or as they
    are. The threshold sweep, the pseudo-masks and ``cam-threshold`` all read these."""
    from viscope.weakseg.pseudo import refine

    p = cfg.pseudo
    if p.refine == "none":
        return maps
    return refine(maps, images, method=p.refine, radius=p.refine_radius, eps=p.refine_eps)


def choose_threshold(cfg: WeaksegConfig, maps: Tensor, val: SplitTensors, roi: Tensor,
                     folder: Path) -> float | None:
    """The threshold of ``sweep`` (chosen on the validation images with real masks; the
    sweep is written as CSV and figure), ``fixed``'s value, or ``None`` (per image)."""
    from viscope.weakseg.figures import plot_sweep
    from viscope.weakseg.thresholds import best_threshold, sweep

    p = cfg.pseudo
    if p.threshold == "fixed":
        return float(p.value)  # type: ignore[arg-type]
    if p.threshold != "sweep":
        return None
    if val.masks is None or not val.available.any():
        raise ViscopeError(
            "Expected validation images with real masks to choose the threshold "
            "(pseudo.threshold=sweep); none has one. Set pseudo.threshold=otsu (or fixed "
            "with pseudo.value)."
        )
    keep = val.available
    table = sweep(maps[keep], val.masks[keep], p.sweep, roi=roi[keep])
    atomic_write(folder / "sweep.csv", lambda f: table.to_csv(f, index=False))
    chosen = best_threshold(table)
    plot_sweep(table, chosen, folder / "sweep.png", n=int(keep.sum()))
    return chosen


def binarise(cfg: WeaksegConfig, maps: Tensor, images: Tensor, roi: Tensor,
             threshold: float | None, band: bool) -> Tensor:
    """Maps → masks (B, 1, H, W) float in {0, 1} (and IGNORE in the band when ``band``)."""
    from viscope.weakseg.thresholds import confident
    from viscope.weakseg.thresholds import threshold as binary

    p = cfg.pseudo
    if band and p.band is not None:
        low, high = p.band
        if not p.band_around:
            return confident(maps, float(low), float(high), roi=roi).float()
        # around each image's own threshold (one for sweep / fixed, per image for Otsu and
        # percentile): the maps are shifted so that the threshold sits at 0
        cut = (torch.full((len(maps),), float(threshold), dtype=torch.float64)
               if threshold is not None else _per_image_thresholds(cfg, maps, roi))
        shifted = (maps.double() - cut.to(maps.device)[:, None, None]).float()
        return confident(shifted, -float(low), float(high), roi=roi).float()
    if threshold is not None:
        return binary(maps, "fixed", threshold, roi=roi).float()
    return binary(maps, p.threshold, p.value, roi=roi).float()


def _per_image_thresholds(cfg: WeaksegConfig, maps: Tensor, roi: Tensor) -> Tensor:
    """Each map's Otsu or percentile threshold inside the ROI (B,), float64."""
    from viscope.weakseg.thresholds import otsu_thresholds, percentile_thresholds

    if cfg.pseudo.threshold == "otsu":
        return otsu_thresholds(maps, roi[:, 0])
    return percentile_thresholds(maps, float(cfg.pseudo.value), roi[:, 0])  # type: ignore[arg-type]


def make_pseudo_masks(cfg: WeaksegConfig, splits: dict[str, SplitTensors], cam: Stage,
                      folder: Path, say: Log) -> dict[str, Any]:
    """Threshold (chosen on val), pseudo-masks of train and val (PNG and ``masks.npz``), and
    the gallery figure."""
    from viscope.weakseg.figures import plot_gallery, write_mask_pngs

    maps = {s: prepared(cfg, m, splits[s].images)
            for s, m in load_npz(cam.folder / "maps.npz").items() if s in ("train", "val")}
    rois = {s: region(cfg, splits[s]) for s in ("train", "val")}
    chosen = choose_threshold(cfg, maps["val"], splits["val"], rois["val"], folder)
    masks = {}
    for s in ("train", "val"):
        masks[s] = binarise(cfg, maps[s], splits[s].images, rois[s], chosen, band=True)
        write_mask_pngs(masks[s], folder / "masks" / s)
    save_npz(folder / "masks.npz", **masks)
    val = splits["val"]
    plot_gallery(val.images, maps["val"], masks["val"], val.masks, val.available,
                 folder / "gallery.png", n=cfg.gallery, classes=val.classes, labels=val.labels,
                 title=f"Pseudo-masks ({cfg.cam.method} → threshold), validation images")
    ignored = float((masks["train"] == IGNORE).float().mean())
    say("pseudo: threshold " + (f"{chosen:.2f}" if chosen is not None else cfg.pseudo.threshold)
        + (f", {ignored:.1%} of training pixels ignored" if ignored else ""))
    return {"threshold": chosen, "ignored_fraction": ignored}


# -- UNets ----------------------------------------------------------------------------------

def train_unet(cfg: WeaksegConfig, splits: dict[str, SplitTensors], folder: Path, say: Log,
               pseudo: Stage | None) -> dict[str, Any]:
    """Train the UNet on pseudo-masks (``pseudo`` given) or on the real masks (the upper
    bound: images without a mask are all IGNORE). The test split carries real masks."""
    from viscope import models
    from viscope.train import fit

    u = cfg.unet
    if pseudo is not None:
        masks = load_npz(pseudo.folder / "masks.npz")
        train, val = splits["train"], splits["val"]
        keep = torch.ones(len(train), dtype=torch.bool)
        if cfg.pseudo.pseudo_classes == "classifier" and cfg.classifier.classes is not None:
            wanted = [train.classes.index(c) for c in cfg.classifier.classes]
            keep = (train.labels[:, None] == torch.tensor(wanted)[None]).any(1)
        parts = {"train": TensorDataset(train.images[keep], train.labels[keep], train.classes,
                                        masks["train"][keep]),
                 "val": TensorDataset(val.images, val.labels, val.classes, masks["val"])}
        what = "pseudo-masks"
    else:
        parts = {s: TensorDataset(splits[s].images, splits[s].labels, splits[s].classes,
                                  splits[s].masks) for s in ("train", "val")}
        what = "real masks"
    test = splits["test"]
    if test.masks is not None and test.available.any():
        parts["test"] = TensorDataset(test.images, test.labels, test.classes, test.masks)
    say(f"{folder.name}: {u.model} on {what} ({len(parts['train'])} images)")
    torch.manual_seed(u.seed)
    model = models.create(u.model, num_classes=1, **u.args)
    result = fit(model, parts, out=folder / "fit", objectives=["seg"], monitor="val_dice",
                 epochs=u.epochs, lr=u.lr, weight_decay=u.weight_decay,
                 batch_size=u.batch_size, image_size=cfg.data.image_size, seed=u.seed,
                 accelerator=cfg.run.accelerator, num_workers=cfg.run.num_workers,
                 progress=cfg.run.progress)
    return {"checkpoint": str(result.checkpoint), "best_epoch": result.best_epoch,
            "val_dice": result.best_score}


@torch.no_grad()
def segment(cfg: WeaksegConfig, checkpoint: str, images: Tensor, roi: Tensor) -> Tensor:
    """The UNet's masks (B, 1, H, W) bool: probability > ``unet.cutoff``, inside the ROI."""
    from viscope import models

    net = models.create(checkpoint).eval()
    logits = _predict(net, images, cfg.run.batch_size, _device(cfg))
    return (torch.sigmoid(logits) > cfg.unet.cutoff) & roi


# -- evaluation -----------------------------------------------------------------------------

def evaluate(cfg: WeaksegConfig, splits: dict[str, SplitTensors], out: Path, pseudo: Stage,
             cam: Stage, unet_p: Stage, unet_s: Stage | None, folder: Path, say: Log
             ) -> dict[str, Any]:
    """``results.csv`` (each method's Dice / IoU on the test images with real masks, and
    Dice per class), ``density.csv`` / ``density.png`` (percent density per test image
    from the pseudo-mask UNet, against the class), ``summary.md``."""
    from viscope.evaluate.segmentation import dice, iou
    from viscope.weakseg.figures import plot_gallery, write_summary

    test = splits["test"]
    roi = region(cfg, test)
    maps = prepared(cfg, load_npz(cam.folder / "maps.npz")["test"], test.images)
    predictions = {
        "cam-threshold": binarise(cfg, maps, test.images, roi, pseudo.result.get("threshold"),
                                  band=False) > 0.5,
        "unet-pseudo": segment(cfg, unet_p.result["checkpoint"], test.images, roi),
    }
    if unet_s is not None:
        predictions["unet-supervised"] = segment(cfg, unet_s.result["checkpoint"], test.images,
                                                 roi)
    has = test.available if test.masks is not None else torch.zeros(len(test), dtype=torch.bool)
    rows, per_image = [], []
    for method in ("cam-threshold", "unet-pseudo", "unet-supervised"):
        row: dict[str, Any] = {"method": method, "images": int(has.sum())}
        if method not in predictions or not has.any():
            row["note"] = ("unavailable: no real masks for training images"
                           if method not in predictions else "no test image has a real mask")
            rows.append(row)
            continue
        pred = predictions[method][has]
        d = dice(pred, test.masks[has])
        j = iou(pred, test.masks[has])
        row.update(dice_mean=float(d.mean()), dice_std=float(d.std(unbiased=False)),
                   iou_mean=float(j.mean()), iou_std=float(j.std(unbiased=False)))
        labels = test.labels[has]
        for k, cls in enumerate(test.classes):
            sel = labels == k
            if sel.any():
                row[f"dice_{cls}"] = float(d[sel].mean())
        rows.append(row)
        idx = has.nonzero().flatten()
        per_image += [{"method": method, "index": int(test.indices[i]),
                       "class": test.classes[int(test.labels[i])], "dice": float(dv),
                       "iou": float(jv)} for i, dv, jv in zip(idx.tolist(), d, j, strict=True)]
    results = pd.DataFrame(rows)
    atomic_write(out / "results.csv", lambda p: results.to_csv(p, index=False, float_format="%.4f"))
    atomic_write(folder / "per_image.csv",
                 lambda p: pd.DataFrame(per_image).to_csv(p, index=False, float_format="%.4f"))
    spearman, density = _density(test, roi, predictions["unet-pseudo"], out, folder)
    plot_gallery(test.images, maps, predictions["unet-pseudo"].float(), test.masks, has,
                 folder / "gallery.png", n=cfg.gallery, classes=test.classes,
                 labels=test.labels, title="Test images: CAM and the pseudo-mask UNet's mask")
    write_summary(out / "summary.md", cfg, results, pseudo.result.get("threshold"), spearman)
    for r in rows:
        if "dice_mean" in r:
            say(f"evaluate: {r['method']:<16} Dice {r['dice_mean']:.3f} ± {r['dice_std']:.3f}, "
                f"IoU {r['iou_mean']:.3f} ({r['images']} test images)")
    if spearman is not None:
        say(f"evaluate: percent density vs class, Spearman {spearman:.3f}")
    return {"spearman": spearman, "density_images": 0 if density is None else len(density)}


def _density(test: SplitTensors, roi: Tensor, pred: Tensor, out: Path, folder: Path
             ) -> tuple[float | None, pd.DataFrame | None]:
    """Percent density (dense area / region area × 100) per test image and its Spearman
    correlation with the density grade; ``(None, None)`` when classes are not grades."""
    from scipy.stats import spearmanr

    from viscope.weakseg.figures import plot_density

    if not ordinal_classes(test.classes):
        return None, None
    area = roi.flatten(1).sum(1).clamp_min(1).float()
    percent = 100 * (pred & roi).flatten(1).sum(1).float() / area
    table = pd.DataFrame({"index": test.indices, "class": [test.classes[int(k)] for k in
                                                            test.labels],
                          "grade": test.labels.numpy(), "percent_density": percent.numpy()})
    if test.masks is not None:
        real = 100 * ((test.masks > 0.5) & roi).flatten(1).sum(1).float() / area
        table["percent_density_true"] = np.where(test.available.numpy(), real.numpy(), np.nan)
    rho = float(spearmanr(table["grade"], table["percent_density"]).statistic) \
        if table["grade"].nunique() > 1 else None
    atomic_write(out / "density.csv", lambda p: table.to_csv(p, index=False, float_format="%.3f"))
    plot_density(table, test.classes, folder / "density.png", rho)
    return rho, table
