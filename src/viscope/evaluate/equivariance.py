"""Explanation equivariance: does an explanation move with the image?

For each image ``x`` and each parameter value ``theta`` of a transformation family ``T``,
the map of the transformed image, ``E(T(x, theta))``, is compared with the transformed
map of the original, ``T(E(x), theta)``:

* geometric families (rotation, scale, translation, perspective) move the map with the
  family's own warp (:meth:`~viscope.transforms.geometric.GeometricFamily.apply`, the same
  code that warps the images), on maps at the image's resolution; positions the warp
  brings in from outside the image (a map of ones warped the same way falls below
  ``1 - VALID_TOLERANCE`` there) are left out;
* photometric families (brightness, contrast, ...) should not move the map at all, so
  ``T(E(x), theta)`` is ``E(x)`` itself.

Three numbers per family:

* ``correlation``: mean over (image, value) pairs of the Pearson correlation of the two
  maps over the valid positions (pairs where either map is constant there are left out
  and counted in ``undefined``);
* ``difference``: mean absolute difference over the valid positions, in the units of
  :func:`viscope.explain.attribute`'s normalised maps (negatives clipped at the method's
  resolution, upsampled bilinearly, min-max scaled per map to [0, 1]; the original's map
  is warped after that scaling, not scaled again);
* ``ratio``: the Normalized-Variance form of the same question, computed by the
  invariance engine's own streaming state
  (:class:`~viscope.invariance.measures.SameEquivariantNV`, ``variance=True``,
  ``spatial=True``): the maps of the M transformed copies of an image, brought back to the
  original frame (the family's :meth:`inverse` for geometric families, unchanged for
  photometric ones), give ``TV`` = mean over images and positions of the variance over
  the M copies, and ``SV`` = mean over copies and positions of the variance over images;
  ``ratio = TV / SV`` over the positions every value maps back
  (:func:`~viscope.invariance.equivariance.valid_positions`). 0 = the maps move exactly
  with the image; ~1 = they change as much between copies as between images. Being a
  ratio of spreads of the same maps, it compares across families and models.

The measure is not registered as ``measure="explanation"`` in the engine's registry: the
engine feeds each measure's state with a layer's activations from a forward hook, while a
map needs a target, a backward pass and the attribution method's own pass over the whole
model; here the engine's state is reused on maps instead.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from viscope.errors import ViscopeError
from viscope.explain.api import METHODS, attribute
from viscope.explain.layouts import auto_layer
from viscope.explain.targets import resolve_target
from viscope.invariance.equivariance import VALID_TOLERANCE, valid_positions
from viscope.invariance.measures import SameEquivariantNV
from viscope.invariance.plan import check_int, collate, resolve_transform
from viscope.invariance.state import MeasureOptions
from viscope.invariance.stats import finite_mean
from viscope.models.modes import evaluation_mode

TARGETS = ("clean", "predicted")


@dataclass
class FamilyEquivariance:
    """The scores of one family (see the module docstring for their definitions).

    Attributes:
        family: the family's name.
        params: the parameter values measured, one list per value.
        correlation: mean Pearson correlation over (image, value) pairs.
        difference: mean absolute difference of the normalised maps.
        ratio: TV / SV of the maps brought back to the original frame.
        tv: mean variance over transformations (of the aligned maps).
        sv: mean variance over images.
        per_param: ``{"correlation": [...], "difference": [...]}``, one value per parameter.
        pairs: the (image, value) pairs compared.
        undefined: pairs without a correlation (a map constant on the valid positions).
    """

    family: str
    params: list
    correlation: float
    difference: float
    ratio: float
    tv: float
    sv: float
    per_param: dict[str, list[float]]
    pairs: int
    undefined: int

    def scores(self) -> dict[str, float]:
        """The three headline numbers (what one cell of a matrix table holds)."""
        return {"correlation": self.correlation, "difference": self.difference,
                "ratio": self.ratio}


@dataclass
class ExplanationEquivariance:
    """The result of :func:`explanation_invariance`: one :class:`FamilyEquivariance`
    per family, in the order measured, and how it was measured (``meta``)."""

    families: dict[str, FamilyEquivariance]
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, family: str) -> FamilyEquivariance:
        return self.families[family]

    def to_frame(self):
        """One row per family: family, correlation, difference, ratio, tv, sv, pairs,
        undefined (a pandas DataFrame)."""
        import pandas as pd

        cols = ("correlation", "difference", "ratio", "tv", "sv", "pairs", "undefined")
        return pd.DataFrame([{"family": name, **{c: getattr(f, c) for c in cols}}
                             for name, f in self.families.items()])


def explanation_invariance(
    model: nn.Module,
    dataset: Dataset | str,
    transform: Any = "rotation",
    method: str = "gradcam",
    *,
    samples: int = 64,
    params: int | Sequence[float] | torch.Tensor = 6,
    target: str = "clean",
    layer: str | None = "auto",
    batch_size: int = 64,
    device: str | torch.device | None = None,
    seed: int = 0,
    transform_kwargs: dict | None = None,
    method_options: dict | None = None,
) -> ExplanationEquivariance:
    """Measure whether explanations move with the image (see the module docstring).

    The model runs in eval mode for the call (BatchNorm would otherwise mix the images
    of a batch into each map) and gets its train/eval mode back afterwards.

    Args:
        model: a classifier (class logits (B, K)); images in [0, 1].
        dataset: a map-style dataset of ``(image, label, ...)`` or a built-in name.
        transform: a family name, a family object, or a list of them (one result each).
        method: an attribution method (``viscope list methods``).
        samples: images (a seeded random subset of the dataset), at least 2.
        params: the number of parameter values (``family.grid(params)``, at least 2), or
            the values themselves ((M,) or (M, k); one family only).
        target: ``"clean"`` (default): every transformed copy explains the class the model
            predicts for the clean image, so a change of map is not a change of class;
            ``"predicted"``: each transformed copy explains its own predicted class.
        layer: the layer of a CAM method (``"auto"``: chosen once at the images' size).
        batch_size: transformed images per explanation call (whole images: rounded down
            to a multiple of the number of values, at least one image).
        device: where the model runs (default: the model's device).
        seed: seeds the subset of images.
        transform_kwargs: range overrides for families given by name.
        method_options: options of the method (``n_masks=`` for RISE ...).

    Returns:
        An :class:`ExplanationEquivariance` (``result["rotation"].correlation``,
        ``result.to_frame()``).

    Raises:
        ViscopeError: an unknown method, family or target; fewer than 2 images or values;
            parameter values of the wrong shape; images that are not (C, H, W) tensors;
            a model whose outputs are not class logits.

    Example:
        >>> from viscope import models
        >>> from torch.utils.data import TensorDataset
        >>> net = models.create("test_resnet", num_classes=3).eval()
        >>> data = TensorDataset(torch.rand(4, 3, 32, 32), torch.zeros(4))
        >>> r = explanation_invariance(net, data, "brightness", samples=4, params=2)
        >>> r["brightness"].pairs  # 4 images x 2 values
        8
    """
    spec = METHODS.get(method)
    if target not in TARGETS:
        raise ViscopeError(f"Expected target to be one of {TARGETS}; got {target!r}. 'clean' "
                           "explains the clean image's predicted class in every copy.")
    samples = check_int("samples", samples, 2, "a spread over images needs two", 64)
    batch_size = check_int("batch_size", batch_size, 1, "images per explanation call", 64)
    names = list(transform) if isinstance(transform, (list, tuple)) else [transform]
    families = [resolve_transform(t, **(transform_kwargs or {})) if isinstance(t, str)
                else resolve_transform(t) for t in names]
    explicit = not isinstance(params, numbers.Integral) or isinstance(params, bool)
    if explicit and len(families) > 1:
        raise ViscopeError(f"Expected params as a number of values when measuring several "
                           f"families ({len(families)}); got explicit values. Pass params=6, "
                           "or one family at a time.")
    if isinstance(dataset, str):
        from viscope import data as vdata

        dataset = vdata.create(dataset)
    if len(dataset) < 2:
        raise ViscopeError(f"Expected a dataset of at least 2 images (a spread over images); "
                           f"it has {len(dataset)}.")
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=g)[:min(samples, len(dataset))].tolist()
    size = collate([dataset[indices[0]]]).shape[-2:]
    with evaluation_mode(model, device):  # each module's own mode comes back
        if spec.uses_layer and layer in (None, "auto"):
            layer = auto_layer(model, tuple(size))  # once, not once per call
        run = _Run(model, dataset, indices, method, layer, target, batch_size, device,
                   method_options or {})
        out = {}
        for family in families:
            grid = _grid(family, params, explicit)
            out[getattr(family, "name", "custom")] = run.family(family, grid)
    meta = {"method": method, "layer": layer, "target": target, "samples": len(indices),
            "seed": seed, "normalised": "attribute(normalize=True): clipped, min-max [0, 1]",
            "valid_tolerance": VALID_TOLERANCE}
    return ExplanationEquivariance(out, meta)


def equivariance_cell(model: nn.Module, dataset: Dataset, family: str, method: str = "gradcam",
                      **settings: Any) -> dict[str, float]:
    """One cell of a train x eval matrix: the model's explanation-equivariance scores for
    one evaluation family on its test split.

    Args:
        model: the trained model.
        dataset: its test split.
        family: the evaluation family's name.
        method: the attribution method.
        **settings: further :func:`explanation_invariance` arguments (``samples``,
            ``params``, ``batch_size``, ``device``, ``seed``, ``target`` ...).

    Returns:
        ``{"correlation": ..., "difference": ..., "ratio": ...}``.
    """
    result = explanation_invariance(model, dataset, family, method, **settings)
    return next(iter(result.families.values())).scores()


def _grid(family: Any, params: Any, explicit: bool) -> torch.Tensor:
    """The parameter values of one family, checked (at least two)."""
    if explicit:
        grid = torch.as_tensor(params, dtype=torch.float64)
        family.check_params(grid, None, torch.device("cpu"), torch.float64)
    else:
        grid = family.grid(check_int("params", params, 2, "a spread over values needs two", 6),
                           dtype=torch.float64)
    if grid.ndim == 0 or grid.shape[0] < 2:
        raise ViscopeError(f"Expected at least 2 parameter values (a spread over "
                           f"transformations); got {grid.tolist()}.")
    return grid


@dataclass
class _Run:
    """The settings shared by the families of one call; :meth:`family` measures one."""

    model: nn.Module
    dataset: Dataset
    indices: list[int]
    method: str
    layer: str | None
    target: str
    batch_size: int
    device: torch.device
    options: dict
    caught: list[str] = field(default_factory=list)

    def explain(self, images: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
        # attribute warns per call about all-zero maps; one family makes many calls, so the
        # warnings are gathered and :meth:`family` says it once, with the count
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            maps = attribute(self.model, images, self.method, self.layer, target=classes,
                             **self.options)
        self.caught.extend(str(w.message) for w in caught)
        # warps and statistics in float64 (the warp's float32 grid is off by ~1e-6 px)
        return maps.to(torch.float32 if maps.device.type == "mps" else torch.float64)

    def family(self, family: Any, grid: torch.Tensor) -> FamilyEquivariance:
        m = grid.shape[0]
        rows = max(1, self.batch_size // m)
        geometric = bool(getattr(family, "geometric", False))
        acc = _Pairs(m)
        state = None
        for start in range(0, len(self.indices), rows):
            chunk = self.indices[start:start + rows]
            x = collate([self.dataset[i] for i in chunk]).to(self.device)
            b = x.shape[0]
            classes = resolve_target(None, b).fix(self.model, x).classes
            clean = self.explain(x, classes)  # (b, H, W)
            values = grid.repeat(b, *([1] * (grid.ndim - 1)))  # image-major: row i*m + j
            moved = family.apply(x.repeat_interleave(m, 0), values.to(self.device))
            tgt = classes.repeat_interleave(m) if self.target == "clean" else None
            maps = self.explain(moved, tgt)  # (b * m, H, W): one call for the batch
            h, w = maps.shape[-2:]
            vals = values.to(maps.device, maps.dtype)
            if geometric:
                expected = family.apply(clean.repeat_interleave(m, 0)[:, None], vals)[:, 0]
                inside = family.apply(torch.ones_like(maps[:1, None]).expand(m, 1, h, w),
                                      grid.to(maps.device, maps.dtype))[:, 0]
                inside = inside >= 1.0 - VALID_TOLERANCE  # (m, H, W)
                aligned = family.inverse(maps[:, None], vals)[:, 0]
            else:
                expected = clean.repeat_interleave(m, 0)
                inside = torch.ones(m, h, w, dtype=torch.bool, device=maps.device)
                aligned = maps
            acc.add(maps.view(b, m, h, w), expected.view(b, m, h, w), inside)
            if state is None:
                valid = valid_positions(family, grid, h, w) if geometric else None
                state = SameEquivariantNV(m, (1, h, w), (1, 2), MeasureOptions(
                    spatial=True, variance=True), maps.device, valid=valid)
            state.update(aligned.view(b, m, 1, h, w))
        spread = state.compute()
        name = getattr(family, "name", "custom")
        if self.caught:
            # a fixed text per method, layer and family, so Python's default filter
            # shows it once per run, not once per matrix cell
            warnings.warn(f"{self.method} at layer {self.layer!r} under {name}: some maps "
                          "were all zero, constant or not finite (no positive evidence "
                          "there); they enter the scores as they are (see "
                          "viscope.explain.attribute's warning for the fix)",
                          UserWarning, stacklevel=3)
            self.caught.clear()
        return acc.result(name, grid, spread)


class _Pairs:
    """Running sums of the per-pair correlation and difference, per parameter value."""

    def __init__(self, m: int) -> None:
        self.corr = np.zeros(m)
        self.corr_n = np.zeros(m)
        self.diff = np.zeros(m)
        self.n = np.zeros(m)

    def add(self, maps: torch.Tensor, expected: torch.Tensor, inside: torch.Tensor) -> None:
        """Add pairs (b, m, H, W) compared over ``inside`` (m, H, W)."""
        weight = inside.to(maps.dtype).expand_as(maps)
        count = weight.sum(dim=(-2, -1)).clamp_min(1)

        def centred(a: torch.Tensor) -> torch.Tensor:
            mean = (a * weight).sum(dim=(-2, -1), keepdim=True) / count[..., None, None]
            return (a - mean) * weight

        a, e = centred(maps), centred(expected)
        va, ve = a.square().sum(dim=(-2, -1)), e.square().sum(dim=(-2, -1))
        # a map constant on the valid positions has no correlation (0/0): left out
        tiny = 1e-12 * count
        defined = (va > tiny) & (ve > tiny)
        r = (a * e).sum(dim=(-2, -1)) / (va * ve).clamp_min(1e-300).sqrt()
        diff = ((maps - expected).abs() * weight).sum(dim=(-2, -1)) / count
        self.corr += torch.where(defined, r, 0.0).sum(0).cpu().double().numpy()
        self.corr_n += defined.sum(0).cpu().double().numpy()
        self.diff += diff.sum(0).cpu().double().numpy()
        self.n += maps.shape[0]

    def result(self, name: str, grid: torch.Tensor,
               spread: dict[str, torch.Tensor]) -> FamilyEquivariance:
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = self.corr / self.corr_n
            diff = self.diff / self.n
        return FamilyEquivariance(
            family=name, params=grid.reshape(grid.shape[0], -1).tolist(),
            correlation=float(self.corr.sum() / self.corr_n.sum()) if self.corr_n.sum()
            else float("nan"),
            difference=float(diff.mean()), ratio=finite_mean(spread["nv"]),
            tv=finite_mean(spread["tv"]), sv=finite_mean(spread["sv"]),
            per_param={"correlation": corr.tolist(), "difference": diff.tolist()},
            pairs=int(self.n.sum()), undefined=int(self.n.sum() - self.corr_n.sum()),
        )


__all__ = ["ExplanationEquivariance", "FamilyEquivariance", "equivariance_cell",
           "explanation_invariance"]
