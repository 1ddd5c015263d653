"""Segmentation networks from segmentation-models-pytorch (smp), named ``smp:<arch>``.

``create("smp:unet", encoder="tu-test_resnet", num_classes=1)`` builds smp's
``Unet`` with the encoder ``encoder``: any smp encoder name (``"resnet34"``,
``"efficientnet-b0"``, ...) or ``"tu-<timm name>"`` (timm's ``features_only`` backbone,
e.g. ``"tu-resnet10t"``). ``<arch>`` is any architecture of ``smp.create_model``
(``unet``, ``unetplusplus``, ``fpn``, ``deeplabv3plus``, ``manet``, ``linknet``, ``pan``,
``pspnet``, ``upernet``, ``segformer``, ``dpt``), case-insensitive. The network's output
is logits (B, num_classes, H, W); ``num_classes`` defaults to 1 (binary segmentation).

Nothing is downloaded unless ``pretrained=True``: smp's ``encoder_weights`` is ``None``
(random initialisation) by default; with ``pretrained=True`` it is ``"imagenet"`` for
smp's own encoders and ``True`` for a ``tu-`` one (timm's default weights, or those of a
tag: ``"tu-resnet10t.c3_in1k"``). A checkpoint records only the architecture's
arguments, so it always rebuilds offline. Other smp arguments pass through
(``encoder_depth=4``, ``decoder_channels=[32, 16, 8, 4]``, ``decoder_attention_type=
"scse"``, ...); misspelt ones are refused, not dropped. Without ``encoder=`` the encoder
is :data:`DEFAULT_ENCODER` (smp's default, ``resnet34``).

On a CPU at 64 px the decoder costs more than a tiny encoder: smp's default
``decoder_channels`` (256 ... 16) make a train step 2-3x slower than
``[64, 32, 16, 16, 8]``. Measured with ``fit`` on ``shapes`` masks (490 training
images, 64 px, 5 epochs, batch 32, lr 3e-3, 2 shared CPU cores): ``tu-test_efficientnet``
with that decoder 16 s, test Dice 0.96; ``tu-test_resnet``, ``encoder_depth=4``,
``decoder_channels=[64, 32, 16, 8]`` 21 s, 0.96; smp's ``resnet18``, ``encoder_depth=3``,
``decoder_channels=[32, 16, 8]`` 28 s, 0.975.

>>> import torch
>>> net = build_smp("smp:unet", encoder="tu-test_resnet", encoder_depth=4,
...                 decoder_channels=[32, 16, 8, 8])
>>> net(torch.rand(2, 3, 32, 32)).shape
torch.Size([2, 1, 32, 32])
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from viscope.errors import ViscopeError, suggest

SMP_PREFIX = "smp:"

#: The encoder when none is given: smp's own default.
DEFAULT_ENCODER = "resnet34"

# smp arguments that viscope sets from create()'s own (or that would break the training
# objectives, which read logits as one tensor).
_RESERVED = {
    "encoder_name": "encoder=",
    "encoder_weights": "pretrained=True (ImageNet weights; others through checkpoint=)",
    "in_channels": "in_chans=",
    "classes": "num_classes=",
    "activation": "nothing (the objectives read logits; apply a sigmoid to the output)",
    "aux_params": "nothing (a classification head makes the output a tuple, which the "
                  "objectives do not read)",
}


def is_smp_name(name: str) -> bool:
    """Whether ``name`` is an smp network (``smp:<arch>``)."""
    return name.startswith(SMP_PREFIX)


def smp_architectures() -> list[str]:
    """The ``smp:<arch>`` names, lower case."""
    import segmentation_models_pytorch as smp

    return [SMP_PREFIX + a for a in smp.MODEL_ARCHITECTURES_MAPPING]


def build_smp(
    name: str,
    *,
    num_classes: int | None = None,
    pretrained: bool = False,
    in_chans: int = 3,
    encoder: str = DEFAULT_ENCODER,
    **kwargs: Any,
) -> nn.Module:
    """Build an smp network (no normalisation wrapper; :func:`viscope.models.create` adds it).

    Args:
        name: ``"smp:<arch>"``.
        num_classes: output channels (``None``: 1).
        pretrained: ImageNet weights for the encoder (downloads them); otherwise random.
        in_chans: input channels.
        encoder: an smp encoder name or ``"tu-<timm name>"``.
        **kwargs: other arguments of the smp architecture.

    Returns:
        The network, with ``num_classes`` (its output channels) and, for a timm
        encoder, a ``pretrained_cfg`` holding timm's mean/std of that encoder.

    Raises:
        ViscopeError: an unknown architecture or encoder (with close matches), a
            reserved argument, or arguments the architecture refuses.
    """
    import segmentation_models_pytorch as smp

    arch = name[len(SMP_PREFIX):].lower()
    if arch not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise ViscopeError(
            f"Unknown smp architecture {name!r}.{suggest(name, smp_architectures())} "
            f"Expected one of {', '.join(smp_architectures())}."
        )
    reserved = sorted(set(kwargs) & set(_RESERVED))
    if reserved:
        instead = "; ".join(f"{k}: use {_RESERVED[k]}" for k in reserved)
        raise ViscopeError(
            f"Expected smp arguments other than {reserved} for {name!r}; got them ({instead})."
        )
    _check_encoder(encoder)
    _check_arguments(smp.MODEL_ARCHITECTURES_MAPPING[arch], name, encoder, kwargs)
    classes = 1 if num_classes is None else num_classes
    # smp's own encoders name their weights; a timm one takes True (timm's default tag)
    weights = (True if encoder.startswith("tu-") else "imagenet") if pretrained else None
    try:
        net = smp.create_model(
            arch, encoder_name=encoder, encoder_weights=weights,  # type: ignore[arg-type]
            in_channels=in_chans, classes=classes, **kwargs,
        )
    except (TypeError, ValueError, KeyError) as err:
        raise ViscopeError(
            f"Expected arguments that smp's {arch!r} with encoder {encoder!r} accepts; got "
            f"{sorted(kwargs)} ({str(err).splitlines()[0] if str(err) else err!r})."
        ) from None
    net.num_classes = classes  # as timm classifiers: what fit's output check reads
    mean_std = _timm_mean_std(encoder)
    if mean_std is not None:
        net.pretrained_cfg = {"mean": mean_std[0], "std": mean_std[1]}
    return net


def _check_arguments(cls: type, name: str, encoder: str, kwargs: dict[str, Any]) -> None:
    """Refuse arguments the architecture does not name: smp passes them to the encoder,
    where timm (``tu-``) takes or refuses them but smp's own encoders drop them silently
    (a misspelt ``decoder_channel`` would train the default decoder)."""
    if encoder.startswith("tu-"):
        return
    named = [p for p, v in inspect.signature(cls.__init__).parameters.items()
             if p != "self" and v.kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(set(kwargs) - set(named))
    if unknown:
        accepted = [p for p in named if p not in _RESERVED]
        raise ViscopeError(
            f"Expected arguments of smp's {cls.__name__} for {name!r}; got {unknown}."
            f"{suggest(unknown[0], accepted)} Accepted: {', '.join(accepted)} (with a "
            "'tu-' encoder, other arguments go to timm.create_model)."
        )


def _check_encoder(encoder: Any) -> None:
    """Refuse an encoder that neither smp nor timm knows, before smp's KeyError/RuntimeError."""
    import segmentation_models_pytorch as smp
    import timm

    if not isinstance(encoder, str):
        raise ViscopeError(f"Expected encoder to be a name (e.g. 'resnet34'); got {encoder!r}.")
    if encoder.startswith("tu-"):
        timm_name = encoder[3:]
        if not timm.is_model(timm_name):
            choices = ["tu-" + n for n in timm.list_models()]
            raise ViscopeError(
                f"Unknown timm encoder {encoder!r}.{suggest(encoder, choices)} Expected "
                "'tu-<name>' with a timm model name (timm.list_models())."
            )
        return
    names = smp.encoders.get_encoder_names()
    if encoder not in names:
        raise ViscopeError(
            f"Unknown smp encoder {encoder!r}.{suggest(encoder, names)} Expected one of "
            "smp.encoders.get_encoder_names() or 'tu-<timm name>' (e.g. 'tu-resnet10t')."
        )


def _timm_mean_std(encoder: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """timm's mean/std for a ``tu-`` encoder (read locally, nothing downloaded); ``None``
    for smp's own encoders (whose settings smp fetches from the Hub: viscope's ImageNet
    default, which nearly all of them use, applies instead)."""
    if not encoder.startswith("tu-"):
        return None
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(encoder[3:].partition(".")[0])
    except (RuntimeError, KeyError, ValueError):
        return None
    if cfg is None or not cfg.mean or not cfg.std:
        return None
    return tuple(cfg.mean), tuple(cfg.std)
