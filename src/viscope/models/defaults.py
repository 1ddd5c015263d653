"""The default layers of a model: its family's block outputs, kept where the tap can
measure them.

Which blocks are worth measuring is a property of the architecture (ViT blocks, ResNet
stages' blocks, EfficientNet blocks, ...), written here once per family; what the tap can
measure (one tensor per sample, each call of a module that runs several times) comes
from a dry forward pass, done by the caller (:func:`viscope.models.layers.layers`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from viscope.models.fastervit_models import is_fastervit
from viscope.models.patterns import match_layer

if TYPE_CHECKING:
    from viscope.models.layers import LayerInfo


def defaults(net: nn.Module, names: list[str], infos: list[LayerInfo] | None) -> list[str]:
    """The default layer addresses of a network (see ``viscope.models.default_layers``).

    Args:
        net: the network (unwrapped).
        names: its module names, in ``named_modules`` order.
        infos: what a dry forward pass saw (``viscope.models.layers``); ``None`` where it
            failed, which keeps the candidates as they are.

    Returns:
        The family's candidates, each replaced by its calls whose output is per sample.
    """
    family = family_patterns(net)
    leaves = [n for n, m in net.named_modules() if n and isinstance(m, nn.Conv2d | nn.Linear)]
    if family is not None:
        candidates = [n for n in names if any(match_layer(n, p) for p in family)]
    else:
        candidates = _feature_modules(net, names) or leaves
    if infos is None:
        return candidates
    per_call: dict[str, list[LayerInfo]] = {}
    for info in infos:
        per_call.setdefault(info.module, []).append(info)

    def measurable(modules: list[str]) -> list[str]:
        return [i.name for n in modules for i in per_call.get(n, []) if i.per_sample]

    # timm's feature_info of some models (PiT, CrossViT, HRNet) names only modules whose
    # outputs are not one tensor per sample: fall back to the convolutions and linears
    return measurable(candidates) or (measurable(leaves) if family is None else [])


def _feature_modules(net: nn.Module, names: list[str]) -> list[str]:
    """The modules timm's ``feature_info`` names, in network order (none: ``[]``)."""
    info = getattr(net, "feature_info", None)
    if info is None:
        return []
    try:
        wanted = {f["module"] for f in info} if isinstance(info, list) else set(
            info.module_name())
    except (TypeError, KeyError, AttributeError):
        return []
    return [n for n in names if n in wanted]


def family_patterns(net: nn.Module) -> list[str] | None:
    """The block patterns of a known family (ViT, EfficientNet, ResNet, ConvNeXt,
    FasterViT; torchvision's ViT and its models built on a ``features`` Sequential:
    Swin, ConvNeXt, EfficientNet, MobileNet, VGG, DenseNet), or ``None``."""
    if is_fastervit(net):
        return ["patch_embed", "levels.*"]
    if type(net).__module__.startswith("torchvision.models"):
        if hasattr(net, "encoder") and hasattr(net, "class_token"):  # VisionTransformer
            return ["encoder.layers.*"]
        if isinstance(getattr(net, "features", None), nn.Sequential):
            return ["features.*"]
    from timm.models.beit import Beit
    from timm.models.convnext import ConvNeXt
    from timm.models.efficientnet import EfficientNet
    from timm.models.eva import Eva
    from timm.models.resnet import ResNet as TimmResNet
    from timm.models.vision_transformer import VisionTransformer
    from torchvision.models import ResNet as TorchvisionResNet

    if isinstance(net, VisionTransformer | Eva | Beit):
        return ["blocks.*"]
    if isinstance(net, EfficientNet):
        return ["blocks.*.*"]
    if isinstance(net, TimmResNet | TorchvisionResNet):
        return ["layer*.*"]
    if isinstance(net, ConvNeXt):
        return ["stages.*.blocks.*"]
    return None
