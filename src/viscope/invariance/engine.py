"""The measurement loop: one batched pass over the samples x parameters grid.

Each forward pass holds complete rows — b samples, each under all M parameter values —
so a sample's spread over transformations (TV) is computed inside the batch, while the
spread over samples (SV) streams into float64 moments per parameter value. Activations
are consumed inside the forward hook, so nothing stores the grid, and in-place ops
after a measured layer cannot corrupt it.
"""

from __future__ import annotations

import hashlib
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from viscope.activations import Tap, capture
from viscope.errors import ViscopeError
from viscope.invariance.measures import MEASURES, LayerState, MeasureOptions
from viscope.invariance.result import InvarianceResult
from viscope.invariance.resume import Checkpoint, GracefulInterrupt, fingerprint

SPATIAL_DIMS = {"chw": (1, 2), "hwc": (0, 1), "tokens": (0,)}


def resolve_transform(transform, **kwargs):
    """A transformation family from a name, a family object or a list of callables."""
    from viscope import transforms

    if isinstance(transform, str):
        return transforms.create(transform, **kwargs)
    if isinstance(transform, (list, tuple)):
        return transforms.from_callables(list(transform))
    if hasattr(transform, "grid") and hasattr(transform, "apply"):
        return transform
    raise ViscopeError(
        f"Expected transform to be a family name (see `viscope list transforms`), a family "
        f"object or a list of callables; got {type(transform).__name__}."
    )


class _StopForward(BaseException):
    """Raised from the last measured layer's hook to skip the rest of the forward pass
    (a BaseException, so that a model's own ``except Exception`` cannot swallow it)."""


class _BadInput(ViscopeError):
    """Non-finite pixels in a batch; ``done`` batches of the stage are in the states."""

    def __init__(self, message: str, done: int) -> None:
        super().__init__(message)
        self.done = done


def _images(item) -> torch.Tensor:
    return item[0] if isinstance(item, (tuple, list)) else item


def _collate(batch):
    imgs = [_images(b) for b in batch]
    if not all(isinstance(i, torch.Tensor) and i.ndim == 3 for i in imgs):
        raise ViscopeError(
            "Expected dataset items to be (image, label, ...) with image a (C, H, W) tensor; "
            f"got {type(imgs[0]).__name__} of shape {getattr(imgs[0], 'shape', '?')}."
        )
    return torch.stack(imgs)


def measure(
    model: nn.Module | str,
    dataset: Dataset | str,
    transform: Any = "rotation",
    *,
    measure: str = "nv",
    samples: int = 256,
    params: int = 16,
    layers: str | Sequence[str] | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int = 0,
    spatial: bool = False,
    variance: bool = False,
    tokens: str = "all",
    prefix_tokens: int | None = None,
    options: MeasureOptions | None = None,
    transform_kwargs: dict | None = None,
    progress: bool | Callable[[int, int], None] = False,
    num_workers: int = 0,
    resume: str | Path | None = None,
    save_every: float = 60.0,
) -> InvarianceResult:
    """Measure how much each layer of ``model`` changes under a transformation family.

    Args:
        model: an ``nn.Module`` (images in [0, 1]; see ``viscope.models.create``) or a model
            name / checkpoint path.
        dataset: a map-style dataset of ``(image, label, ...)`` or a built-in name/path.
        transform: a family name (``"rotation"``), a family object, or a list of callables
            each mapping a batch (B, C, H, W) to a batch of the same shape.
        measure: a registered measure (``viscope list measures``): ``nv`` (default),
            ``nv_se``, ``anova``, ``goodfellow``, ``distance``.
        samples: number of dataset samples (a seeded random subset).
        params: number of parameter values, ``family.grid(params)`` (ignored for a list
            of callables, which defines its own).
        layers: glob patterns of module names (``"blocks.*"``), a list of them, or None
            for the model's default layers.
        batch_size: images per forward pass; each pass holds whole rows, so it is
            rounded down to a multiple of ``params`` (and at least ``params``).
        device: where the model and the measure run (default: the model's device).
        seed: seeds the sample subset.
        spatial: average TV and SV over H x W (or tokens) before dividing.
        variance: means of variances instead of means of standard deviations.
        tokens: ``"all"``, ``"patch"`` or ``"prefix"`` tokens of ViT outputs.
        prefix_tokens: the number of prefix (class, distillation, register) tokens, for a
            token model whose structure does not say it (timm, torchvision and modules
            with ``cls_token`` / ``reg_token`` parameters do); ``None``: from the model.
        options: further measure options (ANOVA alpha, Bonferroni, Goodfellow quantile).
        transform_kwargs: range overrides for the family, e.g. ``{"low": -90, "high": 90}``.
        progress: show a progress bar (True) or call ``progress(done, total)``.
        num_workers: DataLoader workers.
        resume: a file that makes the measurement resumable: its statistics are saved
            there every ``save_every`` seconds, a later call with the same arguments (and
            weights) goes on from the last save, and the file is deleted once the result
            is complete. A file written by a different measurement is an error. Under
            ``torch.distributed`` each process writes ``<file>.rank<k>``.
        save_every: seconds between saves of ``resume`` (0: after every batch).

    Returns:
        An :class:`InvarianceResult` (``.per_layer()``, ``.per_unit(layer)``, ``.plot()``).

    Raises:
        ViscopeError: unknown names, layer patterns that match nothing, bad shapes,
            ``samples`` < 2, ``params`` < 2 (every measure is a spread over
            transformations), ``batch_size`` < 1, or a model that fails on the images.

    Under ``torch.distributed`` (e.g. ``torchrun``), each process measures a shard of the
    samples and the states are merged, giving the same numbers as one process.
    """
    from viscope import data as vdata
    from viscope import models as vmodels

    # cheap checks first: loading a model or a dataset can take minutes
    samples = _check_int("samples", samples, 2, "a spread over samples needs two", 256)
    params = _check_int("params", params, None, "the number of transformation values", 16)
    batch_size = _check_int("batch_size", batch_size, 1, "images per forward pass", 256)
    spec = MEASURES.get(measure)
    if isinstance(transform, (list, tuple)):
        params = len(transform)  # a list of callables defines its own grid
    _check_min_params(spec, params, isinstance(transform, (list, tuple)))
    if isinstance(model, str):
        model = vmodels.create(model)
    if isinstance(dataset, str):
        dataset = vdata.create(dataset)
    family = resolve_transform(transform, **(transform_kwargs or {}))
    if spec.equivariant and not getattr(family, "geometric", False):
        raise ViscopeError(
            f"Measure {measure!r} maps activations back with the inverse transformation, so "
            f"it needs a geometric family (scale, perspective, rotation, translation); got "
            f"{getattr(family, 'name', family)!r}. Use measure='nv'."
        )
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    base = options or MeasureOptions()
    opts = replace(base, spatial=spatial or base.spatial, variance=variance or base.variance)
    # the grid stays on the CPU: family.apply validates CPU parameters without a device
    # sync and moves them itself
    grid = family.grid(params)
    m = grid.shape[0]
    _check_min_params(spec, m, isinstance(transform, (list, tuple)))
    names = vmodels.select_layers(model, layers)

    n = min(samples, len(dataset))
    if n < 2:
        raise ViscopeError(
            f"Expected a dataset of at least 2 samples (a spread over samples); it has "
            f"{len(dataset)}. Measure on more images."
        )
    if n < samples:
        warnings.warn(f"dataset has {len(dataset)} items; measuring all of them, not {samples}",
                      stacklevel=2)
    g = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=g)[:n].tolist()
    rank, world = _dist_info()
    shard = indices[rank::world]
    rows = max(spec.state.min_rows, batch_size // m)

    def loader_from(batch: int) -> DataLoader:
        return DataLoader(Subset(dataset, shard[batch * rows:]), batch_size=rows,
                          shuffle=False, num_workers=num_workers, collate_fn=_collate)

    n_batches = -(-len(shard) // rows)

    was_training = model.training
    model.to(device).eval()
    bar = _Progress(False, 0, "")
    guard = GracefulInterrupt(enabled=resume is not None)
    try:
        probe = _collate([dataset[indices[0]]]).to(device)
        records = _probe(model, family, grid, probe, names, tokens, prefix_tokens)
        measured = [nm for nm in names if records[nm].captured]
        skipped = [nm for nm in names if not records[nm].captured]
        if skipped:
            warnings.warn(f"layers that never ran were skipped: {', '.join(skipped)}",
                          stacklevel=2)
        if not measured:
            raise ViscopeError(f"None of the layers {names} ran in a forward pass.")
        states = {nm: _new_state(spec, records[nm], m, opts, device, tokens)
                  for nm in measured}
        stages = spec.state.stages
        start = (0, 0)
        ckpt = None
        if resume is not None:
            key = fingerprint(model, {
                "measure": spec.name, "options": opts.__dict__, "grid": grid.tolist(),
                "transform": getattr(family, "name", "custom"), "family": _family_key(family),
                "indices": shard,
                "rows": rows, "layers": measured, "tokens": tokens,
                "prefix_tokens": prefix_tokens, "world": world,
                "rank": rank, "dataset": len(dataset),
            })
            path = Path(resume) if world == 1 else Path(f"{resume}.rank{rank}")
            ckpt = Checkpoint(path, key, save_every)
            start = ckpt.load(states) or start
        bar = _Progress(progress, len(stages) * n_batches,
                        f"{spec.name} · {getattr(family, 'name', '')}")
        bar.advance(start[0] * n_batches + start[1])
        merged = states
        plan = _Plan(model, family, grid, records, tokens, prefix_tokens, spec.equivariant,
                     device, shard, rows)
        for s, stage in enumerate(stages):
            if s < start[0]:
                continue
            first = start[1] if s == start[0] else 0

            def after_batch(done: int, s: int = s) -> None:
                stop = guard.requested  # read once: Ctrl-C may land during advance()
                if ckpt is not None and (ckpt.due() or stop):
                    ckpt.save(s, done, states)
                bar.advance()
                if stop:
                    raise KeyboardInterrupt(f"measurement saved to {ckpt.path}; run it "
                                            "again to resume")

            try:
                with guard:
                    plan.run_stage(loader_from(first), first, states, stage, s, after_batch)
            except _BadInput as e:
                if ckpt is None:
                    raise ViscopeError(f"{e} and run again.") from None
                ckpt.save(s, e.done, states)  # the states hold exactly the batches before it
                raise ViscopeError(f"{e}; running again resumes from here.") from None
            merged = {nm: _merge_ranks(st) for nm, st in states.items()}
            for nm, st in merged.items():
                st.end_stage(s)
                states[nm].adopt(st)
            if ckpt is not None and s + 1 < len(stages):
                ckpt.save(s + 1, 0, states)
        _warn_non_finite(merged, spec.name)
        values = {nm: {k: v.cpu().numpy() for k, v in st.compute().items()}
                  for nm, st in merged.items()}
        if ckpt is not None:
            ckpt.remove()
    finally:
        bar.close()
        model.train(was_training)

    meta = {
        "model": _model_name(model),
        "transform": getattr(family, "name", "custom"),
        "params": grid.cpu().tolist(),
        "param_names": list(getattr(family, "param_names", ())),
        "samples": n,
        "measure": spec.name,
        "options": opts.__dict__,
        "tokens": tokens,
        "prefix_tokens": prefix_tokens,
        "skipped": skipped,
        "seed": seed,
    }
    return InvarianceResult(
        measure=spec.name, primary=spec.primary, layers=measured, values=values,
        layouts={nm: records[nm].layout for nm in measured},
        shapes={nm: list(records[nm].unit_shape) for nm in measured},
        lower_is_invariant=spec.lower_is_invariant, meta=meta,
    )


def _model_name(model: nn.Module) -> str:
    from viscope.models import spec_of, unwrap

    spec = spec_of(model)
    return spec.name if spec is not None else type(unwrap(model)).__name__


def _check_int(name: str, value: Any, low: int | None, what: str, example: int) -> int:
    """``value`` as a Python int (NumPy integers are fine), or a ViscopeError."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or (low is not None and value < low)):
        kind = "an int" if low is None else f"an int >= {low}"
        raise ViscopeError(
            f"Expected {name} to be {kind} ({what}); got {value!r}. Pass e.g. "
            f"{name}={example}."
        )
    return int(value)


def _check_min_params(spec, m: int, callables: bool) -> None:
    """Every measure is a spread over transformations, undefined for fewer than
    ``spec.state.min_params`` of them (one value would read as perfect invariance)."""
    need = spec.state.min_params
    if m >= need:
        return
    if callables:
        raise ViscopeError(
            f"Measure {spec.name!r} needs at least {need} parameter values; got a list of "
            f"{m} callable(s). Pass a list of {need} or more transformations."
        )
    raise ViscopeError(
        f"Measure {spec.name!r} needs at least {need} parameter values; "
        f"got params={m}. Pass params={need} or more."
    )


def _probe(model, family, grid, probe, names, tokens, prefix_tokens=None):
    """One forward pass on one transformed image: which layers run, and their layouts.
    A model that cannot take the images fails here, with a message that says so."""
    params = grid[:1].repeat(probe.shape[0], *([1] * (grid.ndim - 1)))
    with torch.no_grad():
        x = family.apply(probe, params)
    try:
        _, records = capture(model, x, names, tokens=tokens, prefix_tokens=prefix_tokens)
    except ViscopeError:
        raise  # already says what to do (e.g. from the tap)
    except torch.cuda.OutOfMemoryError:
        raise  # a RuntimeError too, but not the images' fault
    except (AssertionError, RuntimeError) as err:
        inner = " ".join(str(err).split()) or type(err).__name__
        raise ViscopeError(
            f"The model failed on a batch of images of shape {tuple(x.shape)}: {inner}. "
            f"Check that the image size suits the model (e.g. --image-size / img_size=...) "
            f"and that it takes {x.shape[1]}-channel images."
        ) from err
    return records


def _family_key(family) -> dict:
    """What decides the transformed images besides the grid: the family's options
    (``mode``, ``seed``, ...) and, for callables, their code (best effort: values a
    closure captures are not seen)."""
    plain = (bool, int, float, str)
    key = {k: v for k, v in vars(family).items() if isinstance(v, plain)
           or (isinstance(v, tuple) and all(isinstance(e, plain) for e in v))}
    codes = []
    for f in getattr(family, "functions", ()):
        code = getattr(f, "__code__", None)
        text = repr(f) if code is None else repr((code.co_code, code.co_consts, code.co_names))
        codes.append(hashlib.sha256(text.encode()).hexdigest())
    return {**key, "functions": codes}


def _new_state(spec, rec, m, opts, device, tokens="all") -> LayerState:
    unit_shape = rec.unit_shape
    if spec.equivariant:
        patches_only = rec.prefix_tokens == 0 or tokens == "patch"
        if rec.layout == "tokens" and rec.grid is not None and patches_only:
            unit_shape = (unit_shape[1], *rec.grid)
        elif rec.layout == "tokens" and rec.grid is not None:
            raise ViscopeError(
                f"Layer {rec.name!r} has {rec.prefix_tokens} prefix (CLS/register) tokens that "
                f"cannot be mapped back spatially; pass tokens='patch' for measure 'nv_se'."
            )
        elif rec.layout != "chw":
            raise ViscopeError(
                f"Measure 'nv_se' needs spatial (C, H, W) activations; layer {rec.name!r} has "
                f"layout {rec.layout} {unit_shape}. Choose convolutional or token layers."
            )
        spatial_dims = (1, 2)
    else:
        spatial_dims = SPATIAL_DIMS.get(rec.layout, ())
        if rec.layout == "tokens" and len(unit_shape) != 2:
            spatial_dims = ()
    return spec.state(m, tuple(unit_shape), spatial_dims, opts, device)


def _warn_non_finite(states: dict[str, LayerState], measure: str) -> None:
    """Warn about layers whose statistics are not finite: sums of finite activations stay
    finite, so the model produced NaN or infinite activations there."""
    bad = [name for name, st in states.items()
           if any(t.is_floating_point() and not bool(torch.isfinite(t).all())
                  for t in st.tensors())]
    if bad:
        warnings.warn(
            f"The model produced NaN or infinite activations in layers {', '.join(bad)}: "
            f"{measure} is NaN or infinite for the units concerned, and the layer averages "
            "leave them out. Check the weights and the precision (e.g. float16 overflow).",
            stacklevel=3,
        )


@dataclass(frozen=True)
class _Plan:
    """What every stage of one measurement shares. ``shard[k]`` is the dataset index of
    this process's k-th sample and ``rows`` the samples per batch (to name bad samples)."""

    model: nn.Module
    family: Any
    grid: torch.Tensor
    records: dict
    tokens: str
    prefix_tokens: int | None
    equivariant: bool
    device: torch.device
    shard: list[int]
    rows: int

    def run_stage(self, loader: DataLoader, first: int, states: dict[str, LayerState],
                  stage: str, s: int, after_batch: Callable[[int], None]) -> None:
        """Run stage ``s`` (``stage``) over ``loader`` (batches ``first``, ``first + 1``,
        ...); ``after_batch(done)`` is called once each batch is in the states."""
        model, family, grid, records = self.model, self.family, self.grid, self.records
        equivariant, device, shard, rows = self.equivariant, self.device, self.shard, self.rows
        m = grid.shape[0]
        ctx: dict[str, Any] = {}

        def consume(name: str, act: torch.Tensor) -> None:
            st = states[name]  # the tap only hooks measured layers
            b, cols = ctx["rows"], ctx["cols"]
            if equivariant:
                rec = records[name]
                if rec.layout == "tokens":
                    h, w = rec.grid
                    act = act.transpose(1, 2).reshape(act.shape[0], act.shape[2], h, w)
                act = family.inverse(act, ctx["params"])
            st.update(act.reshape(b, cols, *act.shape[1:]), s)
            ctx["fired"] += 1
            if ctx["fired"] == len(states):
                raise _StopForward  # every measured layer is in: the rest of the net is not needed

        with torch.no_grad(), Tap(model, list(states), callback=consume, tokens=self.tokens,
                                     prefix_tokens=self.prefix_tokens):
            for done, x in enumerate(loader, start=first + 1):
                finite = torch.isfinite(x.flatten(1)).all(dim=1)  # on the loader's side: no sync
                if not bool(finite.all()):
                    ids = [shard[(done - 1) * rows + i] for i in (~finite).nonzero()[:, 0].tolist()]
                    raise _BadInput(
                        f"Dataset samples {ids} have NaN or infinite pixels: fix them", done - 1)
                x = x.to(device, non_blocking=True)
                b = x.shape[0]
                params = grid.repeat(b, *([1] * (grid.ndim - 1)))
                if stage == "reference":
                    images, cols = x, 1
                else:
                    moved = family.apply(x.repeat_interleave(m, 0), params)
                    if stage == "grid":
                        images, cols = moved, m
                    else:  # grid+reference: column 0 is the untransformed image
                        moved = moved.reshape(b, m, *x.shape[1:])
                        images = torch.cat([x.unsqueeze(1), moved], 1).flatten(0, 1)
                        cols = m + 1
                ctx.update(rows=b, cols=cols, params=params, fired=0)
                try:
                    model(images)
                except _StopForward:
                    pass
                after_batch(done)


def _dist_info() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _merge_ranks(state: LayerState) -> LayerState:
    """Gather every process's state and merge them in rank order (same on every rank)."""
    import torch.distributed as dist

    rank, world = _dist_info()
    if world == 1:
        return state
    gathered = []
    for t in state.tensors():
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        gathered.append(parts)
    shards = [state.with_tensors([g[r] for g in gathered]) for r in range(world)]
    merged = shards[0]
    for other in shards[1:]:
        merged.merge_(other)
    merged.adopt(state)
    return merged


class _Progress:
    def __init__(self, progress, total: int, label: str) -> None:
        self.callback = progress if callable(progress) else None
        self.total, self.done = total, 0
        self._bar = None
        if progress is True and _dist_info()[0] == 0:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeRemainingColumn(), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(label, total=total)

    def advance(self, steps: int = 1) -> None:
        if steps == 0:
            return
        self.done += steps
        if self._bar is not None:
            self._bar.advance(self._task, steps)
        if self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


__all__ = ["measure", "resolve_transform"]
