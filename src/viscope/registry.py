"""Name -> object registries (transformations, measures, datasets, ...).

>>> r = Registry("colour")
>>> @r.register("red")
... def red():
...     return "#f00"
>>> r.get("red")()
'#f00'
>>> r.names()
['red']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from viscope.errors import ViscopeError, suggest

T = TypeVar("T")


class Registry(Generic[T]):
    """A registry of named objects of one kind, with helpful errors for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator."""

        def add(o: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = o
            return o

        return add(obj) if obj is not None else add

    def get(self, name: str) -> T:
        """Return the object registered as ``name``.

        Raises:
            ViscopeError: ``name`` is unknown; the message lists the known names.
        """
        try:
            return self._items[name]
        except KeyError:
            raise ViscopeError(
                f"Unknown {self.kind} {name!r}.{suggest(name, self._items)} "
                f"Known {self.kind}s: {', '.join(self.names())}."
            ) from None

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
