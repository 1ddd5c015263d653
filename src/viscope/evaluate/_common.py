"""Shared helpers of the explanation metrics: argument checks and batched scoring."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from viscope.activations import preserved_buffers
from viscope.errors import ViscopeError
from viscope.explain.inputs import channel_check, prepare_images
from viscope.explain.targets import Target, TargetArg, resolve_target


def check_finite(maps: torch.Tensor) -> None:
    """Raise a :class:`ViscopeError` if any map holds NaN or infinite values."""
    bad = ~torch.isfinite(maps.flatten(1)).all(dim=1)
    if bad.any():
        raise ViscopeError(
            f"Expected finite maps; maps {bad.nonzero().flatten().tolist()} hold NaN or inf "
            "values. Recompute them (e.g. with the model in float32) or replace the values "
            "with torch.nan_to_num(maps)."
        )


def check_inputs(
    model: Callable[..., Any], images: object, maps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The images checked and cast to the model's dtype
    (:func:`~viscope.explain.inputs.prepare_images`), and the maps (:func:`check_maps`)."""
    images = prepare_images(model, images)
    return images, check_maps(images, maps)


def check_maps(images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Maps (B, H, W) matching images (B, C, H, W), on the images' device, finite.

    The maps keep their own floating dtype, so that their order is not coarsened to the
    images' precision (float16 images would merge close values into ties).
    """
    if images.ndim != 4 or maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ViscopeError(
            f"Expected maps (B, H, W) = {(images.shape[0], *images.shape[-2:])} for images "
            f"{tuple(images.shape)}; got {tuple(maps.shape)}. Pass the maps that "
            "viscope.explain.attribute returned for these images."
        )
    check_finite(maps)
    if not maps.is_floating_point():
        maps = maps.to(images.dtype if images.is_floating_point() else torch.float32)
    return maps.to(images.device)


def check_masks(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Ground-truth masks (B, H, W) or (B, 1, H, W) as a boolean (B, H, W) tensor."""
    if maps.ndim != 3:
        raise ViscopeError(
            f"Expected maps (B, H, W); got {tuple(maps.shape)}. For a single map pass "
            "maps[None] (and masks[None])."
        )
    check_finite(maps)
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.shape != maps.shape:
        raise ViscopeError(
            f"Expected masks of shape {tuple(maps.shape)} or (B, 1, H, W) like the maps; got "
            f"{tuple(masks.shape)}."
        )
    return masks.to(maps.device) > 0.5


def target_of(model: nn.Module, images: torch.Tensor, target: TargetArg) -> Target:
    """The resolved target, with "predicted" fixed on the clean images.

    Warns when the model is in training mode: BatchNorm would then mix the perturbed
    images of a batch (and dropout add noise), so a score would depend on its batch.
    """
    if getattr(model, "training", False):
        warnings.warn(
            "The model is in training mode: BatchNorm mixes the images of a batch and dropout "
            "is random, so the metric depends on the batch. Call model.eval() first.",
            UserWarning, stacklevel=3,
        )
    with _untouched(model):
        return resolve_target(target, images.shape[0]).fix(model, images)


def scores(model: nn.Module, inputs: torch.Tensor, target: Target, prob: bool) -> torch.Tensor:
    """One forward pass of a whole perturbed batch (row b is image b); (B,) scores."""
    with torch.no_grad(), _untouched(model):
        return target.score(model(inputs), prob=prob)


@contextmanager
def _untouched(model: Callable[..., Any]) -> Iterator[None]:
    """For a forward pass of a metric: BatchNorm statistics of a model in train mode put
    back afterwards (the metric only reads the model), and input channels checked."""
    buffers = preserved_buffers(model) if isinstance(model, nn.Module) else nullcontext()
    with buffers, channel_check(model):
        yield


def ranks(maps: torch.Tensor) -> torch.Tensor:
    """Each pixel's rank (0 = most important) in its map; ties keep pixel order."""
    flat = maps.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return rank.view_as(maps)


def trapezoid(curve: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
    """Area under each row of ``curve`` (B, K) over x in [0, 1] (uniform when ``x`` is None)."""
    if x is None:
        x = torch.linspace(0, 1, curve.shape[1], device=curve.device, dtype=curve.dtype)
    return torch.trapezoid(curve, x, dim=-1)
