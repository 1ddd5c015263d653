"""The initialiser hook of ``fit``: change a model's weights from the data before training.

An initialiser is a callable ``init(model, train_split)`` that changes the model in place
(data-driven initialisation: PCA or K-Means of image patches into the first convolution
or the patch embedding). ``fit(init=...)`` takes one, or the name of one registered in
:data:`INITIALISERS`, and calls it after the model is made and seeded, before its
initial weights are hashed (``init_sha256``) and training starts. It is not called when
the run is finished already or resumes (the checkpoint holds the weights). The run's
configuration records it (:func:`describe_init`), so another initialiser trains again.

>>> import functools
>>> def scale_bias(model, train_split, factor=1.0):
...     pass
>>> describe_init(functools.partial(scale_bias, factor=0.5))["kwargs"]
{'factor': '0.5'}
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from viscope.errors import ViscopeError
from viscope.registry import Registry

Initialiser = Callable[[nn.Module, Dataset], Any]


class _InitialiserRegistry(Registry[Initialiser]):
    """The registry, filled by :mod:`viscope.init` on first look-up (not at import, so
    that ``viscope --help`` imports neither it nor scikit-learn)."""

    _loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            importlib.import_module("viscope.init.methods")

    def get(self, name: str) -> Initialiser:
        self._load()
        return super().get(name)

    def names(self) -> list[str]:
        self._load()
        return super().names()

    def __contains__(self, name: object) -> bool:
        self._load()
        return super().__contains__(name)

    def __iter__(self) -> Iterator[str]:
        self._load()
        return super().__iter__()

    def __len__(self) -> int:
        self._load()
        return super().__len__()


#: Initialisers by name (viscope.init registers default, pca, zca, kmeans, mimetic).
INITIALISERS: Registry[Initialiser] = _InitialiserRegistry("initialiser")
InitArg = str | Initialiser | None


def resolve_init(init: InitArg) -> Initialiser | None:
    """The initialiser callable for ``init`` (a registered name, a callable or ``None``).

    Raises:
        ViscopeError: an unknown name (with close matches) or something not callable.
    """
    if init is None:
        return None
    if isinstance(init, str):
        return INITIALISERS.get(init)
    if not callable(init):
        raise ViscopeError(
            f"Expected init to be a registered initialiser name, a callable init(model, "
            f"train_split) or None; got {init!r}."
        )
    return init


def describe_init(init: InitArg) -> Any:
    """How the run's configuration records ``init`` (plain data).

    A name is recorded as itself; a callable with a ``describe()`` method as what it
    returns (its settings); a ``functools.partial`` as its function and arguments; any
    other callable as its ``module.qualname``.
    """
    if init is None or isinstance(init, str):
        return init
    describe = getattr(init, "describe", None)
    if callable(describe):
        return describe()
    if isinstance(init, functools.partial):
        return {
            "function": describe_init(init.func),
            "args": [repr(a) for a in init.args],
            "kwargs": {k: repr(v) for k, v in init.keywords.items()},
        }
    name = getattr(init, "__qualname__", type(init).__name__)
    return f"{getattr(init, '__module__', '?')}.{name}"
