"""User-facing errors.

Every error a user can cause (unknown name, missing file, wrong shape, ...) is a
:class:`ViscopeError` whose message says what was expected, what came, and how to fix
it. The command line prints such errors as one line and exits with status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ViscopeError(ValueError):
    """An error caused by the user's input; its message says how to fix it."""


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return a ``" Did you mean ...?"`` hint for ``name`` among ``choices`` (or ``""``)."""
    close = difflib.get_close_matches(str(name), list(choices), n=n, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
