"""FGR-Net: a UNet autoencoder whose encoder also grades the image (``create("fgrnet")``).

FGR-Net (Khalid, Rashwan, Abdulwahab, Abdel-Nasser, Quiroga, Puig: "FGR-Net:
Interpretable fundus image gradeability classification based on deep reconstruction
learning") reconstructs the fundus photograph with a UNet-shaped autoencoder and
classifies its gradeability from the encoder's deepest features; it trains on
``(CE + MSE) / 2`` (``fit(objectives=["ce:0.5", "recon:0.5"])``, the ``"recon"``
objective of :mod:`viscope.train.ssl.reconstruction`).

The network is segmentation-models-pytorch's ``Unet`` built by
:func:`~viscope.models.segmentation.build_smp` (its encoder, argument checks, offline
weights and timm mean/std), with ``in_chans`` output channels for the reconstruction and
smp's ``ClassificationHead`` on the encoder's deepest features (pooling, dropout,
Linear: what smp's ``aux_params`` builds). Nothing is written by hand but the wiring.

- ``forward(x)``: logits (B, K) only, from the encoder and the head (the decoder does not
  run), so explanations, invariance, ``evaluate`` and checkpoints treat it as any
  classifier;
- ``forward_features(x)`` / ``forward_head(f)``: timm's split (deepest encoder map, then
  logits);
- ``forward_reconstruction(x)``: ``(logits, deepest features, reconstruction)`` from one
  encoder pass; the reconstruction is a sigmoid, in [0, 1], to compare with the
  un-normalised image (the viscope wrapper normalises the network's input).

Layers: ``feature_info`` lists the encoder's stages (module names, channels,
reductions), found once at construction by matching each tensor the encoder returns to
the module that produced it; the default layers (invariance) and ``layer="auto"``
(CAMs) read it, so both stay on the encoder.

>>> import torch
>>> net = build_fgrnet(num_classes=3, encoder="tu-test_efficientnet", encoder_depth=4,
...                    decoder_channels=[32, 16, 8, 8])
>>> logits, features, recon = net.eval().forward_reconstruction(torch.rand(2, 3, 32, 32))
>>> tuple(logits.shape), tuple(features.shape), tuple(recon.shape)
((2, 3), (2, 48, 2, 2), (2, 3, 32, 32))
>>> [f["module"] for f in net.feature_info][-1]
'encoder.model.blocks.3'
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from viscope.errors import ViscopeError
from viscope.models.segmentation import DEFAULT_ENCODER, build_smp

FGRNET = "fgrnet"

# fgrnet arguments that would conflict with its own heads (build_smp refuses the rest of
# smp's reserved ones with its own advice).
_OWN = {
    "aux_params": "num_classes=, dropout= and pooling= (FGR-Net builds its classifier)",
    "activation": "nothing (the reconstruction is a sigmoid already; logits stay logits)",
}


def is_fgrnet_name(name: str) -> bool:
    """Whether ``name`` is FGR-Net's (``"fgrnet"``, any case)."""
    return isinstance(name, str) and name.lower() == FGRNET


class FGRNet(nn.Module):
    """A UNet autoencoder with a classifier on its encoder's deepest features.

    Built by :func:`build_fgrnet`; the parts are smp's.

    Args:
        unet: an smp ``Unet`` whose output channels are the input channels.
        classification_head: the classifier on ``unet.encoder``'s deepest map.
        num_classes: the classifier's outputs.

    Attributes:
        encoder: the UNet's encoder (returns a list of maps, the deepest last).
        decoder: the UNet's decoder (with skip connections).
        reconstruction_head: smp's segmentation head, ``in_chans`` outputs (logits).
        classification_head: pooling, dropout, Linear.
        num_classes: the classifier's outputs.
        feature_info: the encoder's stages as timm describes features:
            ``[{"module", "num_chs", "reduction"}, ...]``, shallowest first.
    """

    def __init__(self, unet: nn.Module, classification_head: nn.Module, num_classes: int
                 ) -> None:
        super().__init__()
        self.encoder = unet.encoder
        self.decoder = unet.decoder
        self.reconstruction_head = unet.segmentation_head
        self.classification_head = classification_head
        self.num_classes = num_classes
        self.output_stride = int(unet.encoder.output_stride)
        cfg = getattr(unet, "pretrained_cfg", None)
        if cfg is not None:
            self.pretrained_cfg = dict(cfg)
        self.feature_info = _encoder_stages(self)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, num_classes) of normalised images (the decoder does not run)."""
        return self.forward_head(self.forward_features(x))

    def forward_features(self, x: Tensor) -> Tensor:
        """The encoder's deepest map (B, C, h, w)."""
        return self.encoder(x)[-1]

    def forward_head(self, features: Tensor) -> Tensor:
        """Logits (B, num_classes) of the encoder's deepest map."""
        return self.classification_head(features)

    def forward_reconstruction(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Logits, deepest features and reconstruction from one encoder pass.

        Args:
            x: normalised images (B, C, H, W), sides divisible by :attr:`output_stride`.

        Returns:
            ``(logits (B, K), features (B, C', h, w), reconstruction (B, C, H, W))``, the
            reconstruction in [0, 1].

        Raises:
            ViscopeError: image sides the decoder cannot bring back (not divisible by
                the encoder's output stride); the message gives the padded size.
        """
        self._check_size(x)
        stages = self.encoder(x)
        recon = torch.sigmoid(self.reconstruction_head(self.decoder(stages)))
        return self.forward_head(stages[-1]), stages[-1], recon

    def _check_size(self, x: Tensor) -> None:
        stride = self.output_stride
        h, w = x.shape[-2:]
        if h % stride or w % stride:
            want = tuple(-(-s // stride) * stride for s in (h, w))
            raise ViscopeError(
                f"Expected image sides divisible by {stride} (FGR-Net's encoder output "
                f"stride) for the reconstruction; got {h}x{w}. Resize or pad the images to "
                f"{want[0]}x{want[1]}, or build it with a smaller encoder_depth."
            )


def build_fgrnet(
    name: str = FGRNET,
    *,
    num_classes: int | None = None,
    pretrained: bool = False,
    in_chans: int = 3,
    encoder: str = DEFAULT_ENCODER,
    dropout: float = 0.2,
    pooling: str = "avg",
    **kwargs: Any,
) -> FGRNet:
    """Build FGR-Net (no normalisation wrapper; :func:`viscope.models.create` adds it).

    Args:
        name: ``"fgrnet"``.
        num_classes: the classifier's outputs (``None``: 2, gradable or not).
        pretrained: ImageNet weights for the encoder (downloads them); otherwise random.
        in_chans: input channels, and the reconstruction's.
        encoder: an smp encoder name (``"vgg11"``, ``"resnet34"``) or ``"tu-<timm name>"``
            (``"tu-test_efficientnet"``).
        dropout: dropout before the classifier's Linear (0: none).
        pooling: ``"avg"`` or ``"max"``, the classifier's global pooling.
        **kwargs: other arguments of smp's ``Unet`` (``encoder_depth``,
            ``decoder_channels``, ...), checked as for ``smp:unet``.

    Returns:
        The :class:`FGRNet`.

    Raises:
        ViscopeError: a name other than ``"fgrnet"``, an unknown encoder (with close
            matches), arguments smp's Unet refuses or that FGR-Net sets itself, a
            dropout outside [0, 1) or an unknown pooling.
    """
    from segmentation_models_pytorch.base import ClassificationHead
    from segmentation_models_pytorch.base import initialization as smp_init

    if not is_fgrnet_name(name):
        raise ViscopeError(f"Expected the model name 'fgrnet'; got {name!r}.")
    own = sorted(set(kwargs) & set(_OWN))
    if own:
        instead = "; ".join(f"{k}: use {_OWN[k]}" for k in own)
        raise ViscopeError(f"Expected fgrnet arguments other than {own}; got them ({instead}).")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ViscopeError(f"Expected 0 <= dropout < 1 for fgrnet; got dropout={dropout!r}.")
    if pooling not in ("avg", "max"):
        raise ViscopeError(f"Expected pooling='avg' or 'max' for fgrnet; got {pooling!r}.")
    classes = 2 if num_classes is None else num_classes
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ViscopeError(f"Expected num_classes to be a positive int; got {num_classes!r}.")
    # the UNet reconstructs the input: as many output channels as input ones
    unet = build_smp("smp:unet", num_classes=in_chans, pretrained=pretrained,
                     in_chans=in_chans, encoder=encoder, **kwargs)
    head = ClassificationHead(in_channels=unet.encoder.out_channels[-1], classes=classes,
                              pooling=pooling, dropout=float(dropout))
    smp_init.initialize_head(head)  # as smp's Unet initialises its aux head
    return FGRNet(unet, head, classes)


def _encoder_stages(net: FGRNet) -> list[dict[str, Any]]:
    """The encoder's stages: for each map the encoder returns, the outermost module whose
    output is that very tensor (the stage itself, not its last layer).

    One forward pass of a zero image (2 x the output stride a side) in eval mode, without
    gradients; hooks and modes are restored. Maps no module returns as they are (the input
    smp passes on as the first "feature", the empty placeholder of transformer-style
    encoders, channels-last maps smp permutes) are left out; with none found the list is
    empty and the layer defaults fall back to the convolutions.
    """
    encoder = net.encoder
    outputs: list[tuple[str, Tensor]] = []
    handles = [
        m.register_forward_hook(lambda _m, _a, out, n=n: outputs.append((n, out)))
        for n, m in encoder.named_modules() if n
    ]
    modes = [(m, m.training) for m in encoder.modules()]
    param = next(encoder.parameters(), None)
    first = next((m for m in encoder.modules() if isinstance(m, nn.Conv2d)), None)
    chans = first.in_channels if first is not None else 3
    side = 2 * net.output_stride
    x = torch.zeros(1, chans, side, side, device=param.device if param is not None else None,
                    dtype=param.dtype if param is not None else None)
    try:
        encoder.eval()
        with torch.no_grad():
            maps = encoder(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes:
            module.training = mode
    stages = []
    for feature in maps:
        # hooks fire as modules finish, so the last match is the outermost module
        names = [n for n, out in outputs if out is feature]
        if names and feature.ndim == 4 and feature.shape[-1]:
            stages.append({"module": f"encoder.{names[-1]}", "num_chs": int(feature.shape[1]),
                           "reduction": side // int(feature.shape[-1])})
    return stages
