"""The reconstruction objective ``"recon"``: MSE between a reconstruction and the input.

One branch for every model. A network that reconstructs its input itself (FGR-Net's UNet
decoder with skip connections, :mod:`viscope.models.quality`) fills
:attr:`~viscope.train.objectives.Step.reconstruction` in the same forward pass as the
logits; any other backbone (timm, torchvision) gets a :class:`LightDecoder` on its
spatial features, built by the objective in ``setup`` from the example step and owned by
it (trained with the model, saved in ``best.pt`` under ``"objectives"``).

``fit(model, ..., objectives=["ce:0.5", "recon:0.5"])`` is FGR-Net's ``(CE + MSE) / 2``;
``["ce:0.5"]`` alone trains the same network as a plain classifier. The target is the
model's (augmented) input in [0, 1], not the normalised tensor the network sees.

>>> import torch
>>> from viscope import models
>>> from viscope.train.objectives import Step
>>> net = models.create("test_efficientnet", num_classes=3)
>>> recon = Reconstruction(weight=0.5)
>>> x = torch.rand(2, 3, 32, 32)
>>> from viscope.train.features import forward_with_features
>>> logits, features = forward_with_features(net, x)
>>> recon.setup(net, 3, Step("train", x, (x, torch.zeros(2)), logits, features, net))
>>> tuple(recon.reconstruct(Step("val", x, (x,), logits, features, net)).shape)
(2, 3, 32, 32)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image import PeakSignalNoiseRatio

from viscope.errors import ViscopeError
from viscope.train.features import (
    forward_with_features,
    forward_with_reconstruction,
    has_reconstruction,
)
from viscope.train.objectives import Objective, Step, register_objective


class LightDecoder(nn.Module):
    """A light decoder from a backbone's features (B, C, h, w) to an image in [0, 1].

    A 1x1 convolution to ``width`` channels, then ``blocks`` times (upsample x2
    bilinearly, 3x3 convolution halving the channels down to ``min_width``, GroupNorm,
    GELU), then a 3x3 convolution to the image's channels and a sigmoid; the map is
    resized bilinearly to the image's size at the end when the upsampling does not reach
    it exactly (a feature grid that is not the image's size over a power of two).
    GroupNorm rather than BatchNorm keeps training and evaluation alike at any batch
    size. Written with torch layers: smp's decoders need features at several scales
    and lightly's MAE decoder reads tokens, so neither fits one spatial map of any
    backbone.

    Args:
        in_channels: the features' channels.
        out_channels: the image's channels.
        blocks: upsampling blocks (each doubles the grid).
        width: channels after the 1x1 convolution.
        min_width: the fewest channels a block halves to.
    """

    def __init__(self, in_channels: int, out_channels: int, blocks: int, width: int = 64,
                 min_width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 1)]
        channels = width
        for _ in range(blocks):
            out = max(min_width, channels // 2)
            layers += [
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(channels, out, 3, padding=1),
                nn.GroupNorm(math.gcd(8, out), out),
                nn.GELU(),
            ]
            channels = out
        layers.append(nn.Conv2d(channels, out_channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    @classmethod
    def for_step(cls, features: Tensor, images: Tensor, width: int = 64) -> LightDecoder:
        """The decoder that brings ``features`` (B, C, h, w) back to ``images``' size.

        Args:
            features: the backbone's features of an example batch.
            images: that batch's images (B, C, H, W).
            width: channels after the 1x1 convolution.

        Returns:
            A decoder with ``ceil(log2(max(H / h, W / w)))`` blocks, on the features'
            device and in their dtype.
        """
        ratio = max(images.shape[-2] / features.shape[-2], images.shape[-1] / features.shape[-1])
        blocks = max(0, math.ceil(math.log2(ratio) - 1e-9)) if ratio > 1 else 0
        decoder = cls(features.shape[1], images.shape[1], blocks, width=width)
        return decoder.to(device=features.device, dtype=features.dtype)

    def forward(self, features: Tensor, size: Sequence[int]) -> Tensor:
        """The reconstruction (B, out_channels, *size) in [0, 1] of ``features``."""
        out = self.body(features)
        if tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)
        return torch.sigmoid(out)


@register_objective
class Reconstruction(Objective):
    """Mean squared error between the reconstruction and the model's input images.

    The reconstruction is the network's own (:attr:`Step.reconstruction`, FGR-Net) or,
    for any other backbone, that of a :class:`LightDecoder` on :attr:`Step.features`,
    built in :meth:`setup` (sized from the example step) and owned by this objective.

    Validation metric: ``psnr`` (torchmetrics' ``PeakSignalNoiseRatio`` with
    ``data_range=1``, from the squared error pooled over the split), logged as
    ``val_psnr``; the MSE itself is ``val_recon_loss``.

    Args:
        weight: the factor of this term in the training loss.
        width: channels of the light decoder's first layer (unused by a network that
            reconstructs itself).

    Raises:
        ViscopeError: a weight that is not a finite number >= 0, or a width < 1.
    """

    name = "recon"
    uses_features = True
    uses_reconstruction = True

    def __init__(self, weight: float = 1.0, width: int = 64) -> None:
        super().__init__(weight)
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ViscopeError(f"Expected width to be a positive int; got {width!r}.")
        self.width = width
        self.decoder: LightDecoder | None = None

    def setup(self, model: nn.Module, num_classes: int, example: Step) -> None:
        """Build the light decoder, unless the network reconstructs its input itself.

        Raises:
            ViscopeError: the example step has neither a reconstruction nor features.
        """
        if example.reconstruction is not None:
            self.decoder = None
            return
        if example.features is None:
            raise ViscopeError(
                "Expected the step to carry features or the network's reconstruction for "
                "objective 'recon'; got neither. Train it through fit (or TrainModule), "
                "which asks the model for them."
            )
        self.decoder = LightDecoder.for_step(example.features, example.images, self.width)

    def reconstruct(self, step: Step) -> Tensor:
        """The reconstruction of ``step.images`` (B, C, H, W) in [0, 1].

        Raises:
            ViscopeError: the network does not reconstruct and the decoder was not built.
        """
        if step.reconstruction is not None:
            return step.reconstruction
        if self.decoder is None or step.features is None:
            raise ViscopeError(
                "Expected objective 'recon' to be set up with a light decoder for a network "
                "without its own reconstruction; got none. Call setup(model, num_classes, "
                "example_step) first (fit does)."
            )
        return self.decoder(step.features, step.images.shape[-2:])

    def loss(self, step: Step) -> Tensor:
        return F.mse_loss(self.reconstruct(step).float(), step.images.float())

    def metrics(self, num_classes: int) -> dict[str, Metric]:
        return {"psnr": PeakSignalNoiseRatio(data_range=1.0)}

    def update(self, metrics: Mapping[str, Metric], step: Step) -> None:
        metrics["psnr"].update(self.reconstruct(step).float(), step.images.float())

    def options(self) -> dict[str, Any]:
        return {"width": self.width} if self.width != 64 else {}


def reconstruct(model: nn.Module, images: Tensor, objective: Reconstruction | None = None
                ) -> Tensor:
    """Reconstructions of ``images`` for figures, without gradients.

    The model (and the objective's decoder) run in eval mode for the call; every
    module's mode is put back afterwards.

    Args:
        model: a model from :func:`viscope.models.create`.
        images: (B, C, H, W) in [0, 1].
        objective: the trained ``"recon"`` objective whose decoder reads the model's
            features; not needed for a network with its own reconstruction (FGR-Net).

    Returns:
        (B, C, H, W) in [0, 1].

    Raises:
        ViscopeError: a network without its own reconstruction and no set-up objective.
    """
    own = has_reconstruction(model)
    decoder = objective.decoder if objective is not None else None
    if not own and decoder is None:
        raise ViscopeError(
            "Expected a network with its own reconstruction ('fgrnet') or the trained "
            "'recon' objective whose decoder reads its features; got "
            f"objective={objective!r}. Pass the objective fit trained (set up, weights "
            "loaded from best.pt's 'objectives')."
        )
    param = next(model.parameters(), None)
    if param is not None and param.is_floating_point():
        images = images.to(device=param.device, dtype=param.dtype)
    parts = [model] if decoder is None else [model, decoder]
    modes = [(m, m.training) for part in parts for m in part.modules()]
    try:
        for part in parts:
            part.eval()
        with torch.no_grad():
            if own:
                return forward_with_reconstruction(model, images)[2]
            _, features = forward_with_features(model, images)
            return decoder(features, images.shape[-2:])  # type: ignore[misc]
    finally:
        for module, mode in modes:
            module.training = mode
