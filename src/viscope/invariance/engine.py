"""The measurement loop: one batched pass over the samples x parameters grid.

Each forward pass holds complete rows — b samples, each under all M parameter values —
so a sample's spread over transformations (TV) is computed inside the batch, while the
spread over samples (SV) streams into float64 moments per parameter value. Activations
are consumed inside the forward hook, so nothing stores the grid, and in-place ops
after a measured layer cannot corrupt it.

:func:`measure` runs four steps: :func:`_validate` (checked arguments, a
:class:`_Setup`), :func:`_plan` (the probe pass, each layer's empty state, a
:class:`~viscope.invariance.loop.Plan`), :func:`_run` (the stages over the batches,
resumable, merged across processes; the hot loop is :meth:`Plan.run_stage`) and
:func:`_result`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from viscope.errors import ViscopeError
from viscope.invariance.loop import BadInput, Plan
from viscope.invariance.measures import MEASURES, LayerState, MeasureOptions, MeasureSpec
from viscope.invariance.plan import (
    check_int,
    check_min_params,
    collate,
    family_key,
    model_dtype,
    new_state,
    probe,
    resolve_transform,
)
from viscope.invariance.result import InvarianceResult
from viscope.invariance.resume import Checkpoint, GracefulInterrupt, fingerprint
from viscope.invariance.runtime import Progress, dist_info, merge_ranks, warn_non_finite


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
            name / checkpoint path. Images are cast to its floating dtype (a ``.double()``
            or bfloat16 model measures float32 data).
        dataset: a map-style dataset of ``(image, label, ...)`` or a built-in name/path.
        transform: a family name (``"rotation"``), a family object, or a list of callables
            each mapping a batch (B, C, H, W) to a batch of the same shape.
        measure: a registered measure (``viscope list measures``): ``nv`` (default),
            ``nv_se``, ``anova``, ``goodfellow``, ``distance``. ``nv_se`` warps each
            activation map back with the inverse transformation and counts only the
            positions that every transformation of the grid maps back (a ones-mask
            warped there and back stays >= 1 - 1e-3) and units that are not constant
            on every image; the others are NaN in ``per_unit`` (see
            :mod:`viscope.invariance.equivariance`).
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
    setup = _validate(
        model, dataset, transform, measure=measure, samples=samples, params=params,
        layers=layers, batch_size=batch_size, device=device, seed=seed, spatial=spatial,
        variance=variance, tokens=tokens, prefix_tokens=prefix_tokens, options=options,
        transform_kwargs=transform_kwargs, num_workers=num_workers,
    )
    from viscope.models.modes import evaluation_mode

    # each module's own mode comes back (a frozen part of a training model stays in eval)
    with evaluation_mode(setup.model, setup.device):
        plan, states = _plan(setup)
        values = _run(setup, plan, states, progress, resume, save_every)
    return _result(setup, plan, {nm: st.unit_shape for nm, st in states.items()}, values)


@dataclass(frozen=True)
class _Setup:
    """The checked arguments of one measurement (what :func:`_validate` returns)."""

    model: nn.Module
    dataset: Dataset
    spec: MeasureSpec
    family: Any
    grid: torch.Tensor  # on the CPU: family.apply validates it without a device sync
    options: MeasureOptions
    device: torch.device
    dtype: torch.dtype | None  # the model's floating dtype, which images are cast to
    layers: list[str]  # resolved names, before the probe says which ran
    indices: list[int]  # the sampled dataset indices (all processes)
    shard: list[int]  # this process's share of them
    rows: int  # samples per forward pass
    tokens: str
    prefix_tokens: int | None
    seed: int
    num_workers: int


def _validate(model, dataset, transform, *, measure, samples, params, layers, batch_size,
              device, seed, spatial, variance, tokens, prefix_tokens, options,
              transform_kwargs, num_workers) -> _Setup:
    """Check the arguments (cheap checks first: loading a model or a dataset can take
    minutes) and resolve names into objects."""
    from viscope import data as vdata
    from viscope import models as vmodels

    samples = check_int("samples", samples, 2, "a spread over samples needs two", 256)
    params = check_int("params", params, None, "the number of transformation values", 16)
    batch_size = check_int("batch_size", batch_size, 1, "images per forward pass", 256)
    spec = MEASURES.get(measure)
    callables = isinstance(transform, (list, tuple))
    if callables:
        params = len(transform)  # a list of callables defines its own grid
    check_min_params(spec, params, callables)
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
    base = options or MeasureOptions()
    opts = replace(base, spatial=spatial or base.spatial, variance=variance or base.variance)
    grid = family.grid(params)
    check_min_params(spec, grid.shape[0], callables)
    names = vmodels.select_layers(model, layers, input_size=(  # dry pass at the images' size
        collate([dataset[0]]).shape[1:] if len(dataset) else None))

    n = min(samples, len(dataset))
    if n < 2:
        raise ViscopeError(
            f"Expected a dataset of at least 2 samples (a spread over samples); it has "
            f"{len(dataset)}. Measure on more images."
        )
    if n < samples:
        warnings.warn(f"dataset has {len(dataset)} items; measuring all of them, not {samples}",
                      stacklevel=3)
    g = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=g)[:n].tolist()
    rank, world = dist_info()
    return _Setup(
        model=model, dataset=dataset, spec=spec, family=family, grid=grid, options=opts,
        device=torch.device(device), dtype=model_dtype(model), layers=names,
        indices=indices, shard=indices[rank::world],
        rows=max(spec.state.min_rows, batch_size // grid.shape[0]), tokens=tokens,
        prefix_tokens=prefix_tokens, seed=seed, num_workers=num_workers,
    )


def _plan(setup: _Setup) -> tuple[Plan, dict[str, LayerState]]:
    """Probe which layers run and how their outputs are laid out; build each measured
    layer's empty state. The model is on its device, in eval mode."""
    s = setup
    image = collate([s.dataset[s.indices[0]]]).to(s.device)
    records = probe(s.model, s.family, s.grid, image, s.layers, s.tokens, s.prefix_tokens,
                    s.dtype)
    measured = [nm for nm in s.layers if records[nm].captured]
    skipped = [nm for nm in s.layers if not records[nm].captured]
    if skipped:
        warnings.warn(f"layers that never ran were skipped: {', '.join(skipped)}",
                      stacklevel=3)
    if not measured:
        raise ViscopeError(f"None of the layers {s.layers} ran in a forward pass.")
    m = s.grid.shape[0]
    states = {nm: new_state(s.spec, records[nm], m, s.options, s.device, s.tokens,
                            s.family, s.grid)
              for nm in measured}
    plan = Plan(s.model, s.family, s.grid, records, s.tokens, s.prefix_tokens,
                s.spec.equivariant, s.device, s.shard, s.rows, s.dtype, measured, skipped)
    return plan, states


def _run(setup: _Setup, plan: Plan, states: dict[str, LayerState],
         progress: bool | Callable[[int, int], None], resume: str | Path | None,
         save_every: float) -> dict[str, dict[str, Any]]:
    """Run every stage of the measure over this process's shard, saving to ``resume``
    when asked; merge the states across processes after each stage.

    Returns:
        ``values[layer][quantity]``: the per-unit NumPy arrays of the merged states.
    """
    s = setup
    rank, world = dist_info()
    stages = s.spec.state.stages
    n_batches = -(-len(s.shard) // s.rows)

    def loader_from(batch: int) -> DataLoader:
        return DataLoader(Subset(s.dataset, s.shard[batch * s.rows:]), batch_size=s.rows,
                          shuffle=False, num_workers=s.num_workers, collate_fn=collate,
                          # its own generator: the loader's base seed is not drawn from the
                          # global one, so a measurement inside a training leaves its RNG be
                          generator=torch.Generator())

    bar = Progress(False, 0, "")
    guard = GracefulInterrupt(enabled=resume is not None)
    try:
        start, ckpt = (0, 0), None
        if resume is not None:
            key = fingerprint(s.model, {
                "measure": s.spec.name, "options": s.options.__dict__,
                "grid": s.grid.tolist(), "transform": getattr(s.family, "name", "custom"),
                "family": family_key(s.family), "indices": s.shard, "rows": s.rows,
                "layers": plan.measured, "tokens": s.tokens,
                "prefix_tokens": s.prefix_tokens, "world": world, "rank": rank,
                "dataset": len(s.dataset),
            })
            path = Path(resume) if world == 1 else Path(f"{resume}.rank{rank}")
            ckpt = Checkpoint(path, key, save_every)
            start = ckpt.load(states) or start
        bar = Progress(progress, len(stages) * n_batches,
                       f"{s.spec.name} · {getattr(s.family, 'name', '')}")
        bar.advance(start[0] * n_batches + start[1])
        merged = states
        for k, stage in enumerate(stages):
            if k < start[0]:
                continue
            first = start[1] if k == start[0] else 0

            def after_batch(done: int, k: int = k) -> None:
                stop = guard.requested  # read once: Ctrl-C may land during advance()
                if ckpt is not None and (ckpt.due() or stop):
                    ckpt.save(k, done, states)
                bar.advance()
                if stop:
                    raise KeyboardInterrupt(f"measurement saved to {ckpt.path}; run it "
                                            "again to resume")

            try:
                with guard:
                    plan.run_stage(loader_from(first), first, states, stage, k, after_batch)
            except BadInput as e:
                if ckpt is None:
                    raise ViscopeError(f"{e} and run again.") from None
                ckpt.save(k, e.done, states)  # the states hold exactly the batches before it
                raise ViscopeError(f"{e}; running again resumes from here.") from None
            merged = {nm: merge_ranks(st) for nm, st in states.items()}
            for nm, st in merged.items():
                st.end_stage(k)
                states[nm].adopt(st)
            if ckpt is not None and k + 1 < len(stages):
                ckpt.save(k + 1, 0, states)
        warn_non_finite(merged, s.spec.name, stacklevel=4)
        values = {nm: {q: v.cpu().numpy() for q, v in st.compute().items()}
                  for nm, st in merged.items()}
        if ckpt is not None:
            ckpt.remove()
    finally:
        bar.close()
    return values


def _result(setup: _Setup, plan: Plan, shapes: dict[str, tuple[int, ...]],
            values: dict[str, dict[str, Any]]) -> InvarianceResult:
    """The :class:`InvarianceResult` of the computed per-unit values; ``shapes`` are the
    unit shapes the states saw (for ``nv_se``: (C, h, w) whatever the layer's layout)."""
    s = setup
    meta = {
        "model": _model_name(s.model),
        "transform": getattr(s.family, "name", "custom"),
        "params": s.grid.cpu().tolist(),
        "param_names": list(getattr(s.family, "param_names", ())),
        "samples": len(s.indices),
        "measure": s.spec.name,
        "options": s.options.__dict__,
        "tokens": s.tokens,
        "prefix_tokens": s.prefix_tokens,
        "skipped": plan.skipped,
        "seed": s.seed,
    }
    return InvarianceResult(
        measure=s.spec.name, primary=s.spec.primary, layers=plan.measured, values=values,
        layouts={nm: plan.records[nm].layout for nm in plan.measured},
        shapes={nm: list(shapes[nm]) for nm in plan.measured},
        lower_is_invariant=s.spec.lower_is_invariant, meta=meta,
    )


def _model_name(model: nn.Module) -> str:
    from viscope.models import spec_of, unwrap

    spec = spec_of(model)
    return spec.name if spec is not None else type(unwrap(model)).__name__


__all__ = ["measure", "resolve_transform"]
