"""viscope: look inside vision models and improve how they are trained."""

from viscope.errors import ViscopeError

__version__ = "0.1.0"
__all__ = ["ViscopeError", "__version__"]
