"""Package attributes imported on first use (PEP 562), so that importing a job's
``command.py`` (``viscope --help`` imports every command, for its options) does not
import torch.

A package calls :func:`attach` with ``{name: module}``; ``package.name`` then imports the
module on first access. As with an eager ``from .fit import fit`` in ``__init__``, a name
that is also a submodule's (``viscope.train.fit``) stays the function even after the
submodule has been imported.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class _LazyPackage(types.ModuleType):
    """A package whose exported names are imported on first access."""

    _viscope_exports: dict[str, str]

    def __getattr__(self, name: str) -> Any:  # only for names not set yet
        exports = self.__dict__.get("_viscope_exports", {})
        if name not in exports:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        self.__dict__[name] = value  # plain lookup from now on
        return value

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if isinstance(value, types.ModuleType) and not name.startswith("__"):
            exports = super().__getattribute__("__dict__").get("_viscope_exports", {})
            if name in exports and value.__name__ == exports[name]:
                # the import system set the submodule over the exported name: undo it
                value = getattr(value, name)
                self.__dict__[name] = value
        return value

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._viscope_exports))


def attach(package: str, exports: dict[str, str]) -> list[str]:
    """Make ``package`` (its ``__name__``) import ``exports[name]`` on first access of
    ``name``; returns the names, for ``__all__``.

    Example:
        >>> import viscope.train
        >>> callable(viscope.train.fit)  # the function, though viscope/train/fit.py exists
        True
    """
    module = sys.modules[package]
    module._viscope_exports = dict(exports)
    module.__class__ = _LazyPackage
    return sorted(exports)
