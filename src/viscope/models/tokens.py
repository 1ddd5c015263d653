"""Token models: how many prefix tokens precede the patch tokens, and the patch grid.

A ViT's token output (B, N, D) is ``prefix`` tokens (class, distillation, register)
followed by the patch tokens of an ``rows x cols`` grid. Both numbers are read from the
model's structure, never guessed from N: timm says ``num_prefix_tokens``; torchvision's
``VisionTransformer`` has a ``class_token`` parameter and a ``conv_proj`` whose stride
is the patch size; a plain module counts its ``cls_token`` / ``dist_token`` /
``reg_token`` parameters. Where the structure says nothing, :func:`prefix_tokens` is
``None`` and callers refuse to split the tokens (asking for ``prefix_tokens=``).

>>> from viscope.models import create
>>> vit = create("test_vit", img_size=32)
>>> prefix_tokens(vit), patch_grid(vit, (32, 32))
(1, (2, 2))
"""

from __future__ import annotations

import torch
from torch import nn

from viscope.models.wrapper import unwrap

#: Parameters that hold prefix tokens (1, k, D) in ViT implementations: timm and DeiT
#: (cls_token, dist_token, reg_token), torchvision (class_token), DINOv2 (register_tokens).
TOKEN_PARAMETERS = ("cls_token", "class_token", "dist_token", "reg_token", "register_tokens")


def prefix_tokens(model: nn.Module) -> int | None:
    """The number of tokens before the patch tokens, from the model's structure.

    Args:
        model: a model (wrapped or not).

    Returns:
        timm's ``num_prefix_tokens`` where the network has it; else the number of tokens
        held by its prefix-token parameters (:data:`TOKEN_PARAMETERS`, e.g. torchvision's
        ``class_token``); ``None`` when the network has neither (a CNN, or a token model
        whose prefix cannot be told).

    Example:
        >>> import torchvision
        >>> prefix_tokens(torchvision.models.VisionTransformer(32, 8, 1, 2, 16, 32))
        1
    """
    net = unwrap(model)
    n = getattr(net, "num_prefix_tokens", None)
    if isinstance(n, int) and not isinstance(n, bool):
        return n
    found = [getattr(net, a) for a in TOKEN_PARAMETERS
             if isinstance(getattr(net, a, None), torch.Tensor)]
    if not found:
        return None
    # (1, k, D) holds k tokens; a bare (D,) vector one
    return sum(int(t.shape[-2]) if t.ndim >= 2 else 1 for t in found)


def patch_grid(model: nn.Module, image_hw: tuple[int, int] | None) -> tuple[int, int] | None:
    """The (rows, columns) of the patch tokens for images of ``image_hw``.

    timm's ``patch_embed.dynamic_feat_size`` (which knows its padding), else the patch
    size of ``patch_embed`` or of torchvision's ``conv_proj``; ``None`` for a network
    without a patch embedding or when ``image_hw`` is unknown.

    Example:
        >>> import torchvision
        >>> patch_grid(torchvision.models.VisionTransformer(32, 8, 1, 2, 16, 32), (32, 48))
        (4, 6)
    """
    if image_hw is None:
        return None
    net = unwrap(model)
    embed = getattr(net, "patch_embed", None)
    feat_size = getattr(embed, "dynamic_feat_size", None)
    if callable(feat_size):
        try:
            rows, cols = feat_size(tuple(image_hw))
            return int(rows), int(cols)
        except (TypeError, ValueError, AttributeError):
            pass
    patch = getattr(embed, "patch_size", None)
    if patch is None and isinstance(getattr(net, "conv_proj", None), nn.Conv2d):
        patch = net.conv_proj.stride  # torchvision: kernel = stride = patch_size
    if patch is None:
        return None
    ph, pw = (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))
    return int(image_hw[0]) // ph, int(image_hw[1]) // pw


def is_token_model(model: nn.Module) -> bool:
    """Whether the network prepends prefix tokens to patch tokens (a ViT-like model)."""
    return prefix_tokens(model) is not None
