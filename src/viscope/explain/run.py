"""``explain_command``: what ``viscope explain`` does, as a function that writes a run folder
(its command-line options are in :mod:`viscope.explain.command`).

The folder holds ``maps.npz`` (one (N, H, W) array per method, plus ``images``, ``labels``,
``indices`` and ``masks``), ``metrics.csv`` (one row per image x method),
``metrics_summary.csv`` (the mean per method), ``overlays.png`` (the first
:data:`MAX_OVERLAYS` images; its title says so when more were explained),
``config.yaml`` (the resolved arguments) and ``environment.json``.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn

from viscope import data, models
from viscope.errors import ViscopeError, suggest
from viscope.evaluate import (
    deletion_auc,
    energy_pointing_game,
    insertion_auc,
    iou,
    pointing_game,
)
from viscope.explain.api import METHODS, attribute, list_methods
from viscope.explain.figures import overlay_grid, overlay_title
from viscope.explain.layouts import auto_layer
from viscope.io import atomic_write, atomic_write_json, atomic_write_text, environment
from viscope.models.checkpoint import is_checkpoint_path

#: Images drawn in ``overlays.png``.
MAX_OVERLAYS = 8
#: Images explained when ``samples`` is not given (all of them when the split has fewer).
DEFAULT_SAMPLES = 16
TARGETS = ("true", "predicted")
#: Options that keep a method's one-image probe (:func:`_check_methods_apply`) cheap:
#: its checks run, its cost does not.
PROBE_OPTIONS: dict[str, dict[str, Any]] = {
    "rise": {"n_masks": 2, "chunk": 2}, "cbrise": {"max_masks": 2, "chunk": 2},
    "integrated_gradients": {"n_steps": 2}, "smoothgrad": {"n_samples": 1},
}
FAITHFULNESS = ("deletion_auc", "insertion_auc")
LOCALISATION = ("pointing_game", "energy_pointing_game", "iou")


def explain_command(
    model: str,
    dataset: str,
    methods: list[str],
    samples: int | None,
    out: Path,
    layer: str = "auto",
    image_size: int = 32,
    model_args: dict[str, Any] | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    seed: int = 0,
    split: str | None = None,
    skip_corrupt: bool = False,
    target: str | int = "true",
) -> dict[str, Path]:
    """Explain ``samples`` images of a dataset split with each method and score the maps.

    Each image is explained for its ``target`` class, and the metrics score that class.
    Before any map is computed, every method is tried on one image (with cheap settings)
    so that one that does not apply to the model (rollout on a CNN, a missing CAM layer)
    stops the run with nothing computed or written. Metrics: deletion and insertion AUC
    (:mod:`viscope.evaluate`), and where the dataset has masks the pointing game (with
    the paper's 15 px tolerance at 224 px, scaled to the image), the energy pointing game
    and the IoU of ``map >= 0.5``.

    Args:
        model: a model name (timm, ``torchvision:``, FasterViT) or a checkpoint path; a
            name without ``num_classes`` in ``model_args`` gets the dataset's class count.
        dataset: a built-in dataset name, a folder or a CSV file.
        methods: names of :func:`~viscope.explain.list_methods`.
        samples: images to explain, drawn with ``seed`` from the split; ``None``:
            :data:`DEFAULT_SAMPLES`, or the whole split when it has fewer.
        out: the run folder (created).
        layer: the layer of CAM methods (``"auto"``: :func:`auto_layer`); other methods
            ignore it.
        image_size: image side for the dataset.
        model_args: keyword arguments of :func:`viscope.models.create`.
        device: ``"cpu"``, ``"cuda"``, ...
        batch_size: images per ``attribute`` call.
        seed: seed of the dataset (generation and split, as in training), of the draw and
            of a randomly initialised model's weights.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``; ``None``: ``"test"``
            for a built-in dataset (the images training held out), ``"all"`` for a
            folder or CSV file (a user's own images, explained whole).
        skip_corrupt: skip unreadable files of a folder or CSV dataset (one warning).
        target: ``"true"`` (each image's label), ``"predicted"`` (the class the model
            predicts) or a class index of the model's outputs (an int or its digits).

    Returns:
        The files written: ``maps``, ``metrics``, ``summary``, ``overlays``, ``config``,
        ``environment``.

    Raises:
        ViscopeError: an unknown method (listing the known ones), model, dataset, split,
            target or layer; methods that do not apply to the model (all named, before
            any is computed); ``samples`` or ``batch_size`` not positive or more samples
            than the split has; a model with fewer outputs than the dataset has classes, or
            a target class it does not have; CUDA unavailable.

    Example:
        >>> import tempfile
        >>> files = explain_command("test_efficientnet", "shapes", ["gradcam"], 2,
        ...                         Path(tempfile.mkdtemp()), batch_size=2)  # doctest: +SKIP
    """
    methods = _check_methods(methods)
    target = _parse_target(target)
    for name, value in (("samples", samples), ("batch_size", batch_size)):
        if value is None and name == "samples":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ViscopeError(f"Expected {name} to be a positive int; got {value!r}.")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ViscopeError(f"device={device!r} but CUDA is not available here; use 'cpu'.")
    out = Path(out)
    if split is None:  # a built-in name wins over a folder of that name, as in data.create
        split = "test" if isinstance(dataset, str) and dataset in data.list_datasets() else "all"
    ds = data.create(dataset, split=split, size=image_size, seed=seed,
                     skip_corrupt=skip_corrupt)
    kwargs = dict(model_args or {})
    if not is_checkpoint_path(model) and "num_classes" not in kwargs:
        kwargs["num_classes"] = len(ds.classes)
    # Our own freshly built model: eval mode so BatchNorm and dropout do not couple images.
    with torch.random.fork_rng(devices=[]):  # random-init weights follow ``seed``
        torch.manual_seed(seed)
        net = models.create(model, **kwargs).to(device).eval()
    indices, images, labels, masks = _draw(ds, samples, seed, split, dataset)
    classes = _check_outputs(net, images[:1].to(device), len(ds.classes))
    targets = _targets(net, images, labels, target, classes, batch_size, device)
    cam_layer = auto_layer(net, tuple(images.shape[-2:])) if layer in (None, "auto") else layer
    config = {
        "command": "explain", "model": str(model), "model_args": kwargs,
        "dataset": str(dataset), "split": split, "image_size": image_size,
        "methods": methods, "samples": len(indices), "target": target, "layer": layer,
        "resolved_layer": cam_layer if any(METHODS.get(m).uses_layer for m in methods) else None,
        "device": str(device), "batch_size": batch_size, "seed": seed,
        "indices": indices.tolist(), "out": str(out),
    }
    _check_methods_apply(net, images[:1].to(device), targets[:1], methods, cam_layer)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "config": atomic_write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False)),
        "environment": atomic_write_json(out / "environment.json", environment()),
    }
    maps: dict[str, torch.Tensor] = {}
    scores: dict[str, dict[str, torch.Tensor]] = {}
    for method in methods:
        start = time.perf_counter()
        used = cam_layer if METHODS.get(method).uses_layer else "auto"
        maps[method] = _maps(net, images, targets, method, used, batch_size, device)
        mid = time.perf_counter()
        scores[method] = _metrics(net, images, targets, masks, maps[method], batch_size, device)
        end = time.perf_counter()
        print(f"{method}: {len(indices)} maps in {mid - start:.1f} s, "
              f"metrics in {end - mid:.1f} s", flush=True)
    files.update(_write(out, ds, indices, images, labels, targets, target, masks, maps, scores,
                        model, dataset, split))
    return files


def _check_methods(methods: list[str]) -> list[str]:
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    known = list_methods()
    if not methods:
        raise ViscopeError(f"Expected at least one method; known methods: {', '.join(known)}.")
    for m in methods:
        if m not in known:
            raise ViscopeError(
                f"Unknown method {m!r}.{suggest(m, known)} Known methods: {', '.join(known)}."
            )
    return list(dict.fromkeys(methods))


def _parse_target(target: str | int) -> str | int:
    """``"true"``, ``"predicted"`` or a class index (an int, or a string of digits)."""
    if isinstance(target, str) and target.strip().lower() in TARGETS:
        return target.strip().lower()
    if isinstance(target, str) and target.strip().isdigit():
        return int(target)
    if isinstance(target, int) and not isinstance(target, bool) and target >= 0:
        return target
    raise ViscopeError(
        f"Expected target 'true' (the label), 'predicted' or a class index such as 0; got "
        f"{target!r}."
    )


def _draw(ds, samples: int | None, seed: int, split: str, dataset: str):
    """``samples`` items of ``ds`` drawn with ``seed``, in dataset order (``None``: up to
    :data:`DEFAULT_SAMPLES`)."""
    if samples is None:
        samples = min(DEFAULT_SAMPLES, len(ds))
    if samples > len(ds):
        other = (f"; or explain the whole dataset with --split all ({len(ds.dataset)} images)"
                 if split != "all" and hasattr(ds, "dataset") else "")
        raise ViscopeError(
            f"Expected samples <= {len(ds)} (the images in the {split!r} split of "
            f"{dataset}); got {samples}. Ask for at most {len(ds)}{other}."
        )
    indices = np.sort(np.random.default_rng(seed).permutation(len(ds))[:samples])
    items = [ds[int(i)] for i in indices]
    images = torch.stack([it[0] for it in items])
    labels = torch.tensor([int(it[1]) for it in items])
    has_masks = getattr(ds, "has_masks", False) and all(len(it) > 2 for it in items)
    masks = torch.stack([it[2] for it in items])[:, 0] if has_masks else None
    return indices, images, labels, masks


def _check_outputs(net: nn.Module, x: torch.Tensor, classes: int) -> int:
    """The model's number of outputs, checked to cover the dataset's ``classes``."""
    with torch.no_grad():
        outputs = net(x)
    if outputs.ndim != 2 or outputs.shape[1] < classes:
        raise ViscopeError(
            f"Expected the model to output (B, >= {classes}) class scores for this dataset's "
            f"{classes} classes; got {tuple(outputs.shape)}. Pass a model trained on it or "
            "model_args={'num_classes': ...}."
        )
    return int(outputs.shape[1])


def _targets(net, images, labels, target, outputs: int, batch_size, device) -> torch.Tensor:
    """The class explained for each image: its label, the predicted class or one index."""
    if target == "true":
        return labels
    if target == "predicted":
        with torch.no_grad():
            return torch.cat([net(images[s].to(device)).argmax(dim=1).cpu()
                              for s in _batches(len(images), batch_size)])
    if target >= outputs:
        raise ViscopeError(
            f"Expected target in [0, {outputs}) (the model has {outputs} outputs); got "
            f"{target}. Pass a class index below {outputs}, 'true' or 'predicted'."
        )
    return torch.full_like(labels, target)


def _check_methods_apply(net, image, target, methods: list[str], cam_layer) -> None:
    """Try every method on one image (CAMs: Grad-CAM at their layer, which is what can
    fail; the others with :data:`PROBE_OPTIONS`); one error naming each that fails and why.

    Trying is the check the methods themselves make (rollout: timm attention blocks; CAMs:
    the layer exists and reads spatially; options), so it cannot drift from them.
    """
    failed: dict[str, str] = {}
    cam_error: str | None = None
    cam_checked = False
    for method in methods:
        spec = METHODS.get(method)
        if spec.uses_layer and cam_checked:
            if cam_error is not None:
                failed[method] = cam_error
            continue
        probe, layer = ("gradcam", cam_layer) if spec.uses_layer else (method, "auto")
        options = {k: v for k, v in PROBE_OPTIONS.get(probe, {}).items()
                   if spec.options is None or k in spec.options}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a probe's map is not shown
                attribute(net, image, method=probe, layer=layer, target=target.tolist(),
                          **options)
        except ViscopeError as e:
            failed[method] = str(e)
            if spec.uses_layer:
                cam_error = str(e)
        cam_checked = cam_checked or spec.uses_layer
    if failed:
        fine = [m for m in methods if m not in failed]
        why = "; ".join(f"{m}: {e.rstrip('.')}" for m, e in failed.items())
        keep = (f"Keep {', '.join(fine)} (they apply)" if fine else "Choose other methods")
        raise ViscopeError(
            f"Expected every method to apply to {type(models.unwrap(net)).__name__}; "
            f"{', '.join(failed)} {'does' if len(failed) == 1 else 'do'} not ({why}). "
            f"{keep}; nothing was computed."
        )


def _batches(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _maps(net, images, targets, method, layer, batch_size, device) -> torch.Tensor:
    parts = [
        attribute(net, images[s].to(device), method=method, layer=layer,
                  target=targets[s].tolist()).detach().cpu()
        for s in _batches(len(images), batch_size)
    ]
    return torch.cat(parts)


def _metrics(net, images, targets, masks, maps, batch_size, device) -> dict[str, torch.Tensor]:
    rows: dict[str, list[torch.Tensor]] = {}
    for s in _batches(len(images), batch_size):
        x, m, y = images[s].to(device), maps[s].to(device), targets[s].tolist()
        rows.setdefault("deletion_auc", []).append(deletion_auc(net, x, m, y).cpu())
        rows.setdefault("insertion_auc", []).append(insertion_auc(net, x, m, y).cpu())
        if masks is not None:
            g = masks[s].to(device)
            tol = 15 * min(m.shape[-2:]) / 224  # the paper's 15 px at 224 px, scaled
            rows.setdefault("pointing_game", []).append(pointing_game(m, g, tol).cpu())
            rows.setdefault("energy_pointing_game", []).append(energy_pointing_game(m, g).cpu())
            rows.setdefault("iou", []).append(iou(m, g).cpu())
    return {k: torch.cat(v) for k, v in rows.items()}


def _write(out, ds, indices, images, labels, targets, target, masks, maps, scores, model,
           dataset, split):
    arrays = {m: v.numpy().astype(np.float32) for m, v in maps.items()}
    arrays.update(images=images.numpy(), labels=labels.numpy(), indices=indices)
    if masks is not None:
        arrays["masks"] = masks.numpy()

    def save_npz(p: Path) -> None:
        with p.open("wb") as f:
            np.savez_compressed(f, **arrays)

    files = {"maps": atomic_write(out / "maps.npz", save_npz)}
    classes = list(ds.classes)
    rows = []
    for method, metrics in scores.items():
        for i in range(len(indices)):
            row = {"index": int(indices[i]), "label": int(labels[i]),
                   "class": classes[int(labels[i])], "method": method,
                   "target": int(targets[i])}
            row.update({k: float(v[i]) for k, v in metrics.items()})
            rows.append(row)
    table = pd.DataFrame(rows)
    metric_cols = [c for c in (*FAITHFULNESS, *LOCALISATION) if c in table]
    summary = table.groupby("method", sort=False)[metric_cols].mean().reset_index()
    summary.insert(1, "n", len(indices))
    files["metrics"] = atomic_write(out / "metrics.csv", lambda p: table.to_csv(p, index=False))
    files["summary"] = atomic_write(
        out / "metrics_summary.csv", lambda p: summary.to_csv(p, index=False)
    )
    k = min(MAX_OVERLAYS, len(indices))
    overlay_grid(
        images[:k], {m: v[:k] for m, v in maps.items()},
        masks=None if masks is None else masks[:k],
        scores={m: {n: v[:k] for n, v in s.items()} for m, s in scores.items()},
        titles=[f"#{int(indices[i])} {classes[int(labels[i])]}" for i in range(k)],
        path=out / "overlays.png",
        title=overlay_title(
            f"{Path(str(model)).name} on {dataset} ({split} split), target = "
            f"{_target_words(target, classes)}",
            k,
            len(indices),
        ),
    )
    files["overlays"] = out / "overlays.png"
    return files


def _target_words(target: str | int, classes: list[str]) -> str:
    if target == "true":
        return "true class"
    if target == "predicted":
        return "predicted class"
    name = f" ({classes[target]})" if target < len(classes) else ""
    return f"class {target}{name}"
