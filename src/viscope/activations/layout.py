"""The memory layout of a module's 4-D output: (B, C, H, W) or (B, H, W, C), per module.

Models mix both: ConvNeXt's blocks are channels-first while the LayerNorm and MLP inside
them work channels-last; Swin is channels-last except for its patch-embedding
convolution. The tap asks :func:`layout_4d` for each measured module.
"""

from __future__ import annotations

import torch
from torch import nn

# Modules whose 4-D output is (B, C, H, W) whatever the model around them does.
_CHANNELS_FIRST = (
    nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample,
    nn.PixelShuffle, nn.PixelUnshuffle, nn.Dropout2d,
)


def layout_4d(net: nn.Module, name: str, t: torch.Tensor) -> str:
    """``"hwc"``, ``"chw"`` or ``"other"`` for module ``name``'s 4-D output ``t``.

    ``"other"`` is an attention map (B, heads, N, N) inside a module with ``num_heads``
    (timm's ``attn.attn_drop``, ...): its last two axes are tokens, not an image, so it
    has no spatial axes to average and no geometry to map back.

    In order: what the module says itself (a ``Permute``'s ``dims``, timm's
    ``output_fmt``, a convolution / BatchNorm / pool is channels-first, a ``Linear`` /
    ``LayerNorm`` channels-last); else what the modules inside it agree on (a
    ``Sequential``: its last one that says); else, for an element-wise module (GELU,
    Dropout), what feeds it. A guess from other modules must match ``t``'s channel
    count. Otherwise the network decides: timm's ``output_fmt == "NHWC"`` (Swin) and
    torchvision's Swin work channels-last, everything else channels-first. So ConvNeXt's
    inner LayerNorm / MLP are (B, H, W, C) while its blocks are (B, C, H, W).
    """
    modules = dict(net.named_modules())
    if _attention_map(modules, name, t):
        return "other"
    layout, widths = _inside(modules[name])
    if layout is None and name:
        layout, widths = _upstream(modules, name)
    if layout in ("hwc", "chw"):
        width = t.shape[-1] if layout == "hwc" else t.shape[1]
        if None in widths or width in widths:
            return layout
    return "hwc" if _net_channels_last(net) else "chw"


def _attention_map(modules: dict[str, nn.Module], name: str, t: torch.Tensor) -> bool:
    """Whether ``t`` is (B, heads, N, N) from inside (or at) an attention module (a
    class named ``*Attention*`` with an integer ``num_heads``)."""
    if t.shape[-1] != t.shape[-2]:
        return False
    parts = name.split(".") if name else []
    for i in range(len(parts), -1, -1):
        module = modules[".".join(parts[:i])]
        heads = getattr(module, "num_heads", None)
        if isinstance(heads, int) and "attention" in type(module).__name__.lower():
            return heads == t.shape[1]
    return False


def _own(module: nn.Module) -> tuple[str, int | None] | None:
    """(layout, channels) when the module's own type says how its 4-D output is laid out."""
    kind = type(module).__name__
    dims = getattr(module, "dims", None)
    if kind == "Permute" and isinstance(dims, (list, tuple)) and len(dims) == 4:
        return ("hwc" if list(dims) == [0, 2, 3, 1] else "chw"), None
    fmt = getattr(module, "output_fmt", None)  # timm: PatchEmbed, Swin, ...
    fmt = str(getattr(fmt, "value", fmt) or "").upper()
    if fmt in ("NHWC", "NCHW"):
        return ("hwc" if fmt == "NHWC" else "chw"), None
    # LayerNorm2d (timm, torchvision) subclasses LayerNorm but normalises dim 1
    if isinstance(module, _CHANNELS_FIRST) or (
        isinstance(module, nn.LayerNorm) and kind.lower().endswith("2d")
    ):
        return "chw", _width(module)
    if isinstance(module, (nn.Linear, nn.LayerNorm)):  # act on the last dimension
        return "hwc", _width(module)
    return None


def _width(module: nn.Module) -> int | None:
    for attr in ("out_channels", "out_features", "num_features", "num_channels",
                 "normalized_shape"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
        if isinstance(value, (tuple, list)) and value:
            return int(value[-1])
    return None


def _inside(module: nn.Module) -> tuple[str | None, set]:
    """The layout the modules inside ``module`` give its output: ``(layout, channels)``,
    ``(None, ...)`` when none says, ``("mixed", ...)`` when they disagree."""
    own = _own(module)
    if own is not None:
        return own[0], {own[1]}
    if isinstance(module, nn.Sequential):
        for child in reversed(module):
            layout, widths = _inside(child)
            if layout is not None:
                return layout, widths
        return None, set()
    found = [o for m in module.modules() if m is not module and (o := _own(m)) is not None]
    layouts = {o[0] for o in found}
    if len(layouts) != 1:
        return ("mixed" if layouts else None), set()
    return layouts.pop(), {o[1] for o in found}


def _upstream(modules: dict[str, nn.Module], name: str) -> tuple[str | None, set]:
    """The layout of what feeds an element-wise module: the earlier siblings in a
    ``Sequential``, else the enclosing modules."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        parent = modules[".".join(parts[: i - 1])]
        if isinstance(parent, nn.Sequential):
            kids = list(parent._modules)
            for sibling in reversed(kids[: kids.index(parts[i - 1])]):
                layout, widths = _inside(parent._modules[sibling])
                if layout is not None:
                    return layout, widths
            continue
        layout, widths = _inside(parent)
        if layout is not None:
            return layout, widths
    return None, set()


def _net_channels_last(net: nn.Module) -> bool:
    if getattr(net, "output_fmt", None) in ("NHWC", "nhwc"):
        return True
    try:
        from torchvision.models import SwinTransformer
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return False
    return isinstance(net, SwinTransformer)
