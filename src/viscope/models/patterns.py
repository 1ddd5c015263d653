"""Layer addresses: glob patterns over module names, and ``name@k`` for one call.

Layers are the network's own module names (``blocks.0``, ``layer4.1.bn2``), never with a
wrapper prefix. Patterns are globs per dot-separated segment: ``*`` stays inside one
segment, ``**`` spans any number of segments. A module that runs several times in one
forward pass (torchvision's ``BasicBlock.relu``, a block whose weights are shared) is
addressed per call: ``layer1.0.relu@1`` is its second call.

>>> match_layer("blocks.0", "blocks.*"), match_layer("blocks.0.attn", "blocks.*")
(True, False)
>>> match_layer("blocks.0.attn", "blocks.**"), match_layer("layer1.0", "layer*.*")
(True, True)
>>> parse_layer("layer1.0.relu@1"), parse_layer("blocks.0")
(('layer1.0.relu', 1), ('blocks.0', None))
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from fnmatch import fnmatchcase

_CALL = re.compile(r"^(?P<name>.*?)@(?P<call>\d+)$")


def parse_layer(name: str) -> tuple[str, int | None]:
    """Split a layer address into the module (or pattern) and the call index.

    Args:
        name: ``"blocks.0@1"`` (the second call of ``blocks.0``) or a plain name/pattern.

    Returns:
        ``(module, k)``; ``(name, None)`` for a plain name.
    """
    m = _CALL.match(name)
    return (m["name"], int(m["call"])) if m else (name, None)


def address(module: str, call: int | None) -> str:
    """The layer address of one call of ``module`` (``None``: the module's only call)."""
    return module if call is None else f"{module}@{call}"


def match_layer(name: str, pattern: str) -> bool:
    """Whether module ``name`` matches glob ``pattern``, segment by segment.

    Args:
        name: a dotted module name.
        pattern: a glob; ``*``, ``?`` and ``[...]`` stay within one segment, a ``**``
            segment matches zero or more segments.

    Returns:
        True when it matches.
    """
    return _match(name.split("."), pattern.split("."))


GLOB = re.compile(r"[*?\[]")


def repair_pattern(pattern: str, names: Sequence[str]) -> str | None:
    """The pattern closest to ``pattern`` that matches some of ``names``, or ``None``.

    Segment by segment, a segment that matches none of the names' segments at that depth
    (under the segments fixed so far) is replaced by the closest of them; a glob segment
    may also become one of them with its numbers made ``*`` (``layers*`` -> ``layer*``).
    Segments that match stay as they are, globs included.

    Args:
        pattern: a layer pattern that matches no name.
        names: dotted module names.

    Returns:
        The repaired pattern, or ``None`` when no segment-wise repair matches a name.

    Example:
        >>> names = ["blocks", "blocks.0", "blocks.1", "norm"]
        >>> repair_pattern("block.*", names), repair_pattern("blocks.?.attn", names)
        ('blocks.*', None)
    """
    split = [n.split(".") for n in names]
    # (name, depth) pairs that the segments fixed so far lead to.
    states = {(i, 0) for i in range(len(split))}
    fixed = []
    for pat in pattern.split("."):
        if pat == "**":
            states = {(i, d) for i, q in states for d in range(q, len(split[i]) + 1)}
            fixed.append(pat)
            continue
        here = {split[i][d] for i, d in states if d < len(split[i])}
        if not any(fnmatchcase(seg, pat) for seg in here):
            choices = set(here)
            if GLOB.search(pat):
                choices |= {re.sub(r"\d+", "*", seg) for seg in here}
            close = difflib.get_close_matches(pat, sorted(choices), n=1, cutoff=0.5)
            if not close:
                return None
            pat = close[0]
        fixed.append(pat)
        states = {
            (i, d + 1) for i, d in states if d < len(split[i]) and fnmatchcase(split[i][d], pat)
        }
    repaired = ".".join(fixed)
    if repaired == pattern or not any(match_layer(n, repaired) for n in names):
        return None
    return repaired


def _match(parts: list[str], pats: list[str]) -> bool:
    if not pats:
        return not parts
    if pats[0] == "**":
        return any(_match(parts[i:], pats[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], pats[0]) and _match(parts[1:], pats[1:])
