"""Model-randomisation sanity check (Adebayo et al., 2018): do maps change when the
weights are randomised, layer by layer from the output down ("cascading")?

It works on a deep copy; the caller's model is never touched (its one forward pass, for
the predicted class, puts BatchNorm statistics back).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from viscope.activations import parse_layer, preserved_buffers
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


def _reinit(modules: list[nn.Module], params: list[nn.Parameter],
            generator: torch.Generator) -> None:
    """New random weights for ``modules`` (their own initialisation sets the scale) and for
    ``params`` (their current spread sets it): Gaussian noise of that standard deviation."""
    for module in modules:
        for m in module.modules():
            if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()
    seen: set[int] = set()
    targets = [p for m in modules for p in m.parameters()] + list(params)
    with torch.no_grad():
        for p in targets:
            if id(p) in seen:
                continue
            seen.add(id(p))
            noise = torch.randn(p.shape, generator=generator).to(p)
            scale = p.std().clamp(min=1e-2) if p.numel() > 1 else 1.0
            p.copy_(noise * scale)


def model_randomization(
    model: nn.Module, images: torch.Tensor, method: str = "gradcam", target: TargetArg = None, *,
    layers: list[str] | None = None, seed: int = 0, **options: Any,
) -> dict[str, torch.Tensor]:
    """Rank correlation of maps before and after cascading weight randomisation.

    Args:
        model: the model (deep-copied and randomised step by step by
            :func:`randomized_cascade`; the original is left as it is, buffers included).
        images: (B, C, H, W).
        method: attribution method (``viscope.explain.list_methods()``).
        target: as for :func:`viscope.explain.attribute`; ``None`` fixes the class
            predicted by the original model, so every map explains the same class.
        layers: module names randomised cumulatively, top first (default: see
            :func:`randomized_cascade`; its last step leaves every parameter random, as
            in the paper).
        seed: seed of the new weights.
        **options: passed to :func:`~viscope.explain.attribute` (``layer=``, ...).

    Returns:
        ``{layer: (B,) Spearman correlation}`` in randomisation order; low values mean
        the method is sensitive to the weights (it passes the check).
    """
    with torch.inference_mode(False):
        images = prepare_images(model, images)
        # the predicted class of the original model (in train mode a forward pass would
        # update its BatchNorm statistics: they are put back)
        with preserved_buffers(model), channel_check(model):
            tgt = resolve_target(target, images.shape[0]).fix(model, images)
        classes = tgt.classes if tgt.classes is not None else target
        before = attribute(model, images, method, target=classes, **options)
        return {name: spearman(before, attribute(twin, images, method, target=classes, **options))
                for name, twin in randomized_cascade(model, layers, seed=seed,
                                                     input_size=tuple(images.shape[1:]))}


def randomized_cascade(
    model: nn.Module, layers: list[str] | None = None, *, seed: int = 0,
    input_size: tuple[int, ...] | None = None,
) -> Iterator[tuple[str, nn.Module]]:
    """A deep copy of ``model``, randomised cumulatively from the output down; yielded
    (the same copy) after each step with the name of the module that step randomised.

    The default steps are the modules that follow the model's default layers (the head),
    then those layers, then the modules before them (the stem), each group reversed.
    Every parameter they leave out (blocks between default layers, downsampling layers,
    a ViT's class/register tokens and position embedding) joins the step of the next
    parameter in registration order that a step covers, so the last step leaves the whole
    network random. Explicit ``layers`` are randomised as given, nothing added.

    Args:
        model: the model (not modified).
        layers: module names of the network, top first; ``None``: the default steps.
        seed: seed of the new weights (the caller's random state is left as it was).
        input_size: (C, H, W) of the images, for the dry pass that finds the default
            layers (``None``: the model's own size).

    Yields:
        ``(name, randomised copy)``.

    Raises:
        ViscopeError: a name that is not a module of the network.
    """
    with torch.inference_mode(False):  # a copy made in inference mode could not be explained
        twin = copy.deepcopy(model)
    net = unwrap(twin)
    names = layers if layers is not None else _cascade(net, twin, input_size)
    modules = dict(net.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ViscopeError(f"Expected module names of {type(net).__name__}; got {missing}.")
    extras = _left_out(net, names) if layers is None else [[] for _ in names]
    gen = torch.Generator().manual_seed(seed)
    device = next(net.parameters(), torch.empty(0)).device
    for name, extra in zip(names, extras, strict=True):
        # reset_parameters() draws from the global generator: seed it from ``gen`` for the
        # step and put the caller's state back, so that ``seed`` alone fixes the weights
        step_seed = int(torch.randint(2**62, (1,), generator=gen))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                torch.inference_mode(False):
            torch.manual_seed(step_seed)
            _reinit([modules[name]], extra, gen)
        yield name, twin


def _left_out(net: nn.Module, names: list[str]) -> list[list[nn.Parameter]]:
    """For each step, the parameters no step covers that join it: each joins the step of
    the next covered parameter in registration order (the last covered one's at the end)."""
    modules = dict(net.named_modules())
    owner: dict[int, int] = {}
    for i, name in enumerate(names):
        for p in modules[name].parameters():
            owner.setdefault(id(p), i)
    extras: list[list[nn.Parameter]] = [[] for _ in names]
    pending: list[nn.Parameter] = []
    last = len(names) - 1
    for p in net.parameters():
        if id(p) in owner:
            last = owner[id(p)]
            extras[last] += pending
            pending = []
        else:
            pending.append(p)
    extras[last] += pending
    return extras


def _cascade(net: nn.Module, model: nn.Module,
             input_size: tuple[int, ...] | None = None) -> list[str]:
    # a module that runs several times is one step (default layers list each call: x@k)
    blocks = list(dict.fromkeys(parse_layer(b)[0] for b in default_layers(model, input_size)))
    children = [n for n, m in net.named_children() if any(True for _ in m.parameters())]
    last_top = blocks[-1].split(".")[0] if blocks else None
    first_top = blocks[0].split(".")[0] if blocks else None
    after, before = [], []
    if last_top in children:
        after = children[children.index(last_top) + 1 :]
    if first_top in children:
        before = children[: children.index(first_top)]
    return list(reversed(after)) + list(reversed(blocks)) + list(reversed(before))
