"""FasterViT (Hatamizadeh et al., ICLR 2024) through the optional ``fastervit`` package.

Names: ``fastervit_0`` ... ``fastervit_6`` are the package's ``faster_vit_<k>_224``
models; any ``faster_vit_*`` name of the package also works; ``fastervit_tiny`` is a
small configuration for 32 × 32 images that runs on a CPU and still goes through the
hierarchical-attention path with carrier tokens.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from torch import nn

from viscope.errors import ViscopeError

FASTERVIT_NAMES = tuple(f"fastervit_{k}" for k in range(7)) + ("fastervit_tiny",)

# fastervit_tiny: four levels, the third with hierarchical attention (carrier tokens).
# Level k sees resolution / 2**(k+1) pixels (the stem downsamples by 2, not 4): at 32 px
# 16, 8, 4, 2. Level 2 has 2 × 2 windows on a 4 × 4 map, so sr_ratio = 2 and four carrier
# tokens (ct_size=1) take part in attention; level 3 is a single 2 × 2 window.
TINY_CONFIG: dict[str, Any] = {
    "dim": 16,
    "in_dim": 16,
    "depths": [1, 1, 2, 1],
    "num_heads": [1, 2, 2, 4],
    "window_size": [2, 2, 2, 2],
    "ct_size": 1,
    "mlp_ratio": 2,
    "drop_path_rate": 0.0,
    "hat": [False, False, True, False],
    "do_propagation": True,
}


def is_fastervit_name(name: str) -> bool:
    """Whether ``name`` is served by this module (``fastervit_*`` or ``faster_vit_*``)."""
    return name in FASTERVIT_NAMES or name.startswith("faster_vit_")


def import_fastervit() -> ModuleType:
    """Import ``fastervit.models.faster_vit`` (which also registers its models with timm).

    Returns:
        The ``fastervit.models.faster_vit`` module.

    Raises:
        ViscopeError: the optional ``fastervit`` package is not installed.
    """
    try:
        with warnings.catch_warnings():
            # fastervit imports deprecated timm paths; the warnings are not the user's.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module("fastervit.models.faster_vit")
    except ImportError as err:
        raise ViscopeError(
            "Expected the optional package 'fastervit' for FasterViT models; it is not "
            f"installed ({err}). Install it with: pip install 'viscope[fastervit]'"
        ) from None


def fastervit_names() -> list[str]:
    """The FasterViT names ``create`` accepts (without importing ``fastervit``)."""
    return list(FASTERVIT_NAMES)


def create_fastervit(
    name: str, *, num_classes: int | None, pretrained: bool, in_chans: int, **kwargs: Any
) -> nn.Module:
    """Build a FasterViT network.

    Args:
        name: ``fastervit_0`` ... ``fastervit_6``, ``fastervit_tiny`` or a package name
            such as ``faster_vit_4_21k_224``.
        num_classes: classifier outputs (``None``: the default, 1000).
        pretrained: load the package's ImageNet weights (downloads them once to ``/tmp``
            through the package; only when asked).
        in_chans: input channels.
        **kwargs: passed to the package's constructor (``resolution``, ``window_size``,
            ``depths``, ...), or to :class:`FasterViT` for ``fastervit_tiny``.

    Returns:
        The network, with a ``pretrained_cfg`` (mean/std, input size).

    Raises:
        ViscopeError: ``fastervit`` is missing, the name is unknown, ``fastervit_tiny``
            with ``pretrained=True`` or a resolution that is not a multiple of 32, or
            arguments the constructor refuses.
    """
    fv = import_fastervit()
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    kwargs["in_chans"] = in_chans
    if name == "fastervit_tiny":
        if pretrained:
            raise ViscopeError(
                "Expected pretrained=False for 'fastervit_tiny' (a small test configuration "
                "with no published weights); got pretrained=True. Use 'fastervit_0' for "
                "ImageNet weights."
            )
        return _create_tiny(fv, **kwargs)
    entry = f"faster_vit_{name.split('_', 1)[1]}_224" if name in FASTERVIT_NAMES else name
    constructor = getattr(fv, entry, None)
    if constructor is None or not entry.startswith("faster_vit_"):
        known = [n for n in dir(fv) if n.startswith("faster_vit_")]
        raise ViscopeError(
            f"Expected a FasterViT name ({', '.join(FASTERVIT_NAMES)} or one of "
            f"{', '.join(known)}); got {name!r}."
        )
    try:
        with _quiet():
            return constructor(pretrained=pretrained, **kwargs)
    except TypeError as err:
        raise ViscopeError(
            f"Expected keyword arguments that {entry} accepts; got {sorted(kwargs)} ({err})."
        ) from None


def _create_tiny(fv: ModuleType, **kwargs: Any) -> nn.Module:
    resolution = int(kwargs.pop("resolution", 32))
    if resolution < 32 or resolution % 32:
        raise ViscopeError(
            "Expected fastervit_tiny resolution to be a multiple of 32 (its 2 × 2 windows "
            f"must tile every level); got resolution={resolution}."
        )
    config = {**TINY_CONFIG, **kwargs}
    try:
        # FasterViT assumes a stem that downsamples by 4; at 32 px that leaves a 2 × 2 map
        # for the attention levels, too small for carrier tokens. The tiny model's stem
        # downsamples by 2 instead, so it is built for twice the resolution it is fed.
        with _quiet():
            net = fv.FasterViT(resolution=2 * resolution, **config)
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError) as err:
        raise ViscopeError(
            f"Expected a FasterViT configuration that builds; got {config} ({err})."
        ) from None
    net.patch_embed.conv_down[0].stride = (1, 1)
    net.pretrained_cfg = {
        "input_size": (config.get("in_chans", 3), resolution, resolution),
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "num_classes": config.get("num_classes", 1000),
        "fixed_input_size": True,
    }
    net.default_cfg = net.pretrained_cfg
    return net


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the package's own torch.meshgrid indexing warning while it builds."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.meshgrid", category=UserWarning)
        yield


def is_fastervit(net: nn.Module) -> bool:
    """Whether ``net`` is a FasterViT network of the ``fastervit`` package."""
    return type(net).__name__ == "FasterViT" and type(net).__module__.startswith("fastervit")


def windowed_modules(net: nn.Module) -> set[str]:
    """Names of FasterViT modules whose outputs are window-partitioned, not per sample.

    A hierarchical-attention block (``HAT``) works on windows: its first output and its
    window-token sub-modules have dim 0 = batch × windows (and ``mlp.fc1`` even batch ×
    windows × tokens). Its carrier-token sub-modules (``hat_*``) stay per sample. Listed
    by structure because with a single window dim 0 equals the batch, so a shape check
    alone cannot tell.

    Args:
        net: any network; only FasterViT ``HAT`` blocks contribute.

    Returns:
        The module names (each HAT block itself included).
    """
    out: set[str] = set()
    for name, module in net.named_modules():
        if type(module).__name__ != "HAT" or not type(module).__module__.startswith("fastervit"):
            continue
        out.add(name)
        for sub, _ in module.named_modules(prefix=name):
            rel = sub[len(name) + 1 :]
            if rel and not rel.startswith("hat_"):
                out.add(sub)
    return out
