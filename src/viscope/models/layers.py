"""Layer discovery: which modules a model has, what they output, and glob selection.

Layers are the network's own module names (``blocks.0``, ``layer4.1.bn2``), never with a
wrapper prefix. Patterns are globs per dot-separated segment: ``*`` stays inside one
segment, ``**`` spans any number of segments.

>>> match_layer("blocks.0", "blocks.*"), match_layer("blocks.0.attn", "blocks.*")
(True, False)
>>> match_layer("blocks.0.attn", "blocks.**"), match_layer("layer1.0", "layer*.*")
(True, True)
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from viscope.errors import ViscopeError, suggest
from viscope.models.fastervit_models import is_fastervit, windowed_modules
from viscope.models.wrapper import spec_of, unwrap

DRY_BATCH = 2


@dataclass(frozen=True)
class LayerInfo:
    """One addressable module and what it produced in a dry forward pass.

    Attributes:
        name: the module's name in the network (``"blocks.0"``).
        type: its class name (``"Block"``).
        output_shape: the shape of its output without dim 0 (of the first tensor when it
            returns a tuple/list); ``None`` when it was not called or returned no tensor.
        calls: how many times it ran in one forward pass (0: unused; >1: shared).
        per_sample: its output is one tensor whose dim 0 is the sample, so it can be
            captured as is; False for tuples, window-partitioned or token-flattened outputs.
    """

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    calls: int
    per_sample: bool


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
    """List a model's modules in the order they run, with their output shapes.

    One forward pass of zeros under ``torch.no_grad`` in eval mode; the hooks live only
    for that call (removed in ``finally``) and each module's train/eval mode is restored.

    Args:
        model: a model from ``create`` or any ``nn.Module`` taking (B, C, H, W) images.
        input_size: (C, H, W) of the dry input; ``None``: :func:`default_input_size`.
        batch: the dry batch size (>= 2, so that dim 0 can be told from a size-1 axis).

    Returns:
        One :class:`LayerInfo` per named module of the network (root excluded), in the
        order of their first call; modules never called come last, in definition order.

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
    first_call: dict[str, int] = {}
    calls: dict[str, int] = {}
    outputs: dict[str, Any] = {}

    def pre_hook(name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            first_call.setdefault(name, len(first_call))
            calls[name] = calls.get(name, 0) + 1

        return hook

    def post_hook(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            outputs.setdefault(name, _describe(output))

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
    order = {n: i for i, (n, _) in enumerate(named)}
    named.sort(
        key=lambda item: (item[0] not in first_call, first_call.get(item[0], order[item[0]]))
    )
    result = []
    for name, module in named:
        shape, is_tensor = outputs.get(name, (None, False))
        result.append(
            LayerInfo(
                name=name,
                type=type(module).__name__,
                output_shape=shape[1:] if shape is not None else None,
                calls=calls.get(name, 0),
                per_sample=(
                    is_tensor and len(shape) > 0 and shape[0] == batch and name not in windowed
                ),
            )
        )
    return result


def match_layer(name: str, pattern: str) -> bool:
    """Whether module ``name`` matches glob ``pattern``, segment by segment.

    Args:
        name: a dotted module name.
        pattern: a glob; ``*``, ``?`` and ``[...]`` stay within one segment, a ``**``
            segment matches zero or more segments.

    Returns:
        True when it matches.
    """
    return _match(name.split("."), pattern.split("."))


def select_layers(model: nn.Module, patterns: str | Sequence[str] | None = None) -> list[str]:
    """Resolve layer patterns to module names, in network order.

    Args:
        model: a model (wrapped or not).
        patterns: a glob or a list of globs on the network's module names
            (``"blocks.*"``, ``"layer*.*"``, ``"stages.*.blocks.*"``); ``None`` or
            ``"default"`` (also inside a list) stands for :func:`default_layers`.

    Returns:
        The matching module names, each once, in ``named_modules`` order.

    Raises:
        ViscopeError: a pattern matches no module; the message suggests the closest
            pattern (for a glob) or names, and shows what names look like.

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
    chosen: set[str] = set()
    for pattern in patterns:
        if pattern == "default":
            chosen.update(default_layers(model))
            continue
        hits = [n for n in names if match_layer(n, pattern)]
        if not hits:
            raise ViscopeError(_no_match_message(model, pattern, names))
        chosen.update(hits)
    return [n for n in names if n in chosen]


def default_layers(model: nn.Module, input_size: Sequence[int] | None = None) -> list[str]:
    """The block outputs worth measuring for a model's family; each is per sample.

    ViT-like (timm VisionTransformer, DeiT, EVA, BEiT): ``blocks.*``. EfficientNet:
    ``blocks.*.*`` (every block). ResNet (timm, torchvision): ``layer*.*``. ConvNeXt:
    ``stages.*.blocks.*``. FasterViT: ``patch_embed`` and ``levels.*`` (its blocks are
    window-partitioned or return tuples). Otherwise timm's ``feature_info`` modules, else
    the Conv2d/Linear leaves, keeping only those a dry forward pass shows per sample.

    Args:
        model: a model (wrapped or not).
        input_size: (C, H, W) for the dry pass of the fallback; ``None``: the model's own.

    Returns:
        Module names in network order.
    """
    net = unwrap(model)
    names = [n for n, _ in net.named_modules() if n]
    family = _family_patterns(net)
    if family is not None:
        return [n for n in names if any(match_layer(n, p) for p in family)]
    info = getattr(net, "feature_info", None)
    candidates: list[str] = []
    if info is not None:
        try:
            wanted = (
                {f["module"] for f in info} if isinstance(info, list) else set(info.module_name())
            )
        except (TypeError, KeyError, AttributeError):
            wanted = set()
        candidates = [n for n in names if n in wanted]
    if not candidates:
        candidates = [
            n for n, m in net.named_modules() if n and isinstance(m, nn.Conv2d | nn.Linear)
        ]
    try:
        ok = {i.name for i in layers(model, input_size) if i.per_sample}
    except ViscopeError:
        return candidates
    return [n for n in candidates if n in ok]


def _family_patterns(net: nn.Module) -> list[str] | None:
    if is_fastervit(net):
        return ["patch_embed", "levels.*"]
    from timm.models.beit import Beit
    from timm.models.convnext import ConvNeXt
    from timm.models.efficientnet import EfficientNet
    from timm.models.eva import Eva
    from timm.models.resnet import ResNet as TimmResNet
    from timm.models.vision_transformer import VisionTransformer
    from torchvision.models import ResNet as TorchvisionResNet

    if isinstance(net, VisionTransformer | Eva | Beit):
        return ["blocks.*"]
    if isinstance(net, EfficientNet):
        return ["blocks.*.*"]
    if isinstance(net, TimmResNet | TorchvisionResNet):
        return ["layer*.*"]
    if isinstance(net, ConvNeXt):
        return ["stages.*.blocks.*"]
    return None


def _no_match_message(model: nn.Module, pattern: str, names: list[str]) -> str:
    net = unwrap(model)
    family = _family_patterns(net)
    examples = (
        [n for n in names if any(match_layer(n, p) for p in family)]
        if family
        else [n for n, _ in net.named_children()]
    )[:3]
    spec = spec_of(model)
    model_arg = spec.name if spec is not None else "..."
    # A glob stands for many layers: suggest the glob the user meant rather than one name.
    repaired = repair_pattern(pattern, names) if _GLOB.search(pattern) else None
    hint = f" Did you mean {repaired!r}?" if repaired else suggest(pattern, names)
    return (
        f"Expected layer pattern to match a module of {type(net).__name__}; got "
        f"{pattern!r}.{hint} Layers look like: "
        f"{', '.join(examples)}, ... (see `viscope list layers --model {model_arg}`)."
    )


_GLOB = re.compile(r"[*?\[]")


def repair_pattern(pattern: str, names: Sequence[str]) -> str | None:
    """The pattern closest to ``pattern`` that matches some of ``names``, or ``None``.

    Segment by segment, a segment that matches none of the names' segments at that depth
    (under the segments fixed so far) is replaced by the closest of them; a glob segment
    may also become one of them with its numbers made ``*`` (``layers*`` -> ``layer*``).
    Segments that match stay as they are, globs included.

    Args:
        pattern: a layer pattern that matches no name.
        names: dotted module names.

    Returns:
        The repaired pattern, or ``None`` when no segment-wise repair matches a name.

    Example:
        >>> names = ["blocks", "blocks.0", "blocks.1", "norm"]
        >>> repair_pattern("block.*", names), repair_pattern("blocks.?.attn", names)
        ('blocks.*', None)
    """
    split = [n.split(".") for n in names]
    # (name, depth) pairs that the segments fixed so far lead to.
    states = {(i, 0) for i in range(len(split))}
    fixed = []
    for pat in pattern.split("."):
        if pat == "**":
            states = {(i, d) for i, q in states for d in range(q, len(split[i]) + 1)}
            fixed.append(pat)
            continue
        here = {split[i][d] for i, d in states if d < len(split[i])}
        if not any(fnmatchcase(seg, pat) for seg in here):
            choices = set(here)
            if _GLOB.search(pat):
                choices |= {re.sub(r"\d+", "*", seg) for seg in here}
            close = difflib.get_close_matches(pat, sorted(choices), n=1, cutoff=0.5)
            if not close:
                return None
            pat = close[0]
        fixed.append(pat)
        states = {
            (i, d + 1) for i, d in states if d < len(split[i]) and fnmatchcase(split[i][d], pat)
        }
    repaired = ".".join(fixed)
    if repaired == pattern or not any(match_layer(n, repaired) for n in names):
        return None
    return repaired


def _match(parts: list[str], pats: list[str]) -> bool:
    if not pats:
        return not parts
    if pats[0] == "**":
        return any(_match(parts[i:], pats[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], pats[0]) and _match(parts[1:], pats[1:])


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
