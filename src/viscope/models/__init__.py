"""Models: one factory for timm, torchvision, FasterViT and smp networks (and FGR-Net), and
layer discovery.

Every model takes images in [0, 1] and normalises them itself; layers are addressed by
the network's own module names (``unwrap(model)``), with glob patterns.

>>> import torch
>>> from viscope import models
>>> model = models.create("test_vit", img_size=32, num_classes=3)
>>> model(torch.rand(2, 3, 32, 32)).shape
torch.Size([2, 3])
>>> models.select_layers(model, "blocks.*") == models.default_layers(model)
True
"""

from viscope.models.checkpoint import save_checkpoint
from viscope.models.factory import MODELS, build_network, create, list_models
from viscope.models.fastervit_models import TINY_CONFIG, windowed_modules
from viscope.models.layers import (
    LayerInfo,
    default_input_size,
    default_layers,
    layers,
    match_layer,
    select_layers,
)
from viscope.models.quality import FGRNet
from viscope.models.wrapper import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSpec,
    Normalized,
    spec_of,
    unwrap,
)

__all__ = [
    "FGRNet",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODELS",
    "TINY_CONFIG",
    "LayerInfo",
    "ModelSpec",
    "Normalized",
    "build_network",
    "create",
    "default_input_size",
    "default_layers",
    "layers",
    "list_models",
    "match_layer",
    "save_checkpoint",
    "spec_of",
    "select_layers",
    "unwrap",
    "windowed_modules",
]
