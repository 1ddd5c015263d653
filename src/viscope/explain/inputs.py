"""The images given to an explanation or a metric: checked once, cast to the model's dtype.

Shared by :func:`viscope.explain.attribute` and the metrics of :mod:`viscope.evaluate`, so
that every entry point refuses the same inputs with the same one-line message:

* integer or boolean images are refused (viscope's images are floats in [0, 1]; a uint8
  image divided by 255 implicitly would hide a wrong scale elsewhere);
* NaN or infinite pixels are refused, naming the images (their maps would be all NaN);
* float images of another precision than the model are cast to the model's floating
  dtype (float64 images on a float32 model, float32 images on a ``.double()`` model);
* images with the wrong number of channels are refused at the model's first convolution
  (a hook for the call), naming the channels it takes and how to repeat a grey channel.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from viscope.errors import ViscopeError
from viscope.models import unwrap


def model_dtype(model: Callable[..., Any]) -> torch.dtype | None:
    """The floating dtype of the model's first floating parameter (or buffer); ``None`` for
    a model without one (or a plain callable)."""
    if not isinstance(model, nn.Module):
        return None
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def prepare_images(model: Callable[..., Any], images: object) -> torch.Tensor:
    """Check ``images`` (B, C, H, W) and cast them to the model's floating dtype.

    Args:
        model: the model (an ``nn.Module`` or a plain callable, which is not cast for).
        images: what the caller passed as images.

    Returns:
        The images, in the model's floating dtype (the same tensor when it already is).

    Raises:
        ViscopeError: not a 4-d tensor, integer or boolean images, or images holding NaN
            or infinite values (naming which).

    Example:
        >>> net = nn.Conv2d(3, 1, 1).double()
        >>> prepare_images(net, torch.rand(1, 3, 4, 4)).dtype
        torch.float64
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ViscopeError(f"Expected images as a tensor (B, C, H, W); got {got}.")
    if not images.is_floating_point():
        raise ViscopeError(
            f"Expected float images in [0, 1]; got {images.dtype}. Convert them first, e.g. "
            "images.float() / 255 for 8-bit pixel values."
        )
    bad = ~torch.isfinite(images.flatten(1)).all(dim=1)
    if bool(bad.any()):
        raise ViscopeError(
            f"Expected finite images; images {bad.nonzero()[:, 0].tolist()} hold NaN or "
            "infinite values. Replace them (torch.nan_to_num(images)) or leave those images out."
        )
    dtype = model_dtype(model)
    return images.to(dtype) if dtype is not None and images.dtype != dtype else images


def check_not_inference(model: nn.Module) -> None:
    """Refuse a model whose parameters were made under ``torch.inference_mode()``: autograd
    cannot save them for a backward pass (every gradient method fails on them)."""
    if any(p.is_inference() for p in model.parameters()):
        raise ViscopeError(
            f"Expected a model made outside torch.inference_mode(); the parameters of "
            f"{type(unwrap(model)).__name__} are inference tensors, which autograd cannot use. "
            "Create or load the model outside the inference_mode block (torch.no_grad() is "
            "fine)."
        )


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The network's input convolution: timm's ``pretrained_cfg["first_conv"]`` where it
    names a Conv2d, else the first Conv2d registered (the stem, for torchvision models and
    ``nn.Sequential``); ``None`` without one."""
    net = unwrap(model)
    cfg = getattr(net, "pretrained_cfg", None)
    name = cfg.get("first_conv") if isinstance(cfg, dict) else None
    if isinstance(name, str):
        try:
            module = net.get_submodule(name)
        except AttributeError:
            module = None
        if isinstance(module, nn.Conv2d):
            return name, module
    return next(((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)), None)


@contextmanager
def channel_check(model: Callable[..., Any]) -> Iterator[None]:
    """For the block, refuse inputs whose channels the model's first convolution does not
    take, with a one-line error instead of torch's (a pre-hook, removed on exit).

    The check runs where the convolution would fail anyway, so it cannot refuse an input
    that the model accepts (even if another convolution came first in the forward).
    """
    found = first_conv(model) if isinstance(model, nn.Module) else None
    if found is None:
        yield
        return
    name, conv = found

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0] if args else None
        want = conv.in_channels
        if isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[1] != want:
            got = x.shape[1]
            fix = (f"repeat the grey channel: images.expand(-1, {want}, -1, -1)" if got == 1
                   else f"select or convert to {want} channels (e.g. images[:, :{want}])")
            raise ViscopeError(
                f"Expected images with {want} channels (the model's first convolution "
                f"{name!r} takes {want}); got {got} channels, shape {tuple(x.shape)}. To fix, "
                f"{fix}, or use a model made for {got} channels (in_chans={got})."
            )

    handle = conv.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()
