"""Look up and instantiate transformation families by name.

>>> list_transforms()[:3]
['brightness', 'contrast', 'grayscale']
>>> create("rotation", low=-90, high=90).grid(3).tolist()
[-90.0, 0.0, 90.0]
"""

from __future__ import annotations

import inspect
from typing import Any

from viscope.errors import ViscopeError
from viscope.transforms.base import TRANSFORMS, Family

# Imported for their registrations, which set the listing order: photometric first.
# isort: split
from viscope.transforms import photometric  # noqa: F401

# isort: split
from viscope.transforms import geometric  # noqa: F401


def list_transforms() -> list[str]:
    """The registered family names, in registration order."""
    return TRANSFORMS.names()


def create(name: str, **options: Any) -> Family:
    """Instantiate the family registered as ``name``.

    Args:
        name: a name from :func:`list_transforms`, e.g. ``"rotation"``.
        **options: constructor options, e.g. ``low=-90, high=90`` to change the range,
            ``mode="nearest"`` for geometric families, ``seed=1`` for perspective.

    Returns:
        The family instance.

    Raises:
        ViscopeError: unknown name (with close matches), unknown option, or bad values.
    """
    cls = TRANSFORMS.get(name)
    signature = inspect.signature(cls)
    try:
        signature.bind(**options)
    except TypeError:
        accepted = ", ".join(signature.parameters)
        raise ViscopeError(
            f"Transformation {name!r} accepts the options ({accepted}); got"
            f" {', '.join(sorted(options))}. Remove or rename the others."
        ) from None
    return cls(**options)
