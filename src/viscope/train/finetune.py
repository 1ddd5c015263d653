"""Fine-tuning and linear probing from a pre-trained checkpoint, with a new classifier head.

:func:`load_backbone` puts every backbone weight of a checkpoint into a model whose
classifier head is new (another class count, or absent from the checkpoint: an SSL
backbone): viscope checkpoints (``best.pt``, ``viscope pretrain``'s ``backbone.pt``), timm
/ torch state dicts, safetensors files, and Lightning ``.ckpt`` files whose
``state_dict`` keys carry the module's attribute path (``model.net.``, ``backbone.``,
``method.model.net.`` ...). Any backbone weight left unloaded is an error: a fine-tune
never trains from random weights without saying so.

Which prefix is stripped: every checkpoint key is matched against the model's backbone
keys by whole dotted suffixes (``method.model.net.blocks.0.attn.qkv.weight`` ends with
``blocks.0.attn.qkv.weight``); the prefix that covers the most backbone keys wins. Ties
go to a prefix naming no teacher copy (``teacher``, ``momentum``, ``ema``, ``target``:
BYOL's and DINO's momentum encoders sit beside the student in the same file), then to
the shorter prefix. Written here because timm's ``load_checkpoint`` strips only
``module.`` and needs every key, head included.

``fit(init=PATH)`` / ``viscope train --init PATH`` uses :class:`BackboneInit`;
``fit(freeze="backbone")`` / ``viscope train --linear-probe`` trains the head alone
(:func:`freeze_backbone`, :class:`FrozenBackboneEval`).

>>> import torch, tempfile, viscope.models as vm
>>> source = vm.create("test_vit", img_size=32, num_classes=0)
>>> path = tempfile.mkdtemp() + "/backbone.pt"
>>> _ = torch.save({"backbone." + k: v for k, v in source.net.state_dict().items()}, path)
>>> report = load_backbone(vm.create("test_vit", img_size=32, num_classes=5), path)
>>> report.prefix, report.head
('backbone.', ['head.bias', 'head.weight'])
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from viscope.errors import ViscopeError
from viscope.models.checkpoint import extract_state_dict, is_checkpoint_path, read_checkpoint
from viscope.models.wrapper import unwrap

#: Words of a prefix that names a momentum/teacher copy rather than the trained backbone.
TEACHER_WORDS = ("teacher", "momentum", "ema", "target")

CheckpointArg = str | os.PathLike[str] | Mapping[str, Any]


@dataclass
class BackboneReport:
    """What :func:`load_backbone` did.

    Attributes:
        source: the checkpoint (its path, or ``"<state dict>"``).
        prefix: the key prefix stripped from the checkpoint (``""``: none).
        loaded: the model's keys loaded from the checkpoint (backbone, and head when
            ``head_loaded``).
        head: the head's keys; they keep the model's fresh initialisation unless
            ``head_loaded``.
        head_loaded: the checkpoint's head had the model's shapes and was loaded too.
        missing: backbone keys the checkpoint lacks (always empty: that is an error).
        ignored: checkpoint keys outside ``prefix`` (a teacher copy, SSL heads, metrics)
            or its classifier of another shape.
    """

    source: str
    prefix: str
    loaded: list[str]
    head: list[str]
    head_loaded: bool = False
    missing: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def head_prefixes(model: nn.Module) -> list[str]:
    """The module names of the classifier head of ``model`` (a viscope wrapper or network).

    timm's ``get_classifier()`` (``head``, ``fc``, ``classifier``) where the network has
    it; otherwise (torchvision) every linear layer with as many outputs as the last one
    (auxiliary heads besides the main one).

    Raises:
        ViscopeError: no classifier could be found.
    """
    net = unwrap(model)
    get = getattr(net, "get_classifier", None)
    if callable(get):
        classifier = get()
        names = [n for n, m in net.named_modules() if m is classifier and n]
        if names:
            return names[:1]
    linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        classes = linears[-1][1].out_features
        return [n for n, m in linears if m.out_features == classes]
    raise ViscopeError(
        f"Expected a classifier head in {type(net).__name__} (timm's get_classifier() or a "
        "final nn.Linear) to replace; found none. Fine-tune a timm or torchvision classifier."
    )


def _under(key: str, prefixes: list[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _best_prefix(keys: list[str], backbone: set[str]) -> tuple[str, int]:
    """The prefix whose stripped keys cover the most backbone keys (see the module doc)."""
    counts: dict[str, int] = {}
    for key in keys:
        parts = key.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in backbone:
                prefix = ".".join(parts[:i]) + ("." if i else "")
                counts[prefix] = counts.get(prefix, 0) + 1
    if not counts:
        return "", 0

    def rank(prefix: str) -> tuple[int, bool, int]:
        teacher = any(w in prefix.lower() for w in TEACHER_WORDS)
        return counts[prefix], not teacher, -len(prefix)

    best = max(counts, key=rank)
    return best, counts[best]


def load_backbone(model: nn.Module, checkpoint: CheckpointArg) -> BackboneReport:
    """Load every backbone weight of ``checkpoint`` into ``model``; keep its new head.

    The classifier head (:func:`head_prefixes`) is loaded only when the checkpoint has
    all of it with the model's shapes (same classes); otherwise it keeps the model's
    fresh initialisation.

    Args:
        model: the model to fine-tune (from :func:`viscope.models.create`, with its new
            ``num_classes``), changed in place.
        checkpoint: a checkpoint file (viscope, timm/torch, Lightning ``.ckpt``,
            safetensors) or an already loaded dict / state dict.

    Returns:
        The :class:`BackboneReport`.

    Raises:
        ViscopeError: an unreadable file, a checkpoint without the model's backbone
            (another architecture), a backbone key it lacks or holds with another shape,
            or keys under the prefix the model does not have (a larger model).
    """
    source = "<state dict>" if isinstance(checkpoint, Mapping) else str(checkpoint)
    data = dict(checkpoint) if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
    state = extract_state_dict(data)
    net = unwrap(model)
    expected = net.state_dict()
    heads = head_prefixes(model)
    head_keys = sorted(k for k in expected if _under(k, heads))
    backbone = set(expected) - set(head_keys)
    prefix, found = _best_prefix(list(state), backbone)
    if found == 0:
        raise ViscopeError(
            f"Expected the weights of a {type(net).__name__} backbone in {source!r}; got none "
            f"of its keys (the file's look like {sorted(state)[:3]}; the model's like "
            f"{sorted(backbone)[:3]}). Pass a checkpoint of the same architecture (--model "
            "must match the one pre-trained)."
        )
    inner = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing = sorted(backbone - set(inner))
    shapes = [f"{k} {tuple(inner[k].shape)} vs {tuple(expected[k].shape)}"
              for k in sorted(backbone & set(inner))
              if tuple(inner[k].shape) != tuple(expected[k].shape)]
    extra = sorted(k for k in inner if k not in expected and not _under(k, heads))
    if missing or shapes or extra:
        parts = [f"{len(missing)} backbone keys missing ({', '.join(missing[:3])})"
                 ] if missing else []
        parts += [f"{len(shapes)} of another shape ({'; '.join(shapes[:2])})"] if shapes else []
        parts += [f"{len(extra)} the model lacks ({', '.join(extra[:3])})"] if extra else []
        raise ViscopeError(
            f"Expected every backbone weight of {type(net).__name__} in {source!r} (keys under "
            f"prefix {prefix!r}); got {'; '.join(parts)}. Pass a checkpoint of the same model "
            "and arguments (img_size, depth, ...) that it was pre-trained with."
        )
    head_loaded = bool(head_keys) and all(
        k in inner and tuple(inner[k].shape) == tuple(expected[k].shape) for k in head_keys
    )
    chosen = sorted(backbone) + (head_keys if head_loaded else [])
    result = net.load_state_dict({k: inner[k] for k in chosen}, strict=False)
    unloaded = sorted(set(result.missing_keys) & backbone)
    if unloaded:  # cannot happen after the checks above; kept as the promise it is
        raise ViscopeError(f"Expected every backbone key loaded; {unloaded[:3]} were not.")
    ignored = sorted(k for k in state if not k.startswith(prefix)) + sorted(
        prefix + k for k in inner if k not in chosen
    )
    return BackboneReport(source, prefix, chosen, head_keys, head_loaded, [], ignored)


class BackboneInit:
    """``fit``'s initialiser from a checkpoint: ``init(model, train_split)`` calls
    :func:`load_backbone` (``fit(init="runs/simclr/backbone.pt")`` makes one).

    Args:
        path: the checkpoint file.

    Attributes:
        report: the :class:`BackboneReport` of the last call (``None`` before).

    Raises:
        ViscopeError: the file does not exist.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ViscopeError(
                f"Expected init to be a checkpoint file or a registered initialiser name; got "
                f"{str(path)!r}, which is not a file. Check the path (e.g. "
                "runs/simclr/backbone.pt) or see `viscope list initialisers`."
            )
        self.report: BackboneReport | None = None

    def __call__(self, model: nn.Module, train_split: Any = None) -> BackboneReport:
        self.report = load_backbone(model, self.path)
        return self.report

    def describe(self) -> dict[str, Any]:
        """The checkpoint's path and SHA-256 (another file at the path is another run)."""
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        return {"checkpoint": str(self.path), "sha256": digest}


def checkpoint_init(init: Any) -> Any:
    """``init`` as ``fit`` resolves it: a string naming an existing file or looking like
    a checkpoint path (``.pt``, ``.ckpt``, a ``/``) becomes a :class:`BackboneInit`; a
    name or callable is returned unchanged.

    Raises:
        ViscopeError: a checkpoint-like path that does not exist.
    """
    if isinstance(init, os.PathLike) or (
        isinstance(init, str) and (os.path.isfile(init) or is_checkpoint_path(init))
    ):
        return BackboneInit(init)
    return init


#: The values of ``fit(freeze=...)``.
FREEZE_CHOICES = ("backbone",)


def freeze_backbone(model: nn.Module) -> list[str]:
    """Stop gradients to every parameter but the classifier head's (linear probing).

    Returns:
        The names of the frozen parameters.
    """
    net = unwrap(model)
    heads = head_prefixes(model)
    frozen = []
    for name, param in net.named_parameters():
        if not _under(name, heads):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


class FrozenBackboneEval(pl.Callback):
    """Keep the frozen backbone in eval mode while training (dropout off, batch-norm
    statistics fixed), so a linear probe leaves every backbone tensor as it was; the
    head (and the objectives' modules) train as usual. Lightning puts the whole module
    back in train mode around validation, hence the check before every batch."""

    def __init__(self, model: nn.Module) -> None:
        net = unwrap(model)
        heads = head_prefixes(model)
        self.modules = [m for n, m in net.named_modules() if n and not _under(n, heads)]
        self.root = net

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self.root.training = False
        for module in self.modules:
            module.training = False  # not .eval(): that would recurse into the head


def check_freeze(freeze: str | None) -> None:
    """Refuse a ``fit(freeze=...)`` value that is not ``None`` or ``"backbone"``.

    Raises:
        ViscopeError: an unknown value.
    """
    if freeze is not None and freeze not in FREEZE_CHOICES:
        raise ViscopeError(
            f"Expected freeze to be None or one of {list(FREEZE_CHOICES)}; got {freeze!r}. "
            "Use freeze='backbone' (viscope train --linear-probe) to train the head alone."
        )


def resolve_freeze(freeze: str | None, model: nn.Module) -> list[pl.Callback]:
    """Apply ``fit(freeze=...)`` to ``model`` and return the callbacks it needs.

    Raises:
        ViscopeError: an unknown value.
    """
    check_freeze(freeze)
    if freeze is None:
        return []
    freeze_backbone(model)
    return [FrozenBackboneEval(model)]


def head_parameters(model: nn.Module) -> list[torch.nn.Parameter]:
    """The classifier head's parameters (what a linear probe trains)."""
    net = unwrap(model)
    heads = head_prefixes(model)
    return [p for n, p in net.named_parameters() if _under(n, heads)]
