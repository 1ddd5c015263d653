"""``create``: one factory for timm, torchvision and FasterViT models and checkpoints."""

from __future__ import annotations

import os
from typing import Any

import timm
from torch import nn

from viscope.errors import ViscopeError, suggest
from viscope.models.checkpoint import (
    extract_state_dict,
    is_checkpoint_path,
    load_weights,
    read_checkpoint,
)
from viscope.models.fastervit_models import create_fastervit, fastervit_names, is_fastervit_name
from viscope.models.quality import build_fgrnet, is_fgrnet_name
from viscope.models.segmentation import build_smp, is_smp_name
from viscope.models.wrapper import ModelSpec, NormalizeArg, Normalized, resolve_normalize, unwrap
from viscope.registry import Registry

TORCHVISION_PREFIX = "torchvision:"

#: A short list of models that work offline with random weights (``viscope list models``);
#: ``create`` accepts any timm name besides.
MODELS: Registry[str] = Registry("model")
for _name, _about in [
    ("test_vit", "timm: a tiny ViT (use img_size=32 for 32 px images)"),
    ("test_efficientnet", "timm: a tiny EfficientNet"),
    ("resnet18", "timm: ResNet-18"),
    ("vit_tiny_patch16_224", "timm: ViT-Ti/16 (img_size=32, patch_size=4 for 32 px images)"),
    ("efficientnet_b0", "timm: EfficientNet-B0"),
    ("fastervit_tiny", "fastervit: a small FasterViT for 32 px images, with carrier tokens"),
    ("fastervit_0", "fastervit: FasterViT-0 (224 px)"),
    ("torchvision:resnet18", "torchvision: ResNet-18"),
    ("smp:unet", "smp: a UNet, logits (B, 1, H, W); encoder=any smp encoder or tu-<timm name>"),
    ("fgrnet", "smp: FGR-Net, a UNet autoencoder whose encoder classifies (logits (B, K); "
               "forward_reconstruction); encoder= as smp:unet"),
]:
    MODELS.register(_name, _about)


def list_models() -> list[str]:
    """The curated model names shown by ``viscope list models``.

    Returns:
        Names that ``create`` builds offline with random weights.

    Example:
        >>> "resnet18" in list_models()
        True
    """
    return MODELS.names()


def create(
    name: str | os.PathLike[str],
    *,
    num_classes: int | None = None,
    pretrained: bool = False,
    in_chans: int = 3,
    normalize: NormalizeArg = "auto",
    checkpoint: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> Normalized:
    """Make a model whose input is images in [0, 1]; it normalises them itself.

    Args:
        name: a timm model name (``"resnet18"``, ``"test_vit"``, ``"hf-hub:..."``), a
            torchvision one as ``"torchvision:resnet18"``, a FasterViT one
            (``"fastervit_0"`` ... ``"fastervit_6"``, ``"fastervit_tiny"``), a
            segmentation-models-pytorch one as ``"smp:unet"`` (``smp:<arch>`` with
            ``encoder=``, see :mod:`viscope.models.segmentation`), ``"fgrnet"`` (a UNet
            autoencoder with a classifier, :mod:`viscope.models.quality`), or the path of
            a checkpoint written by :func:`save_checkpoint`.
        num_classes: classifier outputs (``None``: the model's default).
        pretrained: load published weights (needs the internet the first time; offline,
            pass ``checkpoint=`` too).
        in_chans: input channels.
        normalize: ``"auto"`` (the model's own mean/std from timm's ``pretrained_cfg`` or
            torchvision's default weights, else ImageNet; for a checkpoint path, the one
            saved with it), ``"imagenet"``,
            ``None`` (no normalisation) or ``(mean, std)``.
        checkpoint: a state-dict file (timm, torch, Lightning, safetensors or viscope) to
            load into the model, strictly; with ``pretrained=True`` it supplies the
            published weights, so nothing is downloaded, and a ``num_classes`` other than
            the file's gets a freshly initialised classifier (fine-tuning, as timm does).
        **kwargs: passed to the model's constructor (``img_size=32``, ``patch_size=4``,
            ``drop_path_rate=0.1``, ``resolution=64`` ...); for a checkpoint path they
            override the saved ones.

    Returns:
        A :class:`Normalized` wrapper; ``unwrap(model)`` is the network, whose module
        names are the layer names, and ``model.viscope_spec`` records how it was made.

    Raises:
        ViscopeError: an unknown name (with close matches), a missing or unreadable
            checkpoint, weights that do not match, arguments the model refuses, or
            published weights that could not be downloaded (offline: the message names
            ``checkpoint=``).

    Example:
        >>> import torch
        >>> model = create("test_vit", img_size=32, num_classes=3)
        >>> model(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 3])
    """
    if not isinstance(name, str | os.PathLike):
        raise ViscopeError(
            f"Expected a model name or a checkpoint path; got {name!r} of type "
            f"{type(name).__name__}."
        )
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ViscopeError(f"Expected in_chans to be a positive int; got {in_chans!r}.")
    if is_checkpoint_path(name):
        return _create_from_file(
            name, num_classes, pretrained, in_chans, normalize, checkpoint, kwargs
        )
    # A local checkpoint replaces every weight: downloading published ones first is waste,
    # and fails offline.
    download = pretrained and checkpoint is None
    try:
        net = build_network(
            name, num_classes=num_classes, pretrained=download, in_chans=in_chans, **kwargs
        )
    except _download_errors() as err:
        if not download:
            raise
        raise ViscopeError(_offline_message(name, err)) from None
    if checkpoint is not None:
        data = read_checkpoint(checkpoint)
        # published weights for fine-tuning: another num_classes gets a fresh classifier
        load_weights(net, extract_state_dict(data), repr(str(checkpoint)),
                     new_classes=num_classes if pretrained else None)
    mean_std = resolve_normalize(normalize, net, in_chans)
    record = dict(kwargs)
    if download and name.startswith(TORCHVISION_PREFIX):
        record.update(_weights_kwargs(name[len(TORCHVISION_PREFIX) :], net, kwargs))
    if num_classes is not None:
        record["num_classes"] = num_classes
    if in_chans != 3:
        record["in_chans"] = in_chans
    spec = ModelSpec(name=name, kwargs=record, normalize=mean_std)
    mean, std = mean_std if mean_std is not None else (None, None)
    return Normalized(net, mean, std, spec=spec, channels=in_chans)


def build_network(
    name: str,
    *,
    num_classes: int | None = None,
    pretrained: bool = False,
    in_chans: int = 3,
    **kwargs: Any,
) -> nn.Module:
    """Build the bare network for ``name`` (no normalisation wrapper).

    Args:
        name: as for :func:`create` (not a path).
        num_classes: classifier outputs (``None``: the default).
        pretrained: load published weights.
        in_chans: input channels.
        **kwargs: passed to the constructor.

    Returns:
        The network.

    Raises:
        ViscopeError: an unknown name or arguments the constructor refuses.
    """
    if name.startswith(TORCHVISION_PREFIX):
        return _create_torchvision(
            name[len(TORCHVISION_PREFIX) :], num_classes, pretrained, in_chans, kwargs
        )
    if is_smp_name(name):
        return build_smp(
            name, num_classes=num_classes, pretrained=pretrained, in_chans=in_chans, **kwargs
        )
    if is_fgrnet_name(name):
        return build_fgrnet(
            name, num_classes=num_classes, pretrained=pretrained, in_chans=in_chans, **kwargs
        )
    if is_fastervit_name(name):
        return create_fastervit(
            name, num_classes=num_classes, pretrained=pretrained, in_chans=in_chans, **kwargs
        )
    if not (name.startswith(("hf-hub:", "hf_hub:")) or timm.is_model(name)):
        choices = (timm.list_models() + fastervit_names() + _torchvision_names(prefixed=True)
                   + ["fgrnet"])
        raise ViscopeError(
            f"Unknown model {name!r}.{suggest(name, choices)} Expected a timm name "
            "(timm.list_models()), 'torchvision:<name>', 'fastervit_0'..'fastervit_6', "
            "'fastervit_tiny', 'smp:<arch>', 'fgrnet', or a checkpoint path; `viscope list "
            "models` shows a few."
        )
    arch, _, tag = name.partition(".")
    if tag and not name.startswith(("hf-hub:", "hf_hub:")):
        tags = timm.list_pretrained(f"{arch}.*")
        if name not in tags:
            raise ViscopeError(
                f"Unknown pretrained tag {name!r} of timm model {arch!r}.{suggest(name, tags)} "
                f"Expected one of timm.list_pretrained('{arch}.*'), or {arch!r} alone."
            )
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        return timm.create_model(name, pretrained=pretrained, in_chans=in_chans, **kwargs)
    except TypeError as err:
        raise ViscopeError(
            f"Expected keyword arguments that timm model {name!r} accepts; got "
            f"{sorted(kwargs)} ({err})."
        ) from None


def _download_errors() -> tuple[type[BaseException], ...]:
    """What fetching published weights raises without a network: the Hugging Face Hub's
    "not in the cache and cannot connect" (timm), urllib's errors (torch.hub: torchvision,
    timm's URL weights, FasterViT), and connection errors of the HTTP clients."""
    import urllib.error

    errors: list[type[BaseException]] = [urllib.error.URLError, ConnectionError, TimeoutError]
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        errors += [LocalEntryNotFoundError, OfflineModeIsEnabled]
    except ImportError:  # an older huggingface_hub, or none
        pass
    for module, attr in (("httpx", "TransportError"), ("requests.exceptions", "ConnectionError")):
        try:
            errors.append(getattr(__import__(module, fromlist=[attr]), attr))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _offline_message(name: str, err: BaseException) -> str:
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
    return (
        f"The weights of {name!r} could not be fetched (offline?): {reason} Pass a local "
        f"checkpoint instead: --model {name} --model-arg checkpoint=PATH on the command "
        f"line, or create({name!r}, pretrained=True, checkpoint=PATH) in Python (a state "
        "dict of this model: timm, torch, Lightning, safetensors or viscope)."
    )


def _create_from_file(
    path: str | os.PathLike[str],
    num_classes: int | None,
    pretrained: bool,
    in_chans: int,
    normalize: NormalizeArg,
    checkpoint: object,
    kwargs: dict[str, Any],
) -> Normalized:
    if pretrained or checkpoint is not None:
        raise ViscopeError(
            f"Expected create({str(path)!r}) without pretrained=True or checkpoint=: the "
            "file holds the weights. Pass a model name to combine those."
        )
    data = read_checkpoint(path)
    if not isinstance(data.get("viscope_model"), str):
        raise ViscopeError(
            f"Expected a viscope checkpoint (written by save_checkpoint, with a "
            f"'viscope_model' entry) in {str(path)!r}; got a file with keys "
            f"{sorted(map(str, data))[:6]}. For a plain state dict pass the model name: "
            f"create('resnet18', checkpoint={str(path)!r})."
        )
    build = dict(data.get("kwargs") or {})
    build.update(kwargs)
    if num_classes is not None:
        build["num_classes"] = num_classes
    if in_chans != 3:
        build["in_chans"] = in_chans
    if isinstance(normalize, str) and normalize == "auto":
        normalize = data.get("normalize")
    model = create(data["viscope_model"], normalize=normalize, **build)
    load_weights(unwrap(model), extract_state_dict(data), repr(str(path)))
    return model


def _torchvision_names(prefixed: bool = False) -> list[str]:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    return [TORCHVISION_PREFIX + n for n in names] if prefixed else names


def _create_torchvision(
    arch: str, num_classes: int | None, pretrained: bool, in_chans: int, kwargs: dict[str, Any]
) -> nn.Module:
    import torchvision

    names = _torchvision_names()
    if arch not in names:
        raise ViscopeError(
            f"Unknown torchvision model {arch!r}.{suggest(arch, names)} Expected one of "
            "torchvision.models.list_models(module=torchvision.models), written "
            "'torchvision:<name>'."
        )
    if in_chans != 3:
        raise ViscopeError(
            f"Expected in_chans=3 for torchvision models; got in_chans={in_chans}. Use a "
            "timm model (e.g. 'resnet18') for other channel counts."
        )
    try:
        if pretrained:
            net = torchvision.models.get_model(arch, weights="DEFAULT", **kwargs)
            if num_classes is not None:
                _replace_head(net, num_classes)
        else:
            if num_classes is not None:
                kwargs["num_classes"] = num_classes
            net = torchvision.models.get_model(arch, weights=None, **kwargs)
    except TypeError as err:
        raise ViscopeError(
            f"Expected keyword arguments that torchvision model {arch!r} accepts; got "
            f"{sorted(kwargs)} ({err})."
        ) from None
    _set_weights_cfg(arch, net)
    return net


def _set_weights_cfg(arch: str, net: nn.Module) -> None:
    """Give ``net`` a timm-style ``pretrained_cfg`` with the mean/std of its default weights."""
    import torchvision

    try:
        transforms = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
        mean, std = tuple(transforms.mean), tuple(transforms.std)
    except (AttributeError, KeyError, TypeError, ValueError):
        return
    net.pretrained_cfg = {"mean": mean, "std": std}


def _weights_kwargs(arch: str, net: nn.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments that torchvision's weights set (``transform_input``, ...).

    The builder changes them only when it loads weights, so a checkpoint must record them
    to rebuild the same network without the weights. Found by comparing ``net`` with the
    same builder's network without weights (on the meta device: no memory, no init).
    """
    import inspect

    import torch
    import torchvision

    try:
        with torch.device("meta"):
            plain = torchvision.models.get_model_builder(arch)(weights=None, **kwargs)
        params = inspect.signature(type(net).__init__).parameters
    except (TypeError, ValueError, RuntimeError, NotImplementedError):
        return {}
    found = {}
    for param in params:
        if param in ("self", "num_classes") or param in kwargs:
            continue
        value = getattr(net, param, None)
        if isinstance(value, bool | int | float | str) and value != getattr(plain, param, None):
            found[param] = value
    return found


def _replace_head(net: nn.Module, num_classes: int) -> None:
    """Give a pretrained torchvision classifier new output layers (auxiliary heads too).

    Every linear layer with as many outputs as the last one is a classifier head built
    from ``num_classes`` (GoogLeNet's and Inception-v3's auxiliary heads besides the main
    one), so each is replaced, as the network built with ``num_classes`` would have them.
    """
    linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ViscopeError(
            f"Expected a linear classifier head in {type(net).__name__} to resize to "
            f"num_classes={num_classes}; found none. Leave num_classes=None."
        )
    classes = linears[-1][1].out_features
    if classes == num_classes:
        return
    for name, old in linears:
        if old.out_features != classes:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        setattr(parent, child, new)
