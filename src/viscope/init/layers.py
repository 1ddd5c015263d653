"""Which layer a data-driven initialiser writes: the first convolution the image meets.

Rule (:func:`first_layer`), in order:

1. ``layer="name"``: that module of the network (names as ``unwrap(model)`` has them);
   it must be an ``nn.Conv2d`` with ``groups=1``.
2. timm's own record: ``pretrained_cfg["first_conv"]`` (``patch_embed.proj`` for ViTs,
   ``conv1`` / ``conv1.0`` for ResNets, ``conv_stem`` for EfficientNets, ``stem.0`` for
   ConvNeXt), when it names an ``nn.Conv2d``.
3. Otherwise the first ``nn.Conv2d`` in module registration order that takes the image's
   channels (the wrapper's channel count, else that of its mean/std, else any) with
   ``groups=1``: FasterViT's ``patch_embed.conv_down.0``, torchvision ResNet's ``conv1``.
"""

from __future__ import annotations

from torch import nn

from viscope.errors import ViscopeError, suggest
from viscope.models.wrapper import Normalized, unwrap


def first_layer(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Conv2d]:
    """The convolution that data-driven initialisers write, and its name.

    Args:
        model: a model (``viscope.models.create``) or a bare network.
        layer: the module's name in ``unwrap(model)``; ``None`` finds the first layer.

    Returns:
        ``(name, conv)``.

    Raises:
        ViscopeError: ``layer`` is not a module, not a Conv2d, a grouped Conv2d, or no
            first convolution was found (pass ``layer=``).

    Example:
        >>> from viscope import models
        >>> first_layer(models.create("test_vit", img_size=32))[0]
        'patch_embed.proj'
    """
    net = unwrap(model)
    modules = dict(net.named_modules())
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    if layer is not None:
        if layer not in modules or layer == "":
            raise ViscopeError(
                f"Expected layer to name a module of {type(net).__name__}; got {layer!r}."
                f"{suggest(layer, convs)} Its convolutions: {', '.join(convs[:8]) or 'none'}."
            )
        return layer, _check_conv(layer, modules[layer])
    cfg = getattr(net, "pretrained_cfg", None) or {}
    named = cfg.get("first_conv") if isinstance(cfg, dict) else None
    if isinstance(named, str) and isinstance(modules.get(named), nn.Conv2d):
        return named, _check_conv(named, modules[named])
    channels = _image_channels(model)
    for name in convs:
        conv = modules[name]
        if conv.groups == 1 and channels in (None, conv.in_channels):
            return name, conv
    raise ViscopeError(
        f"Expected a first Conv2d taking the image's {channels or 'C'} channels in "
        f"{type(net).__name__}; found none. Pass layer='<module name>' (a Conv2d)."
    )


def _check_conv(name: str, module: nn.Module) -> nn.Conv2d:
    """``module`` if it is an ungrouped Conv2d, else a one-line error."""
    if not isinstance(module, nn.Conv2d):
        raise ViscopeError(
            f"Expected layer {name!r} to be an nn.Conv2d (a stem or patch embedding); got "
            f"{type(module).__name__}. Pass layer= naming a Conv2d."
        )
    if module.groups != 1:
        raise ViscopeError(
            f"Expected layer {name!r} to be an ungrouped Conv2d; got groups={module.groups}"
            ". Patches of a grouped convolution are not whole windows; name another layer."
        )
    return module


def _image_channels(model: nn.Module) -> int | None:
    """The input channels of a viscope wrapper (``None`` when it does not say)."""
    while model is not None:
        if isinstance(model, Normalized):
            if model.channels is not None:
                return int(model.channels)
            return None if model.mean is None else int(model.mean.shape[1])
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        model = inner if isinstance(inner, nn.Module) else None
    return None
