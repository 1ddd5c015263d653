"""The tap: capture chosen layers' outputs, always per sample.

Hooks live only inside a ``with Tap(...)`` block (registered on enter, removed in
``finally``), so after any call the model has exactly the hooks it had before.

Correctness rules that the reference library tmeasures does not follow:

* An output is consumed (by the callback) or cloned *at hook time*, so a later in-place
  op (torchvision ResNet's ``ReLU(inplace=True)`` after BatchNorm) cannot overwrite it.
* A module that runs more than once per forward pass must be addressed per call
  (``"name@0"``, ``"name@1"``); measuring "all calls mixed" is refused.
  ``viscope.models.select_layers`` (and so ``measure(layers=...)`` and ``--layers``)
  resolves a pattern or plain name that reaches such a module to every call of it.
* A module that never runs is reported in :attr:`Tap.missing`, not silently dropped.
* Tuple/list/dict outputs: the first tensor whose first dimension is the sample is used,
  and :attr:`LayerRecord.picked` says which element it was.
* An output whose first dimension is not the batch (e.g. FasterViT's window-partitioned
  ``(B * windows, tokens, C)`` tensors) is refused with an error naming a parent block.
* Only calls made while the network itself runs count: a ``torch.utils.checkpoint``
  recomputation during backward, or a direct call such as ``net.forward_features(x)``,
  is not captured (so it is never mistaken for a second call).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from viscope.activations.layout import layout_4d
from viscope.errors import ViscopeError
from viscope.models.patterns import parse_layer
from viscope.models.tokens import patch_grid, prefix_tokens

Callback = Callable[[str, torch.Tensor], None]
TOKEN_POLICIES = ("all", "patch", "prefix")


@dataclass
class LayerRecord:
    """What the tap learnt about one addressed layer."""

    name: str
    module_name: str
    call: int | None
    layout: str = "unknown"  # chw | hwc | tokens | flat | other
    unit_shape: tuple[int, ...] = ()
    prefix_tokens: int | None = 0  # None: token output whose prefix count is unknown
    grid: tuple[int, int] | None = None
    picked: str = ""
    calls: int = 0
    captured: bool = False


@dataclass
class _Spec:
    record: LayerRecord
    module: nn.Module


def _net(model: nn.Module) -> nn.Module:
    # Avoid importing viscope.models at module import time (models may import us).
    from viscope.models import unwrap

    return unwrap(model)


def _windowed(net: nn.Module) -> set[str]:
    from viscope.models import windowed_modules

    return windowed_modules(net)


class Tap:
    """Capture (or stream) the outputs of chosen layers, per sample.

    Args:
        model: the model (a viscope wrapper or a plain ``nn.Module``); layer names are
            the network's own module names (``"blocks.3"``, ``"layer4.1.bn2"``), with
            ``"@k"`` to pick the k-th call of a module that runs several times.
        layers: layer names (already resolved; see ``viscope.models.select_layers``).
        callback: if given, called as ``callback(name, activation)`` at hook time
            instead of storing the activation (nothing is kept between calls).
        tokens: for token outputs (B, N, D): ``"all"`` tokens, only ``"patch"`` tokens
            (prefix CLS/distillation/register tokens dropped), or only the ``"prefix"``
            tokens.
        prefix_tokens: the number of prefix tokens, for a model whose structure does not
            say it (see :func:`viscope.models.tokens.prefix_tokens`); ``None``: from the
            model. Where neither tells, ``tokens="patch"`` / ``"prefix"`` are refused.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True))
        >>> with Tap(net, ["0"]) as tap:
        ...     _ = net(torch.randn(2, 3, 8, 8))
        >>> tap.activations["0"].shape, (tap.activations["0"] < 0).any().item()
        (torch.Size([2, 4, 6, 6]), True)
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        *,
        callback: Callback | None = None,
        tokens: str = "all",
        prefix_tokens: int | None = None,
    ) -> None:
        if tokens not in TOKEN_POLICIES:
            raise ViscopeError(f"tokens must be one of {TOKEN_POLICIES}; got {tokens!r}.")
        if prefix_tokens is not None and (
                isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int)
                or prefix_tokens < 0):
            raise ViscopeError(f"Expected prefix_tokens to be an int >= 0 (class, "
                               f"distillation and register tokens); got {prefix_tokens!r}.")
        for m in model.modules():
            if isinstance(m, nn.DataParallel) and len(m.device_ids or []) > 1:
                raise ViscopeError(
                    f"Expected a model on one device; got DataParallel over devices "
                    f"{m.device_ids}, whose replicas would feed the tap parts of a batch "
                    "from several threads. Pass model.module (one GPU), or shard the "
                    "samples over processes with torchrun (one GPU each)."
                )
        self.model = model
        self.net = _net(model)
        self.callback = callback
        self.tokens = tokens
        self.prefix_override = prefix_tokens
        self.activations: dict[str, torch.Tensor] = {}
        self._batch: int | None = None
        self._image_hw: tuple[int, int] | None = None
        self._running = False
        self._calls: dict[str, int] = {}
        self._handles: list = []
        modules = dict(self.net.named_modules())
        windowed = _windowed(self.net)
        self._specs: dict[str, list[_Spec]] = {}
        self.records: dict[str, LayerRecord] = {}
        for layer in layers:
            if layer in self.records:
                continue  # named twice: one record, streamed once
            module_name, call = parse_layer(layer)
            if module_name not in modules:
                examples = ", ".join(n for n in list(modules)[1:6])
                raise ViscopeError(
                    f"Expected a module name of {type(self.net).__name__}; got {module_name!r}. "
                    f"Modules look like: {examples}, ... (see `viscope list layers`)."
                )
            if module_name in windowed:
                parent = module_name.split(".blocks.")[0] if ".blocks." in module_name \
                    else module_name.rsplit(".", 1)[0]
                raise ViscopeError(
                    f"Layer {layer!r} works on attention windows: its output's first dimension "
                    f"is batch x windows, not the sample, so it cannot be measured per sample. "
                    f"Measure a per-sample output instead, e.g. {parent!r} "
                    f"(see `viscope list layers`)."
                )
            rec = LayerRecord(layer, module_name, call)
            self.records[layer] = rec
            self._specs.setdefault(module_name, []).append(_Spec(rec, modules[module_name]))

    # -- context management -------------------------------------------------------------
    def __enter__(self) -> Tap:
        try:
            self._handles.append(
                self.net.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
            )
            for module_name, specs in self._specs.items():
                module = specs[0].module
                self._handles.append(module.register_forward_hook(self._make_hook(module_name)))
            # last, so that a hook on the network itself still sees it running
            self._handles.append(self.net.register_forward_hook(self._end, always_call=True))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook this tap registered."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # -- hooks -----------------------------------------------------------------------------
    def _pre_hook(self, module, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()), None)
        self._batch = x.shape[0] if isinstance(x, torch.Tensor) else None
        is_image = isinstance(x, torch.Tensor) and x.ndim == 4
        self._image_hw = (int(x.shape[-2]), int(x.shape[-1])) if is_image else None
        self._calls = {}
        self.activations.clear()  # what a layer gave in an earlier pass is not this pass's
        self._running = True
        return None

    def _end(self, module, args, output):
        self._running = False

    def _make_hook(self, module_name: str):
        def hook(module, args, output):
            if not self._running:
                return  # not the network's forward (checkpoint recomputation, direct call)
            specs = self._specs[module_name]
            k = self._calls.get(module_name, 0)
            self._calls[module_name] = k + 1
            for s in specs:
                rec = s.record
                rec.calls = max(rec.calls, k + 1)
                if rec.call is None and k >= 1:
                    raise ViscopeError(
                        f"Module {module_name!r} ran {k + 1} times in one forward pass, so its "
                        f"output is not one activation per sample. Address one call, e.g. "
                        f"'{module_name}@0' or '{module_name}@{k}'."
                    )
                if rec.call is not None and rec.call != k:
                    continue
                act = self._per_sample(rec, output)
                if self.callback is not None:
                    self.callback(rec.name, act)
                else:
                    self.activations[rec.name] = act.detach().clone()

        return hook

    def _per_sample(self, rec: LayerRecord, output) -> torch.Tensor:
        batch = self._batch
        tensor, picked = _pick(output, batch)
        if tensor is None:
            raise ViscopeError(
                f"Layer {rec.name!r} returned {_describe(output)}, with no tensor whose first "
                f"dimension is the batch ({batch}). Choose another layer."
            )
        if batch is not None and tensor.shape[0] != batch:
            hint = rec.module_name.rsplit(".", 1)[0] if "." in rec.module_name else "a block"
            raise ViscopeError(
                f"Layer {rec.name!r} outputs shape {tuple(tensor.shape)} whose first dimension "
                f"is not the sample (batch {batch}): it is window- or token-partitioned and "
                f"would be measured wrongly. Measure a block that outputs one tensor per sample "
                f"instead, e.g. {hint!r}."
            )
        rec.picked = picked
        if not rec.captured:
            rec.captured = True
            self._describe_layout(rec, tensor)
        if tensor.ndim == 3 and rec.layout == "tokens" and self.tokens != "all":
            p = rec.prefix_tokens
            tensor = tensor[:, p:] if self.tokens == "patch" else tensor[:, :p]
        return tensor

    def _describe_layout(self, rec: LayerRecord, t: torch.Tensor) -> None:
        shape = tuple(t.shape[1:])
        if t.ndim == 4:
            rec.layout = layout_4d(self.net, rec.module_name, t)
        elif t.ndim == 3:
            rec.layout = "tokens"
            n = shape[0]
            grid = patch_grid(self.net, self._image_hw)
            prefix = self.prefix_override
            if prefix is None:
                prefix = prefix_tokens(self.net)
            if grid is not None and grid[0] * grid[1] == n:
                prefix = 0  # the patch embedding: no prefix tokens prepended yet
            elif prefix is None and grid is not None and n > grid[0] * grid[1]:
                prefix = n - grid[0] * grid[1]  # whatever precedes the model's patch grid
            if prefix is not None and prefix > n:
                raise ViscopeError(
                    f"Layer {rec.name!r} outputs {n} tokens, fewer than the {prefix} prefix "
                    f"tokens given; pass prefix_tokens= (--prefix-tokens) of at most {n}."
                )
            rec.prefix_tokens = prefix
            rec.grid = _token_grid(n - prefix, grid) if prefix is not None else None
            if self.tokens != "all":
                if prefix is None:
                    raise ViscopeError(
                        f"tokens={self.tokens!r} needs the number of prefix (class, "
                        f"distillation, register) tokens of layer {rec.name!r} ({n} tokens), "
                        f"which {type(self.net).__name__}'s structure does not tell. Pass "
                        f"prefix_tokens=K (--prefix-tokens K), or use tokens='all'."
                    )
                if prefix == 0 and self.tokens == "prefix":
                    raise ViscopeError(
                        f"tokens='prefix' but {type(self.net).__name__} has no prefix (CLS/"
                        f"register) tokens at layer {rec.name!r}. Use tokens='all'."
                    )
                keep = n - prefix if self.tokens == "patch" else prefix
                shape = (keep, shape[1])
        elif t.ndim == 2:
            rec.layout = "flat"
        else:
            rec.layout = "other"
        rec.unit_shape = shape

    @property
    def missing(self) -> list[str]:
        """Addressed layers that did not run (or whose call index never happened)."""
        return [n for n, r in self.records.items() if not r.captured]


def _token_grid(n_patch: int, grid: tuple[int, int] | None) -> tuple[int, int] | None:
    """The (rows, cols) of ``n_patch`` patch tokens: the model's grid, else a square."""
    if grid is not None and grid[0] * grid[1] == n_patch:
        return grid
    side = int(round(n_patch**0.5))
    return (side, side) if side * side == n_patch and n_patch > 0 else None


def _pick(output, batch: int | None) -> tuple[torch.Tensor | None, str]:
    if isinstance(output, torch.Tensor):
        return output, ""
    items: list[tuple[str, object]]
    if isinstance(output, dict):
        items = [(f"[{k!r}]", v) for k, v in output.items()]
    elif isinstance(output, (tuple, list)):
        items = [(f"[{i}]", v) for i, v in enumerate(output)]
    else:
        return None, ""
    for key, v in items:
        if isinstance(v, torch.Tensor) and v.ndim >= 1 and (batch is None or v.shape[0] == batch):
            return v, key
    return None, ""


def _describe(output) -> str:
    if isinstance(output, (tuple, list)):
        return f"a {type(output).__name__} of {len(output)} items"
    if isinstance(output, dict):
        return f"a dict with keys {list(output)}"
    return type(output).__name__


def capture(
    model: nn.Module, images: torch.Tensor, layers: Sequence[str], *, tokens: str = "all",
    prefix_tokens: int | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, LayerRecord]]:
    """Run ``model(images)`` once under ``no_grad`` and return per-sample activations.

    The model's mode is left alone (train mode gives batch-statistics activations), but
    its buffers (BatchNorm running statistics) are restored: measuring changes nothing.

    Returns:
        ``(activations, records)``: the activation of each layer (B, ...) and what the
        tap learnt about it (layout, unit shape, prefix tokens, ...). Layers that did not
        run are absent from ``activations`` and listed with ``calls == 0`` in ``records``.
    """
    with preserved_buffers(model), torch.no_grad(), \
            Tap(model, layers, tokens=tokens, prefix_tokens=prefix_tokens) as tap:
        model(images)
    return tap.activations, tap.records


@contextlib.contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[None]:
    """Put the model's buffers back on exit when any module is in train mode, where each
    forward pass updates BatchNorm's running statistics (in eval mode nothing is copied)."""
    training = any(m.training for m in model.modules())
    buffers = [(b, b.clone()) for b in model.buffers()] if training else []
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
