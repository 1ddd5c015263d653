"""viscope: look inside vision models and improve how they are trained.

The jobs are sub-packages (``viscope.invariance``, ``viscope.explain``, ...). They are
imported on first use, so ``import viscope`` stays light and ``viscope.explain.attribute``
works without importing ``viscope.explain`` first.
"""

from __future__ import annotations

import importlib
from typing import Any

from viscope.errors import ViscopeError

__version__ = "0.1.0"

#: the sub-packages reachable as attributes of ``viscope``
SUBPACKAGES = ("activations", "data", "evaluate", "experiments", "explain", "init",
               "invariance", "models", "report", "train", "transforms", "weakseg")

__all__ = ["ViscopeError", "__version__", *SUBPACKAGES]


def __getattr__(name: str) -> Any:
    if name in SUBPACKAGES:
        return importlib.import_module(f"viscope.{name}")
    raise AttributeError(f"module 'viscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(SUBPACKAGES))
