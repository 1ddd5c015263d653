"""``layer="auto"``: the deepest layer whose grid still has spatial information.

A CAM can only say *where* as finely as its layer's grid: a 1×1 grid (ResNet's ``layer4``
on 32-px images) has no spatial information at all, and upsampling it gives a constant.
So the choice depends on the image size. Per family, the candidates, deepest first:

* ViTs (timm, torchvision): the last block's first norm (timm ``norm1``, torchvision
  ``ln_1``); its patch tokens carry gradient, unlike the final block's output when the
  head reads only the class token. Every block has the same (patch) grid.
* timm CNNs and hierarchical transformers: the modules of ``feature_info`` (stage
  outputs), with their grids from its reductions (``ceil(side / reduction)``).
* FasterViT: its levels; torchvision ResNets: ``layer4`` ... ``layer1``; torchvision
  ConvNeXt / Swin / EfficientNet / MobileNet / RegNet: their stages (``features.N``,
  ``trunk_output.blockN``); any other network: its ``Conv2d`` modules. Their grids come
  from one dry forward pass of a single zero image (eval mode for the pass, hooks and
  modes restored).

The deepest candidate whose grid is at least :data:`MIN_GRID` × :data:`MIN_GRID` wins;
when none is, the one with the most positions (the deepest among ties).

Cost: nothing for ViTs and timm models; for the others the dry pass is a forward of one
image per :func:`~viscope.explain.attribute` call with ``layer="auto"`` (about 1/B of
the CAM's own forward). To skip it in a loop, resolve the layer once
(``layer = auto_layer(model, (H, W))``) and pass it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from viscope.activations.layout import layout_4d
from viscope.errors import ViscopeError
from viscope.explain.inputs import first_conv, model_dtype
from viscope.models import default_input_size, unwrap
from viscope.models.fastervit_models import is_fastervit
from viscope.models.tokens import prefix_tokens

#: The smallest grid side ``layer="auto"`` accepts when a deeper layer is coarser (a 4×4
#: grid still tells the quadrant of an object; 7×7 is ResNet's layer4 at 224 px).
MIN_GRID = 4

Grid = tuple[int, int]


def auto_layer(model: nn.Module, image_hw: Sequence[int] | None = None) -> str:
    """The layer ``layer="auto"`` explains for ``model`` on images of ``image_hw``.

    Args:
        model: a model (wrapped or not).
        image_hw: the images' (H, W); ``None``: the size the model is built for
            (:func:`viscope.models.default_input_size`).

    Returns:
        A module name of the network.

    Raises:
        ViscopeError: a network with neither a known structure nor a ``Conv2d``.

    Example:
        >>> from viscope.models import create
        >>> net = create("resnet18")
        >>> auto_layer(net), auto_layer(net, (32, 32)), auto_layer(create("test_vit", img_size=32))
        ('layer4', 'layer2', 'blocks.5.norm1')
    """
    net = unwrap(model)
    hw = tuple(image_hw) if image_hw is not None else default_input_size(model)[1:]
    token = _token_layer(net)
    if token is not None:
        return token
    candidates = candidate_layers(net)
    grids = {n: (math.ceil(hw[0] / r), math.ceil(hw[1] / r)) for n, r in candidates if r}
    unknown = [n for n, r in candidates if not r]
    if unknown:
        grids.update(dry_grids(model, unknown, (int(hw[0]), int(hw[1]))))
    return pick([n for n, _ in candidates], grids)


def pick(names: Sequence[str], grids: dict[str, Grid]) -> str:
    """The first (deepest) of ``names`` whose grid is at least :data:`MIN_GRID` on both
    sides; else the one with the most positions; else the first."""
    for name in names:
        grid = grids.get(name)
        if grid is not None and min(grid) >= MIN_GRID:
            return name
    known = [n for n in names if n in grids]
    if not known:
        return names[0]
    return max(known, key=lambda n: grids[n][0] * grids[n][1])  # first max: the deepest


def suggest_layer(model: nn.Module, layer: str, image_hw: Sequence[int] | None = None) -> str:
    """A layer to try instead of ``layer`` when its map is empty or constant."""
    auto = auto_layer(model, image_hw)
    if auto != layer:
        return f"try layer={auto!r}"
    return "try an earlier block (see `viscope list layers`)"


def _token_layer(net: nn.Module) -> str | None:
    """The last block's first norm of a ViT (timm or torchvision); ``None`` otherwise."""
    if prefix_tokens(net) is None:
        return None
    blocks = getattr(net, "blocks", None)
    if isinstance(blocks, nn.Sequential | nn.ModuleList) and len(blocks):
        last = len(blocks) - 1
        return f"blocks.{last}.norm1" if hasattr(blocks[last], "norm1") else f"blocks.{last}"
    layers = getattr(getattr(net, "encoder", None), "layers", None)
    if isinstance(layers, nn.Sequential) and len(layers):  # torchvision VisionTransformer
        name, block = list(layers.named_children())[-1]
        return f"encoder.layers.{name}.ln_1" if hasattr(block, "ln_1") \
            else f"encoder.layers.{name}"
    return None


def candidate_layers(net: nn.Module) -> list[tuple[str, int | None]]:
    """(name, reduction or ``None`` when unknown) of the layers ``auto`` chooses from,
    deepest first.

    Raises:
        ViscopeError: no known structure and no ``Conv2d``.
    """
    modules = dict(net.named_modules())
    if is_fastervit(net):
        return [(f"levels.{i}", None) for i in reversed(range(len(net.levels)))]
    timm = [(n, r) for n, r in reversed(_feature_info(net)) if n in modules]
    if timm:
        return timm
    stages = _torchvision_stages(net)
    if stages:
        return [(n, None) for n in reversed(stages)]
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ViscopeError(
            f"Expected a convolutional or ViT network for layer='auto'; found no Conv2d in "
            f"{type(net).__name__}. Pass layer= with a module name (see `viscope list layers`)."
        )
    return [(n, None) for n in reversed(convs)]


def _feature_info(net: nn.Module) -> list[tuple[str, int | None]]:
    """timm's ``feature_info`` as (module, reduction), shallowest first; [] without it."""
    info = getattr(net, "feature_info", None)
    if info is None:
        return []
    try:
        if isinstance(info, list):
            return [(str(f["module"]), f.get("reduction")) for f in info]
        return list(zip(info.module_name(), info.reduction(), strict=True))
    except (TypeError, KeyError, AttributeError, ValueError):
        return []


def _torchvision_stages(net: nn.Module) -> list[str]:
    """The stage outputs of torchvision's families, shallowest first; [] for others."""
    if all(isinstance(getattr(net, f"layer{i}", None), nn.Module) for i in range(1, 5)):
        return [f"layer{i}" for i in range(1, 5)]  # ResNet, ResNeXt, Wide ResNet
    trunk = getattr(net, "trunk_output", None)
    if isinstance(trunk, nn.Sequential):  # RegNet
        return [f"trunk_output.{n}" for n, _ in trunk.named_children()]
    features = getattr(net, "features", None)
    if isinstance(features, nn.Sequential) and len(features) > 1:
        # ConvNeXt, Swin, EfficientNet, MobileNet: a Sequential of stages
        return [f"features.{n}" for n, _ in features.named_children()]
    return []


def dry_grids(model: nn.Module, names: Sequence[str], image_hw: Grid) -> dict[str, Grid]:
    """The spatial grid of each of ``names`` for one zero image of ``image_hw``.

    One forward pass under ``no_grad`` in eval mode (each module's mode is put back, so
    nothing in train mode runs: no BatchNorm update, no dropout draw); hooks only for
    the pass. Layers that did not run, or whose output is not a 4-d map, are absent;
    a model that cannot run the zero image gives ``{}`` (the real call then reports why).
    """
    net = unwrap(model)
    modules = dict(net.named_modules())
    found: dict[str, Grid] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            t = output if isinstance(output, torch.Tensor) else next(
                (o for o in (output if isinstance(output, tuple | list) else ())
                 if isinstance(o, torch.Tensor)), None)
            if name in found or t is None or t.ndim != 4:
                return
            layout = layout_4d(net, name, t)
            if layout in ("chw", "hwc"):
                found[name] = tuple(t.shape[2:4] if layout == "chw" else t.shape[1:3])

        return hook

    param = next(model.parameters(), None)
    conv = first_conv(model)
    chans = conv[1].in_channels if conv else 3
    x = torch.zeros(1, chans, *image_hw, dtype=model_dtype(model) or torch.float32,
                    device=param.device if param is not None else "cpu")
    modes = [(m, m.training) for m in model.modules()]
    handles = [modules[n].register_forward_hook(hook_for(n)) for n in names if n in modules]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    except RuntimeError:
        return {}
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return found
