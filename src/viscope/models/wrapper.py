"""The model wrapper: images in [0, 1] go in, the network sees its own normalisation.

Normalisation belongs to the model, not to the data (DESIGN.md), so every model made by
:func:`viscope.models.create` is a :class:`Normalized` wrapper around the network. Layers
are addressed by the *network's* module names, so code that looks inside a model calls
:func:`unwrap` first.

>>> import torch
>>> net = torch.nn.Identity()
>>> model = Normalized(net, mean=(0.5,), std=(0.25,))
>>> model(torch.full((1, 3, 1, 1), 0.75)).flatten().tolist()
[1.0, 1.0, 1.0]
>>> unwrap(model) is net
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from viscope.errors import ViscopeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MeanStd = tuple[tuple[float, ...], tuple[float, ...]]
NormalizeArg = str | None | Sequence[Sequence[float]]


@dataclass(frozen=True)
class ModelSpec:
    """How a model was made, so that a checkpoint can rebuild it.

    Attributes:
        name: the name given to :func:`viscope.models.create` (``"resnet18"``,
            ``"torchvision:resnet18"``, ``"fastervit_tiny"``, ...).
        kwargs: the keyword arguments that rebuild the same architecture (plain data).
        normalize: the ``(mean, std)`` the wrapper applies, or ``None``.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    normalize: MeanStd | None = None


class Normalized(nn.Module):
    """Normalise images in [0, 1] with per-channel ``mean``/``std``, then run ``net``.

    Attributes:
        net: the wrapped network; its module names are the layer names.
        mean: buffer of shape (1, C, 1, 1), or ``None`` when no normalisation is applied.
        std: buffer of shape (1, C, 1, 1), or ``None``.
        viscope_spec: the :class:`ModelSpec` when made by ``create``, else ``None``.
    """

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        spec: ModelSpec | None = None,
        channels: int | None = None,
    ) -> None:
        """Wrap ``net``.

        Args:
            net: the network.
            mean: per-channel mean (one value broadcasts to every channel), or ``None``.
            std: per-channel standard deviation, or ``None``; given iff ``mean`` is.
            spec: how the model was made (set by ``create``).
            channels: the input channels the network expects, checked on each call
                (``None``: any count that the mean/std broadcast over).

        Raises:
            ViscopeError: only one of ``mean``/``std`` given, lengths differ, or a std <= 0.
        """
        super().__init__()
        self.net = net
        self.viscope_spec = spec
        self.channels = channels
        if (mean is None) != (std is None):
            raise ViscopeError(
                f"Expected both mean and std, or neither; got mean={mean!r}, std={std!r}."
            )
        if mean is not None and std is not None:
            mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
            std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
            if mean_t.numel() != std_t.numel() or bool((std_t <= 0).any()):
                raise ViscopeError(
                    "Expected mean and std of equal length with every std > 0; "
                    f"got mean={tuple(mean)}, std={tuple(std)}."
                )
            # Not persistent: a wrapper's state_dict is the network's, under "net.".
            self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)
        else:
            self.register_buffer("mean", None, persistent=False)
            self.register_buffer("std", None, persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(x - mean) / std`` (``x`` unchanged when there is no normalisation).

        Args:
            x: images (B, C, H, W) in [0, 1].

        Returns:
            The normalised images, the input of :attr:`net`.

        Raises:
            ViscopeError: the images' channels do not match the mean/std length.
        """
        if self.channels is not None:
            want: int | None = self.channels
            ok = x.ndim == 4 and x.shape[1] == self.channels
        else:
            want = self.mean.shape[1] if self.mean is not None else None
            ok = x.ndim == 4 and want in (None, 1, x.shape[1])
        if not ok:
            raise ViscopeError(
                f"Expected images (B, {want or 'C'}, H, W) in [0, 1]; got a tensor of shape "
                f"{tuple(x.shape)}. Pass in_chans= to create() for other channel counts."
            )
        if self.mean is None:
            return x
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` and run the network.

        Args:
            x: images (B, C, H, W) in [0, 1].

        Returns:
            The network's output (usually logits (B, num_classes)).
        """
        return self.net(self.normalize(x))

    # Read-only passthroughs that code looking at tokens needs; methods such as
    # forward_features are deliberately not forwarded, since they would skip normalisation.
    @property
    def num_prefix_tokens(self) -> int:
        """Class/register tokens before the patch tokens (timm ViTs)."""
        return unwrap(self).num_prefix_tokens

    @property
    def grid_size(self) -> tuple[int, int]:
        """The patch grid (rows, columns) of a ViT's patch embedding."""
        return tuple(unwrap(self).patch_embed.grid_size)

    @property
    def patch_size(self) -> tuple[int, int]:
        """The patch size (height, width) of a ViT's patch embedding."""
        return tuple(unwrap(self).patch_embed.patch_size)

    @property
    def num_classes(self) -> int:
        """The number of outputs of the classifier head."""
        return unwrap(self).num_classes

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's pretrained configuration of the network."""
        return unwrap(self).pretrained_cfg

    def extra_repr(self) -> str:
        if self.mean is None:
            return "normalize=None"
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def unwrap(model: nn.Module) -> nn.Module:
    """Return the network inside ``model``, whose module names are the layer names.

    Unwraps :class:`Normalized`, ``DataParallel`` / ``DistributedDataParallel``
    (``.module``) and ``torch.compile`` (``._orig_mod``), in any nesting; any other
    module is returned as it is.

    Args:
        model: a model, wrapped or not.

    Returns:
        The innermost network.
    """
    while (inner := _inner(model)) is not None:
        model = inner
    return model


def spec_of(model: nn.Module) -> ModelSpec | None:
    """Return the :class:`ModelSpec` of a model made by ``create`` (through any wrapper)."""
    while model is not None:
        spec = getattr(model, "viscope_spec", None)
        if isinstance(spec, ModelSpec):
            return spec
        model = _inner(model)
    return None


def _inner(model: nn.Module) -> nn.Module | None:
    """The module one wrapper (viscope, DataParallel/DDP, torch.compile) holds, or None."""
    if isinstance(model, Normalized):
        return model.net
    if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        return model.module
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else None


def resolve_normalize(normalize: NormalizeArg, net: nn.Module, in_chans: int) -> MeanStd | None:
    """Turn the ``normalize=`` argument of ``create`` into ``(mean, std)`` or ``None``.

    Args:
        normalize: ``"auto"`` (the network's ``pretrained_cfg`` mean/std, ImageNet when it
            has none), ``"imagenet"``, ``None`` (no normalisation) or ``(mean, std)``.
        net: the network (read for its ``pretrained_cfg``).
        in_chans: the number of input channels.

    Returns:
        Per-channel ``(mean, std)`` of length ``in_chans``, or ``None``.

    Raises:
        ViscopeError: an unknown string, or a mean/std whose length is not 1 or in_chans.
    """
    if normalize is None:
        return None
    if isinstance(normalize, str):
        if normalize == "imagenet":
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        elif normalize == "auto":
            cfg = getattr(net, "pretrained_cfg", None) or {}
            mean = tuple(cfg.get("mean") or IMAGENET_MEAN)
            std = tuple(cfg.get("std") or IMAGENET_STD)
        else:
            raise ViscopeError(
                f"Expected normalize='auto', 'imagenet', None or (mean, std); got {normalize!r}."
            )
        if len(mean) != in_chans:
            # A model with another channel count: one value per channel from the average.
            mean = (sum(mean) / len(mean),) * in_chans
            std = (sum(std) / len(std),) * in_chans
    else:
        try:
            mean_in, std_in = normalize
            mean = tuple(float(v) for v in mean_in)
            std = tuple(float(v) for v in std_in)
        except (TypeError, ValueError):
            raise ViscopeError(
                f"Expected normalize=(mean, std), two sequences of floats; got {normalize!r}."
            ) from None
        if len(mean) == 1 and len(std) == 1:
            mean, std = mean * in_chans, std * in_chans
        if len(mean) != in_chans or len(std) != in_chans:
            raise ViscopeError(
                f"Expected normalize=(mean, std) with 1 or {in_chans} values each (in_chans="
                f"{in_chans}); got {len(mean)} and {len(std)} values."
            )
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
