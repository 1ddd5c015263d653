"""Model-randomisation sanity check (Adebayo et al., 2018): do maps change when the
weights are randomised, layer by layer from the output down ("cascading")?

It works on a deep copy; the caller's model is never touched.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from viscope.errors import ViscopeError
from viscope.explain.api import attribute
from viscope.explain.inputs import channel_check, prepare_images
from viscope.explain.targets import TargetArg, resolve_target
from viscope.models import default_layers, unwrap


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps (B, ...) (ties get average ranks)."""
    return torch.stack([_pearson(_rank(x), _rank(y)) for x, y in zip(a, b, strict=True)])


def _rank(x: torch.Tensor) -> torch.Tensor:
    flat = x.flatten().double()
    values, inverse, counts = torch.unique(flat, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    average = ends - (counts.double() - 1) / 2  # 1-based average rank of each tie group
    return average[inverse]


def _pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = x - x.mean(), y - y.mean()
    den = (x.norm() * y.norm()).clamp(min=1e-300)
    return (x * y).sum() / den


def _reinit(module: nn.Module, generator: torch.Generator) -> None:
    for m in module.modules():
        if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
            m.reset_parameters()
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn(p.shape, generator=generator).to(p)
            scale = p.std().clamp(min=1e-2) if p.numel() > 1 else 1.0
            p.copy_(noise * scale)


def model_randomization(
    model: nn.Module, images: torch.Tensor, method: str = "gradcam", target: TargetArg = None, *,
    layers: list[str] | None = None, seed: int = 0, **options: Any,
) -> dict[str, torch.Tensor]:
    """Rank correlation of maps before and after cascading weight randomisation.

    Args:
        model: the model (deep-copied; the original is left as it is).
        images: (B, C, H, W).
        method: attribution method (``viscope.explain.list_methods()``).
        target: as for :func:`viscope.explain.attribute`; ``None`` fixes the class
            predicted by the original model, so every map explains the same class.
        layers: module names randomised cumulatively, top first (default: the modules
            that follow the model's default layers, such as the head, then those layers,
            then the modules before them (the stem), each group reversed, so that the last
            step leaves the whole network random as in the paper).
        seed: seed of the new weights.
        **options: passed to :func:`~viscope.explain.attribute` (``layer=``, ...).

    Returns:
        ``{layer: (B,) Spearman correlation}`` in randomisation order; low values mean
        the method is sensitive to the weights (it passes the check).
    """
    images = prepare_images(model, images)
    with torch.inference_mode(False), channel_check(model):
        tgt = resolve_target(target, images.shape[0]).fix(model, images)
    classes = tgt.classes if tgt.classes is not None else target
    before = attribute(model, images, method, target=classes, **options)
    twin = copy.deepcopy(model)
    net = unwrap(twin)
    names = layers if layers is not None else _cascade(net, twin)
    modules = dict(net.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ViscopeError(f"Expected module names of {type(net).__name__}; got {missing}.")
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    # reset_parameters() draws from the global generator: seed it for the call (and put
    # the caller's state back), so that ``seed`` alone fixes the new weights
    with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
        torch.manual_seed(seed)
        for name in names:
            _reinit(modules[name], gen)
            after = attribute(twin, images, method, target=classes, **options)
            out[name] = spearman(before, after)
    return out


def _cascade(net: nn.Module, model: nn.Module) -> list[str]:
    blocks = default_layers(model)
    children = [n for n, m in net.named_children() if any(True for _ in m.parameters())]
    last_top = blocks[-1].split(".")[0] if blocks else None
    first_top = blocks[0].split(".")[0] if blocks else None
    after, before = [], []
    if last_top in children:
        after = children[children.index(last_top) + 1 :]
    if first_top in children:
        before = children[: children.index(first_top)]
    return list(reversed(after)) + list(reversed(blocks)) + list(reversed(before))
