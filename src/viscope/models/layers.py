"""Layer discovery: which modules a model has, what each call outputs, and selection.

Layers are addressed by the network's own module names with glob patterns, and a module
that runs several times in one forward pass by call (``layer1.0.relu@1``; see
:mod:`viscope.models.patterns`). Which modules run how often is learnt from one dry
forward pass (:func:`layers`), at the image size that will be measured.

>>> from viscope.models import create
>>> net = create("torchvision:resnet18")
>>> select_layers(net, "layer1.0.relu", input_size=(3, 32, 32))  # runs twice per block
['layer1.0.relu@0', 'layer1.0.relu@1']
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from viscope.errors import ViscopeError
from viscope.models.defaults import defaults, family_patterns
from viscope.models.fastervit_models import windowed_modules
from viscope.models.patterns import GLOB, address, match_layer, parse_layer, repair_pattern
from viscope.models.wrapper import spec_of, unwrap

DRY_BATCH = 2


@dataclass(frozen=True)
class LayerInfo:
    """One addressable layer (a module, or one call of a module that runs several times)
    and what it produced in a dry forward pass.

    Attributes:
        name: its address: the module's name in the network (``"blocks.0"``), with
            ``@k`` for the k-th call of a module that runs several times
            (``"layer1.0.relu@1"``).
        type: the module's class name (``"Block"``).
        output_shape: the shape of this call's output without dim 0 (of the first tensor
            when it returns a tuple/list); ``None`` when it was not called or returned no
            tensor.
        calls: how many times the module ran in one forward pass (0: unused; >1: shared,
            one entry per call).
        per_sample: this call's output is one tensor whose dim 0 is the sample, so it can
            be captured as is; False for tuples, window-partitioned or token-flattened
            outputs.
    """

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    calls: int
    per_sample: bool

    @property
    def module(self) -> str:
        """The module's name, without the call index."""
        return parse_layer(self.name)[0]


def default_input_size(model: nn.Module) -> tuple[int, int, int]:
    """The (C, H, W) a model is built for: its ``img_size``/``resolution``, else timm's cfg.

    Args:
        model: a model (wrapped or not).

    Returns:
        (channels, height, width); (C, 224, 224) when nothing says otherwise.
    """
    net, spec = unwrap(model), spec_of(model)
    kwargs: dict[str, Any] = spec.kwargs if spec is not None else {}
    chans = int(kwargs.get("in_chans", 0)) or _first_conv_channels(net)
    img = getattr(getattr(net, "patch_embed", None), "img_size", None)
    size = img if img is not None else kwargs.get("resolution", kwargs.get("img_size"))
    if size is None:
        cfg = getattr(net, "pretrained_cfg", None) or {}
        size = tuple(cfg["input_size"][1:]) if cfg.get("input_size") else 224
    if isinstance(size, int):
        size = (size, size)
    return chans, int(size[0]), int(size[1])


def layers(
    model: nn.Module, input_size: Sequence[int] | None = None, *, batch: int = DRY_BATCH
) -> list[LayerInfo]:
    """List a model's addressable layers in the order they run, with their output shapes.

    One forward pass of zeros under ``torch.no_grad`` in eval mode; the hooks live only
    for that call (removed in ``finally``) and each module's train/eval mode is restored.

    Args:
        model: a model from ``create`` or any ``nn.Module`` taking (B, C, H, W) images.
        input_size: (C, H, W) of the dry input; ``None``: :func:`default_input_size`.
        batch: the dry batch size (>= 2, so that dim 0 can be told from a size-1 axis).

    Returns:
        One :class:`LayerInfo` per named module of the network (root excluded), and one
        per call (``name@0``, ``name@1``, ...) of a module that runs several times, in
        the order the calls start; modules never called come last, in definition order.

    Raises:
        ViscopeError: the model fails on an input of that size, or ``batch`` < 2.

    Example:
        >>> from viscope.models import create
        >>> info = {i.name: i for i in layers(create("test_vit", img_size=32))}
        >>> info["blocks.0"].output_shape  # 1 class token + 2 × 2 patches of 16 px, 64 dims
        (5, 64)
    """
    if not isinstance(batch, int) or batch < 2:
        raise ViscopeError(f"Expected a dry-run batch of at least 2; got batch={batch!r}.")
    size = tuple(input_size) if input_size is not None else default_input_size(model)
    net = unwrap(model)
    named = [(n, m) for n, m in net.named_modules() if n]
    started: list[tuple[str, int]] = []  # (module, call index) as each call starts
    calls: dict[str, int] = {}
    outputs: dict[str, list[tuple[tuple[int, ...] | None, bool]]] = {}

    def pre_hook(name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            started.append((name, calls.get(name, 0)))
            calls[name] = calls.get(name, 0) + 1

        return hook

    def post_hook(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            outputs.setdefault(name, []).append(_describe(output))

        return hook

    handles = []
    modes = {m: m.training for m in model.modules()}
    try:
        for name, module in named:
            handles.append(module.register_forward_pre_hook(pre_hook(name)))
            handles.append(module.register_forward_hook(post_hook(name)))
        model.eval()
        x = torch.zeros((batch, *size), **_device_dtype(model))
        with torch.no_grad():
            try:
                model(x)
            except ViscopeError:
                raise
            except (RuntimeError, ValueError, AssertionError, TypeError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                raise ViscopeError(
                    f"Expected {type(net).__name__} to accept images of size {size}; its "
                    f"forward pass failed ({type(err).__name__}: {first}). Pass the "
                    "input_size the model was built for (e.g. img_size= / resolution=)."
                ) from None
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    windowed = windowed_modules(net)
    modules = dict(named)
    unused = [(n, 0) for n in modules if n not in calls]
    result = []
    for name, k in [*started, *unused]:
        done = outputs.get(name, [])
        shape, is_tensor = done[k] if k < len(done) else (None, False)
        result.append(
            LayerInfo(
                name=address(name, k if calls.get(name, 0) > 1 else None),
                type=type(modules[name]).__name__,
                output_shape=shape[1:] if shape is not None else None,
                calls=calls.get(name, 0),
                per_sample=(
                    is_tensor and len(shape) > 0 and shape[0] == batch and name not in windowed
                ),
            )
        )
    return result


def select_layers(
    model: nn.Module,
    patterns: str | Sequence[str] | None = None,
    *,
    input_size: Sequence[int] | None = None,
) -> list[str]:
    """Resolve layer patterns to layer addresses, in network order.

    A pattern (a glob or a plain name) that reaches a module running several times in one
    forward pass gives every call of it (``layer1.0.relu@0``, ``layer1.0.relu@1``): the
    calls are different activations, and measuring them mixed would be wrong. A pattern
    ending in ``@k`` gives the k-th call of each module it matches. Which modules run how
    often comes from one dry forward pass (:func:`layers`) at ``input_size``; where that
    pass fails, patterns resolve to module names as written and the tap refuses a
    reused module when it runs.

    Args:
        model: a model (wrapped or not).
        patterns: a glob or a list of globs on the network's module names
            (``"blocks.*"``, ``"layer*.*"``, ``"stages.*.blocks.*"``), each optionally
            with ``@k``; ``None`` or ``"default"`` (also inside a list) stands for
            :func:`default_layers`.
        input_size: (C, H, W) of the images that will be measured, for the dry pass;
            ``None``: the model's own (:func:`default_input_size`).

    Returns:
        The addresses, each once, in ``named_modules`` order (the calls of one module
        in the order they run).

    Raises:
        ViscopeError: a pattern matches no module (the message suggests the closest
            pattern or names), or ``@k`` names a call that does not happen (the message
            lists the calls that do).

    Example:
        >>> from viscope.models import create
        >>> select_layers(create("test_vit", img_size=32), "blocks.*")[:2]
        ['blocks.0', 'blocks.1']
    """
    if patterns is None:
        patterns = ["default"]
    elif isinstance(patterns, str):
        patterns = [patterns]
    net = unwrap(model)
    names = [n for n, _ in net.named_modules() if n]
    infos = _dry_run(model, input_size)
    calls = {i.module: i.calls for i in infos} if infos is not None else {}
    chosen: set[str] = set()
    for pattern in patterns:
        if pattern == "default":
            chosen.update(defaults(net, names, infos))
            continue
        base, call = parse_layer(pattern)
        hits = [n for n in names if match_layer(n, base)]
        if not hits:
            raise ViscopeError(_no_match_message(model, base, names, pattern))
        if call is None:
            chosen.update(a for n in hits for a in _addresses(n, calls.get(n)))
            continue
        ran = [n for n in hits if calls.get(n) is None or calls[n] > call]
        if not ran:
            raise ViscopeError(_no_call_message(pattern, hits, calls, input_size, model))
        chosen.update(address(n, call) for n in ran)
    order = {n: i for i, n in enumerate(names)}

    def rank(layer: str) -> tuple[int, int]:
        module, k = parse_layer(layer)
        return order[module], -1 if k is None else k

    return sorted(chosen, key=rank)


def default_layers(model: nn.Module, input_size: Sequence[int] | None = None) -> list[str]:
    """The block outputs worth measuring for a model's family; each is per sample.

    ViT-like (timm VisionTransformer, DeiT, EVA, BEiT): ``blocks.*``. EfficientNet:
    ``blocks.*.*`` (every block). ResNet (timm, torchvision): ``layer*.*``. ConvNeXt:
    ``stages.*.blocks.*``. FasterViT: ``patch_embed`` and ``levels.*`` (its blocks are
    window-partitioned or return tuples). Otherwise timm's ``feature_info`` modules, else
    the Conv2d/Linear leaves. One dry forward pass at ``input_size`` then keeps only what
    the tap measures: a module that runs several times gives each of its calls
    (``name@k``), and calls whose output is not one tensor per sample, or modules that
    never run, are left out (where the pass fails, the candidates are kept as they are).

    Args:
        model: a model (wrapped or not).
        input_size: (C, H, W) of the images that will be measured, for the dry pass;
            ``None``: the model's own (:func:`default_input_size`).

    Returns:
        Layer addresses in network order.
    """
    net = unwrap(model)
    names = [n for n, _ in net.named_modules() if n]
    return defaults(net, names, _dry_run(model, input_size))


def _dry_run(model: nn.Module, input_size: Sequence[int] | None) -> list[LayerInfo] | None:
    """:func:`layers` at ``input_size``, or ``None`` where the model fails on it (the
    measurement's own first forward pass then says why, with its own advice)."""
    try:
        return layers(model, input_size)
    except ViscopeError:
        return None


def _addresses(module: str, calls: int | None) -> list[str]:
    """Every call of ``module``: its plain name unless it runs several times."""
    return [module] if not calls or calls == 1 else [address(module, k) for k in range(calls)]


def _no_call_message(pattern: str, hits: list[str], calls: dict[str, int],
                     input_size: Sequence[int] | None, model: nn.Module) -> str:
    module = hits[0]
    ran = calls.get(module, 0)
    size = tuple(input_size) if input_size is not None else default_input_size(model)
    if len(hits) > 1:
        what = f"none of the {len(hits)} modules it matches (e.g. {module!r}) runs that often"
    else:
        what = f"module {module!r} runs {_times(ran)}"
    where = _addresses(module, ran)
    fix = (f"Address one of: {', '.join(map(repr, where))}" if ran > 1
           else f"Address it as {where[0]!r}" if ran == 1
           else "Choose a module that runs (see `viscope list layers`)")
    return (f"Expected a call that happens in one forward pass of images {size}; got "
            f"{pattern!r}, but {what}. {fix}.")


def _times(n: int) -> str:
    return {0: "never", 1: "once", 2: "2 times"}.get(n, f"{n} times")


def _no_match_message(model: nn.Module, pattern: str, names: list[str],
                      given: str | None = None) -> str:
    """``pattern`` (the module part of ``given``, which may end in ``@k``) matches no name:
    say so, with the pattern or names meant (keeping ``@k``) and what names look like."""
    net = unwrap(model)
    call = given[len(pattern):] if given is not None else ""
    family = family_patterns(net)
    examples = (
        [n for n in names if any(match_layer(n, p) for p in family)]
        if family
        else [n for n, _ in net.named_children()]
    )[:3]
    spec = spec_of(model)
    model_arg = spec.name if spec is not None else "..."
    # A glob stands for many layers: suggest the glob the user meant rather than one name.
    repaired = repair_pattern(pattern, names) if GLOB.search(pattern) else None
    close = [repaired] if repaired else difflib.get_close_matches(pattern, names, 3, 0.5)
    hint = f" Did you mean {' or '.join(repr(c + call) for c in close)}?" if close else ""
    return (
        f"Expected layer pattern to match a module of {type(net).__name__}; got "
        f"{pattern + call!r}.{hint} Layers look like: "
        f"{', '.join(examples)}, ... (see `viscope list layers --model {model_arg}`)."
    )


def _describe(output: Any) -> tuple[tuple[int, ...] | None, bool]:
    """(shape of the output or its first tensor, whether the output is one tensor)."""
    if torch.is_tensor(output):
        return tuple(output.shape), True
    if isinstance(output, list | tuple):
        for item in output:
            if torch.is_tensor(item):
                return tuple(item.shape), False
    return None, False


def _device_dtype(model: nn.Module) -> dict[str, Any]:
    for tensor in model.parameters():
        dtype = tensor.dtype if tensor.is_floating_point() else torch.float32
        return {"device": tensor.device, "dtype": dtype}
    return {"device": torch.device("cpu"), "dtype": torch.float32}


def _first_conv_channels(net: nn.Module) -> int:
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return 3
