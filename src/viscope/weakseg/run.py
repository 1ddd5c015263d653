"""``viscope.weakseg.run``: image-level labels → classifier → CAMs → pseudo-masks → UNet,
validated against the real masks that exist.

Run folder (each stage a cached :class:`~viscope.stages.Stage`; a re-run skips finished
stages, a changed setting re-runs its stage and those after it)::

    OUT/config.yaml, environment.json
    OUT/classifier/   fit/ (best.pt, train.json), classifier.csv (per true class)
    OUT/cam/          maps.npz (train / val / test maps, normalised per image)
    OUT/pseudo/       sweep.csv, sweep.png (threshold chosen on val), masks/<split>/*.png
                      (0 background, 255 foreground, 128 ignored), gallery.png
    OUT/unet-pseudo/  fit/ (the UNet trained on pseudo-masks)
    OUT/unet-supervised/  fit/ (trained on real masks: the upper bound, when they exist)
    OUT/evaluate/     per_image.csv, density.png
    OUT/results.csv, density.csv, summary.md

The test split is used only in ``evaluate``: the threshold is chosen on validation images
that have real masks; each UNet's epoch is selected on the validation split (pseudo-masks
for ``unet-pseudo``, real masks for ``unet-supervised``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from viscope.errors import ViscopeError
from viscope.io import atomic_write
from viscope.stages import Stage, open_run_folder
from viscope.weakseg.config import WeaksegConfig, load_config
from viscope.weakseg.tensors import SplitTensors, TensorDataset, class_subset, load_split

Log = Callable[[str], None]
SPLITS = ("train", "val", "test")
ORDINAL = ("A", "B", "C", "D")


@dataclass
class WeaksegResult:
    """What :func:`run` produced.

    Attributes:
        out: the run folder.
        results: ``results.csv``: one row per method (Dice / IoU mean and std on the
            test images with real masks, and Dice per class).
        threshold: the threshold that binarised the maps.
        classifier_acc: the classifier's test accuracy on its own classes.
        density: ``density.csv`` (per test image: class, percent density of the UNet,
            and of the real mask where there is one), or ``None`` when the classes are not
            density grades.
        spearman: Spearman correlation of the UNet's percent density with the class
            (``None`` as above).
        ran: the stages computed by this call (the others were finished already).
    """

    out: Path
    results: pd.DataFrame
    threshold: float | None
    classifier_acc: float | None
    density: pd.DataFrame | None
    spearman: float | None
    ran: list[str]


def run(config: WeaksegConfig | str | Path, out: str | Path, *, log: Log | None = print,
        lock_timeout: float = 600.0) -> WeaksegResult:
    """Run the weak-label pipeline of ``config`` into ``out`` (resumable; see the module).

    Args:
        config: a :class:`WeaksegConfig` or a YAML file.
        out: the run folder.
        log: where progress lines go (``None``: nowhere).
        lock_timeout: seconds without a heartbeat after which the run folder's lock
            (``OUT/.locks/weakseg.lock``, held while this runs) is a dead worker's.

    Returns:
        The :class:`WeaksegResult`.

    Raises:
        ViscopeError: bad settings or data (one line; finished stages are kept), or
            another live worker is running ``out``.
    """
    cfg = config if isinstance(config, WeaksegConfig) else load_config(config)
    from viscope.experiments.units import LOCKS, UnitLock

    # one chain of stages: two workers on one folder would run the same stage, so the
    # second is refused (a dead worker's lock is taken over after the timeout)
    lock = UnitLock(Path(out) / LOCKS / "weakseg.lock", timeout=lock_timeout)
    if not lock.acquire():
        holder = (lock.holder() or {}).get("owner", "another worker")
        raise ViscopeError(
            f"{out} is being run by {holder} ({lock.path}); wait for it to finish, or use "
            f"another --out. A dead worker's lock is taken over {lock_timeout:.0f} s after "
            "its last heartbeat.")
    try:
        return _run(cfg, Path(out), log)
    finally:
        lock.release()


def _run(cfg: WeaksegConfig, out: Path, log: Log | None) -> WeaksegResult:
    say = log or (lambda _s: None)
    out = open_run_folder(out, cfg.model_dump())
    started = time.perf_counter()
    splits = _load(cfg)
    from viscope.weakseg import stages  # the stage bodies

    ran: list[str] = []
    data_inputs = cfg.data.model_dump()
    clf = Stage(out, "classifier", {"data": data_inputs, "classifier": cfg.classifier.model_dump()})
    cam = Stage(out, "cam", {"cam": cfg.cam.model_dump()}, after=[clf])
    pseudo = Stage(out, "pseudo", {"pseudo": cfg.pseudo.model_dump()}, after=[cam])
    unet_in = {"data": data_inputs, "unet": cfg.unet.model_dump()}
    unet_p = Stage(out, "unet-pseudo", unet_in, after=[pseudo])
    supervised = cfg.unet.supervised and _has_train_masks(splits)
    unet_s = Stage(out, "unet-supervised", unet_in) if supervised else None
    evaluate = Stage(out, "evaluate", {"gallery": cfg.gallery},
                     after=[s for s in (pseudo, unet_p, unet_s) if s is not None])

    for stage, body in (
        (clf, lambda: stages.train_classifier(cfg, splits, clf.folder, say)),
        (cam, lambda: stages.compute_maps(cfg, splits, clf, cam.folder, say)),
        (pseudo, lambda: stages.make_pseudo_masks(cfg, splits, cam, pseudo.folder, say)),
        (unet_p, lambda: stages.train_unet(cfg, splits, unet_p.folder, say, pseudo=pseudo)),
        (unet_s, lambda: stages.train_unet(cfg, splits, unet_s.folder, say, pseudo=None)),
        (evaluate, lambda: stages.evaluate(cfg, splits, out, pseudo, cam, unet_p, unet_s,
                                           evaluate.folder, say)),
    ):
        if stage is not None and stage.run(body, say):
            ran.append(stage.name)
    if not supervised:
        say("unet-supervised: not trained (no real masks for training images); its row in "
            "results.csv says unavailable")
    say(f"weakseg: {time.perf_counter() - started:.0f} s; results in {out / 'results.csv'}")
    return _result(out, pseudo, clf, evaluate, ran)


def _load(cfg: WeaksegConfig) -> dict[str, SplitTensors]:
    """Every split in memory (the dataset is built and checked once, then split)."""
    from viscope import data
    from viscope.data.base import SubsetDataset
    from viscope.data.density import check_two_classes

    d = cfg.data
    name = d.csv if d.csv is not None else d.dataset
    if name is None:
        raise ViscopeError(
            "Expected data.csv (a CSV path,density[,mask_path]) or data.dataset; got neither. "
            "Pass --set data.csv=/path/to/density.csv."
        )
    full = data.create(name, size=d.image_size, n=d.n, seed=d.seed, skip_corrupt=d.skip_invalid)
    check_two_classes(full, str(name))
    parts = data.split_indices(full, tuple(d.fractions), d.seed)
    splits = {s: load_split(SubsetDataset(full, parts[s], name=s, seed=d.seed)) for s in SPLITS}
    _check_settings(cfg, splits)
    return splits


def _check_settings(cfg: WeaksegConfig, splits: dict[str, SplitTensors]) -> None:
    """Settings the data cannot serve, refused before anything is trained."""
    if cfg.pseudo.roi == "given" and splits["train"].roi is None:
        raise ViscopeError(
            "Expected a dataset that gives its region of interest (mammo's breast masks) for "
            "pseudo.roi=given; this one does not. Use --set pseudo.roi=otsu."
        )
    val = splits["val"]
    if cfg.pseudo.threshold == "sweep" and (val.masks is None or not val.available.any()):
        raise ViscopeError(
            "Expected validation images with real masks to choose the threshold "
            "(pseudo.threshold=sweep); none has one. Use --set pseudo.threshold=otsu (or "
            "fixed with pseudo.value)."
        )


def _has_train_masks(splits: dict[str, SplitTensors]) -> bool:
    return bool(splits["train"].available.any() and splits["val"].available.any())


def _result(out: Path, pseudo: Stage, clf: Stage, evaluate: Stage, ran: list[str]
            ) -> WeaksegResult:
    density_path = out / "density.csv"
    return WeaksegResult(
        out=out,
        results=pd.read_csv(out / "results.csv"),
        threshold=pseudo.result.get("threshold"),
        classifier_acc=clf.result.get("test_acc"),
        density=pd.read_csv(density_path) if density_path.exists() else None,
        spearman=evaluate.result.get("spearman"),
        ran=ran,
    )


def ordinal_classes(classes: list[str]) -> bool:
    """Whether the class names are density grades (a subset of A-D, in order)."""
    return len(classes) >= 2 and all(c in ORDINAL for c in classes) and classes == sorted(classes)


def save_npz(path: Path, **arrays: np.ndarray | torch.Tensor) -> None:
    """``np.savez_compressed`` atomically."""
    plain = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in arrays.items()}

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.savez_compressed(f, **plain)

    atomic_write(path, write)


def load_npz(path: Path) -> dict[str, torch.Tensor]:
    """The arrays of :func:`save_npz`, as tensors."""
    with np.load(path) as z:
        return {k: torch.from_numpy(z[k]) for k in z.files}


__all__ = ["TensorDataset", "WeaksegResult", "class_subset", "run"]
