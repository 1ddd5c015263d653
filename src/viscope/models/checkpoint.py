"""Model checkpoints: a file that names the model, its arguments and its weights.

A viscope checkpoint is a ``torch.save`` dict
``{"viscope_model": name, "kwargs": {...}, "state_dict": {...}, "normalize": (mean, std)
| None, "meta": {...}}``, and ``"objectives": {name: state_dict}`` when training added
modules beside the network (heads, decoders; see ``viscope.train.objectives``); it holds
plain data only, so it loads with ``torch.load(weights_only=True)``. Plain timm/torch
state-dict files are read too.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from viscope.errors import ViscopeError
from viscope.io import temp_file_beside
from viscope.models.wrapper import spec_of, unwrap

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar", ".safetensors")
_PLAIN = (str, int, float, bool, type(None))
_PREFIXES = ("module.", "model.", "net.", "_orig_mod.")


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    objectives: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    **meta: Any,
) -> Path:
    """Write ``model`` (made by :func:`viscope.models.create`) to ``path``, atomically.

    Args:
        model: a model returned by ``create`` (possibly trained since).
        path: the file to write; its folder is created.
        objectives: state dicts of modules trained beside the network, by objective name
            (kept under ``"objectives"``; ``create(path)`` reads the network only).
        **meta: plain data to keep alongside (epoch, metrics, ...).

    Returns:
        The path written.

    Raises:
        ViscopeError: the model was not made by ``create``, or ``meta`` / the model's
            arguments are not plain data (str, numbers, bools, None, lists, tuples, dicts).

    Example:
        >>> import tempfile, torch, viscope.models as vm
        >>> model = vm.create("test_vit", img_size=32, num_classes=3)
        >>> file = save_checkpoint(model, tempfile.mkdtemp() + "/vit.pt", epoch=1)
        >>> again = vm.create(file)
        >>> x = torch.rand(1, 3, 32, 32)
        >>> bool(torch.equal(model.eval()(x), again.eval()(x)))
        True
    """
    spec = spec_of(model)
    if spec is None:
        raise ViscopeError(
            f"Expected a model made by viscope.models.create (it records how to rebuild it); "
            f"got a {type(model).__name__} without that record. Create the model with "
            "viscope.models.create(name, ...) or save its state_dict with torch.save."
        )
    _check_plain(spec.kwargs, "the model's keyword arguments")
    _check_plain(meta, "meta")
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    payload = {
        "viscope_model": spec.name,
        "kwargs": dict(spec.kwargs),
        "normalize": spec.normalize,
        "state_dict": state,
        "meta": meta,
    }
    if objectives:
        payload["objectives"] = {
            str(name): {k: v.detach().cpu() for k, v in state.items()}
            for name, state in objectives.items()
        }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)  # not mkstemp: its mode 0600 would stick to the file
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def is_checkpoint_path(name: str | os.PathLike[str]) -> bool:
    """Whether ``create`` should read ``name`` as a file rather than a model name."""
    if isinstance(name, os.PathLike):
        return True
    if name.startswith(("hf-hub:", "hf_hub:", "torchvision:")):
        return False
    return "/" in name or os.sep in name or name.lower().endswith(CHECKPOINT_SUFFIXES)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint file (``torch.load(weights_only=True)`` or safetensors).

    Args:
        path: the file.

    Returns:
        The loaded dict (a viscope checkpoint or a state dict, possibly nested).

    Raises:
        ViscopeError: the file is missing, unreadable, or not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ViscopeError(
            f"Expected a checkpoint file; got {str(path)!r}, which does not exist. "
            "Check the path (or pass a model name such as 'resnet18')."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ViscopeError(
            f"Expected a torch checkpoint that loads with weights_only=True; could not read "
            f"{str(path)!r} ({first}). Re-save it with viscope.models.save_checkpoint or "
            "torch.save(model.state_dict(), path)."
        ) from None
    if not isinstance(data, Mapping):
        raise ViscopeError(
            f"Expected a checkpoint holding a dict; {str(path)!r} holds a {type(data).__name__}."
        )
    return dict(data)


def extract_state_dict(data: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Return the state dict inside ``data`` (viscope, timm, Lightning or plain).

    Args:
        data: a loaded checkpoint.

    Returns:
        Parameter name -> tensor.
    """
    for key in ("state_dict", "model", "state_dict_ema", "model_state_dict"):
        inner = data.get(key)
        if isinstance(inner, Mapping) and inner and all(torch.is_tensor(v) for v in inner.values()):
            return dict(inner)
    return {k: v for k, v in data.items() if torch.is_tensor(v)}


def load_weights(net: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                 new_classes: int | None = None) -> None:
    """Load ``state`` into ``net`` strictly, with a readable error on mismatch.

    Wrapper prefixes (``module.``, ``model.``, ``net.``, ``_orig_mod.``) shared by every
    key are stripped first; when other keys sit beside them (a Lightning module's loss
    weights, ...), the keys under the one prefix that match the network exactly are used.
    A name the file leaves out because it shares its tensor with another (safetensors'
    ``save_model``) takes that tensor.

    Args:
        net: the network (not the wrapper).
        state: the state dict.
        source: where ``state`` came from, for the message.
        new_classes: fine-tuning to this many classes: the classifier's tensors of the
            file (those whose first dimension is another class count, the rest of the
            shape equal) are left out and keep ``net``'s fresh initialisation, as timm
            does when ``pretrained=True`` meets another ``num_classes``.

    Raises:
        ViscopeError: missing or unexpected keys, or shapes that differ.
    """
    expected = net.state_dict()
    state = _strip_prefixes(dict(state), expected)
    state = _fill_shared(state, expected)
    if set(state) != set(expected):
        # Keys under one prefix beside others: take the prefix that fits the network best
        # (still strictly: a mismatch under it is reported below).
        for prefix in _PREFIXES:
            inner = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            inner = _fill_shared(_strip_prefixes(inner, expected), expected)
            if len(set(inner) & set(expected)) > len(set(state) & set(expected)):
                state = inner
    if new_classes is not None:
        head = {k for k, v in expected.items() if k in state and v.ndim >= 1
                and v.shape[0] == new_classes and state[k].shape[0] != new_classes
                and tuple(state[k].shape[1:]) == tuple(v.shape[1:])}
        state = {**{k: v for k, v in state.items() if k not in head},
                 **{k: expected[k] for k in head}}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:4])}, ...)")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:4])}, ...)")
        if shapes:
            parts.append(f"{len(shapes)} of another shape ({'; '.join(shapes[:3])}, ...)")
        raise ViscopeError(
            f"Expected the weights in {source} to match {type(net).__name__}; got keys that "
            f"do not: {'; '.join(parts)}. Check the model name and its arguments "
            "(num_classes, img_size, ...) against those the weights were trained with."
        )
    net.load_state_dict(state, strict=True)


def _strip_prefixes(
    state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes that every key shares until the keys fit ``expected``."""
    while state and not set(state) <= set(expected):
        prefix = next((p for p in _PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _fill_shared(
    state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Give keys the file left out the tensor of a key that shares it in the network."""
    missing = [k for k in expected if k not in state]
    if not missing:
        return state
    groups: dict[tuple[Any, ...], list[str]] = {}
    for key, tensor in expected.items():
        if tensor.numel() and tensor.device.type != "meta":
            where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
            groups.setdefault((*where, tuple(tensor.shape), tensor.stride()), []).append(key)
    state = dict(state)
    for group in groups.values():
        present = next((k for k in group if k in state), None)
        if present is not None:
            for key in group:
                state.setdefault(key, state[present])
    return state


def _check_plain(value: Any, what: str) -> None:
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, list | tuple):
        for v in value:
            _check_plain(v, what)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                break
            _check_plain(v, what)
        else:
            return
    raise ViscopeError(
        f"Expected {what} to be plain data (str, numbers, bools, None, lists, tuples, "
        f"dicts with str keys) so the checkpoint loads with weights_only=True; got "
        f"{value!r} of type {type(value).__name__}."
    )
