"""The backbone's spatial features and the logits, from one forward pass.

Objectives that add a head on the encoder (a reconstruction decoder, a projector) need
the features the classifier pools. timm networks (and FasterViT) split their forward
into ``forward_features`` and ``forward_head``, so both come from one pass; their token
or channels-last outputs are brought to (B, C, h, w). torchvision CNNs are read at the
input of their global pooling (``avgpool``) with a hook that lives for the one call.
For features at several depths use timm's ``forward_intermediates`` on ``unwrap(model)``.
A network with its own reconstruction (FGR-Net's ``forward_reconstruction``) gives the
logits, its features and the reconstruction from one pass
(:func:`forward_with_reconstruction`); :func:`forward_step` picks what the objectives ask.
:func:`pooled_features` gives the vector the classifier reads (self-supervised heads and
probes use it).

>>> import torch
>>> from viscope import models
>>> vit = models.create("test_vit", img_size=32, num_classes=3)
>>> logits, features = forward_with_features(vit, torch.rand(2, 3, 32, 32))
>>> tuple(logits.shape), tuple(features.shape)
((2, 3), (2, 64, 2, 2))
"""

from __future__ import annotations

from torch import Tensor, nn

from viscope.errors import ViscopeError
from viscope.models import Normalized, unwrap
from viscope.models.tokens import patch_grid, prefix_tokens


def forward_with_features(model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """``(model(images), spatial features)``, with one forward pass.

    Args:
        model: a model from :func:`viscope.models.create` (or a bare network).
        images: (B, C, H, W) in [0, 1] (the wrapper normalises them).

    Returns:
        The logits (as ``model(images)`` gives them) and the last spatial features
        (B, C', h, w) before global pooling.

    Raises:
        ViscopeError: a network with neither ``forward_features``/``forward_head`` nor an
            ``avgpool`` module, or token features whose patch grid cannot be told.
    """
    x = model.normalize(images) if isinstance(model, Normalized) else images
    net = unwrap(model)
    if callable(getattr(net, "forward_features", None)) and callable(
        getattr(net, "forward_head", None)
    ):
        features = net.forward_features(x)
        return net.forward_head(features), to_spatial(net, features, tuple(images.shape[-2:]))
    pool = getattr(net, "avgpool", None)
    if isinstance(pool, nn.Module):
        captured: list[Tensor] = []
        handle = pool.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            logits = net(x)
        finally:
            handle.remove()
        return logits, to_spatial(net, captured[-1], tuple(images.shape[-2:]))
    raise ViscopeError(
        f"Expected a network with timm's forward_features/forward_head or an 'avgpool' "
        f"module, to read its features; got {type(net).__name__}. Use a timm model, or an "
        "objective that does not need features."
    )


def pooled_features(model: nn.Module, images: Tensor) -> Tensor:
    """The vector the classifier reads (B, D): the backbone's own pooling, no classifier.

    timm networks: ``forward_head(forward_features(x), pre_logits=True)`` (their own
    pooling: a ViT's class token or token mean and its norm, a CNN's global average);
    torchvision CNNs: the mean of the map that enters their ``avgpool``. So a linear
    classifier on these features can be the model's own head.

    Args:
        model: a model from :func:`viscope.models.create` (its normalisation is applied)
            or a bare network.
        images: float (B, C, H, W) in [0, 1].

    Returns:
        The pooled features.

    Raises:
        ViscopeError: a network with neither timm's forward_features/forward_head nor an
            ``avgpool`` module.
    """
    net = unwrap(model)
    if callable(getattr(net, "forward_features", None)) and callable(
        getattr(net, "forward_head", None)
    ):
        x = model.normalize(images) if isinstance(model, Normalized) else images
        return net.forward_head(net.forward_features(x), pre_logits=True)
    return forward_with_features(model, images)[1].mean(dim=(2, 3))


def has_reconstruction(model: nn.Module) -> bool:
    """Whether the network reconstructs its input itself (``forward_reconstruction``)."""
    return callable(getattr(unwrap(model), "forward_reconstruction", None))


def forward_with_reconstruction(model: nn.Module, images: Tensor
                                ) -> tuple[Tensor, Tensor, Tensor]:
    """``(logits, features, reconstruction)`` of a network that reconstructs its input.

    Args:
        model: a model whose network has ``forward_reconstruction`` (``"fgrnet"``).
        images: (B, C, H, W) in [0, 1] (the wrapper normalises them).

    Returns:
        The logits, the deepest spatial features (B, C', h, w) and the reconstruction
        (B, C, H, W) in [0, 1], from one forward pass.

    Raises:
        ViscopeError: a network without ``forward_reconstruction``.
    """
    net = unwrap(model)
    if not has_reconstruction(net):
        raise ViscopeError(
            f"Expected a network with forward_reconstruction (e.g. create('fgrnet')); got "
            f"{type(net).__name__}. For another backbone, train the 'recon' objective, whose "
            "decoder reads its features (viscope.train.ssl.reconstruction.reconstruct)."
        )
    x = model.normalize(images) if isinstance(model, Normalized) else images
    logits, features, recon = net.forward_reconstruction(x)
    return logits, to_spatial(net, features, tuple(images.shape[-2:])), recon


def forward_step(model: nn.Module, images: Tensor, *, features: bool = False,
                 reconstruction: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(logits, features or None, reconstruction or None)`` from one forward pass.

    Args:
        model: a model.
        images: (B, C, H, W) in [0, 1].
        features: return the spatial features (:func:`forward_with_features`).
        reconstruction: return the network's own reconstruction where it has one
            (:func:`forward_with_reconstruction`, which gives the features too); a
            network without one gives ``None`` there, and its features (the input of
            an objective's own decoder).

    Returns:
        The logits, the features (``None`` unless asked or given by the reconstruction
        pass) and the reconstruction (``None`` unless the network made it).

    Raises:
        ViscopeError: features or a reconstruction asked of a network that has neither
            (the message names both ways out).
    """
    if reconstruction and has_reconstruction(model):
        return forward_with_reconstruction(model, images)
    if reconstruction and not _has_features(unwrap(model)):
        raise ViscopeError(
            f"Expected a network that reconstructs its input (forward_reconstruction, "
            f"e.g. 'fgrnet') or whose features a decoder can read (timm's "
            f"forward_features/forward_head, or an 'avgpool' module); got "
            f"{type(unwrap(model)).__name__}, which has neither. Use 'fgrnet' or a "
            "timm/torchvision backbone."
        )
    if features or reconstruction:
        logits, maps = forward_with_features(model, images)
        return logits, maps, None
    return model(images), None, None


def _has_features(net: nn.Module) -> bool:
    """Whether :func:`forward_with_features` can read ``net``'s features."""
    split = all(callable(getattr(net, f, None)) for f in ("forward_features", "forward_head"))
    return split or isinstance(getattr(net, "avgpool", None), nn.Module)


def to_spatial(net: nn.Module, features: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """Features as (B, C, h, w): tokens without their prefix on the patch grid,
    channels-last maps permuted, pooled vectors as 1 x 1 maps.

    Raises:
        ViscopeError: tokens whose prefix count or patch grid the model does not tell.
    """
    if features.ndim == 4:
        if getattr(net, "output_fmt", "NCHW") == "NHWC":  # timm Swin and relatives
            return features.permute(0, 3, 1, 2)
        return features
    if features.ndim == 2:
        return features[:, :, None, None]
    if features.ndim == 3:
        prefix, grid = prefix_tokens(net), patch_grid(net, image_hw)
        tokens = None if prefix is None or grid is None else prefix + grid[0] * grid[1]
        if grid is not None and features.shape[1] == tokens:
            b, _, d = features.shape
            return features[:, prefix:].reshape(b, grid[0], grid[1], d).permute(0, 3, 1, 2)
    raise ViscopeError(
        f"Expected features (B, C, h, w), (B, C) or ViT tokens on a known patch grid; got "
        f"{tuple(features.shape)} from {type(net).__name__}. Use an objective that reads the "
        "logits, or a model whose tokens viscope can place (timm ViTs)."
    )
