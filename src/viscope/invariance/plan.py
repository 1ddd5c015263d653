"""What a measurement checks and decides before its first batch.

The engine (:mod:`viscope.invariance.engine`) calls these while validating its
arguments and planning the run: the counts, the transformation family, the model's
floating dtype, the probe pass that finds each layer's layout, and each layer's state
(for ``nv_se``: the activation maps' unit shape and the valid positions of
:func:`~viscope.invariance.equivariance.valid_positions`).
"""

from __future__ import annotations

import hashlib
import itertools
import numbers
from typing import Any

import torch
from torch import nn

from viscope.activations import capture
from viscope.errors import ViscopeError
from viscope.invariance.equivariance import spatial_unit_shape, valid_positions
from viscope.invariance.measures import LayerState, MeasureOptions, MeasureSpec

SPATIAL_DIMS = {"chw": (1, 2), "hwc": (0, 1), "tokens": (0,)}


def resolve_transform(transform: Any, **kwargs: Any) -> Any:
    """A transformation family from a name, a family object or a list of callables.

    Raises:
        ViscopeError: anything else.
    """
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


def images_of(item: Any) -> torch.Tensor:
    """The image of a dataset item ``(image, label, ...)`` or a bare image."""
    return item[0] if isinstance(item, (tuple, list)) else item


def collate(batch: list) -> torch.Tensor:
    """Stack the images of dataset items into (B, C, H, W).

    Raises:
        ViscopeError: an item's image is not a (C, H, W) tensor.
    """
    imgs = [images_of(b) for b in batch]
    if not all(isinstance(i, torch.Tensor) and i.ndim == 3 for i in imgs):
        raise ViscopeError(
            "Expected dataset items to be (image, label, ...) with image a (C, H, W) tensor; "
            f"got {type(imgs[0]).__name__} of shape {getattr(imgs[0], 'shape', '?')}."
        )
    return torch.stack(imgs)


def check_int(name: str, value: Any, low: int | None, what: str, example: int) -> int:
    """``value`` as a Python int (NumPy integers are fine).

    Raises:
        ViscopeError: not an integer, or below ``low``.
    """
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or (low is not None and value < low)):
        kind = "an int" if low is None else f"an int >= {low}"
        raise ViscopeError(
            f"Expected {name} to be {kind} ({what}); got {value!r}. Pass e.g. "
            f"{name}={example}."
        )
    return int(value)


def check_min_params(spec: MeasureSpec, m: int, callables: bool) -> None:
    """Every measure is a spread over transformations, undefined for fewer than
    ``spec.state.min_params`` of them (one value would read as perfect invariance).

    Raises:
        ViscopeError: fewer parameter values than the measure needs.
    """
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


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype of the model's first floating parameter (or buffer), which the
    images are cast to (a ``.double()`` or bfloat16 model on float32 data); ``None`` for
    a model with neither."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def probe(model: nn.Module, family: Any, grid: torch.Tensor, image: torch.Tensor,
          names: list[str], tokens: str, prefix_tokens: int | None = None,
          dtype: torch.dtype | None = None) -> dict:
    """One forward pass on one transformed image: which layers run, and their layouts.

    A model that cannot take the images fails here, with a message that says so.

    Returns:
        The tap's :class:`~viscope.activations.tap.LayerRecord` per layer name.

    Raises:
        ViscopeError: the model fails on the image (size, channels).
    """
    params = grid[:1].repeat(image.shape[0], *([1] * (grid.ndim - 1)))
    with torch.no_grad():
        x = family.apply(image, params)
    if dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
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


def family_key(family: Any) -> dict:
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


def new_state(spec: MeasureSpec, rec: Any, m: int, opts: MeasureOptions,
              device: torch.device, tokens: str = "all", family: Any = None,
              grid: torch.Tensor | None = None) -> LayerState:
    """The empty state of ``spec`` for the layer the tap described in ``rec``.

    For an equivariant measure the state sees (C, h, w) maps (channels-last layers and
    patch tokens are laid out so by :func:`~viscope.invariance.equivariance.spatial_map`)
    and carries the layer's valid positions under ``family`` / ``grid``.

    Raises:
        ViscopeError: an equivariant measure on a layer without a spatial layout, or on
            tokens with prefix tokens kept.
    """
    if not spec.equivariant:
        spatial_dims = SPATIAL_DIMS.get(rec.layout, ())
        if rec.layout == "tokens" and len(rec.unit_shape) != 2:
            spatial_dims = ()
        return spec.state(m, tuple(rec.unit_shape), spatial_dims, opts, device)
    patches_only = rec.prefix_tokens == 0 or tokens == "patch"
    if rec.layout == "tokens" and rec.grid is not None and not patches_only:
        raise ViscopeError(
            f"Layer {rec.name!r} has {rec.prefix_tokens} prefix (CLS/register) tokens that "
            f"cannot be mapped back spatially; pass tokens='patch' for measure 'nv_se'."
        )
    if rec.layout not in ("chw", "hwc") and not (rec.layout == "tokens" and rec.grid):
        raise ViscopeError(
            f"Measure 'nv_se' needs spatial activations ((C, H, W), (H, W, C) or patch "
            f"tokens); layer {rec.name!r} has layout {rec.layout} {tuple(rec.unit_shape)}. "
            f"Choose convolutional, channels-last or token layers."
        )
    shape = spatial_unit_shape(rec.layout, tuple(rec.unit_shape), rec.grid)
    valid = valid_positions(family, grid, shape[1], shape[2]).to(device)
    return spec.state(m, shape, (1, 2), opts, device, valid=valid)


__all__ = ["SPATIAL_DIMS", "check_int", "check_min_params", "collate", "family_key",
           "images_of", "model_dtype", "new_state", "probe", "resolve_transform"]
