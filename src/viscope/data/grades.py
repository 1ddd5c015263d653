"""Quality grades as written in a CSV cell, and the class each one means.

EyeQ writes 0, 1, 2 for good, usable, reject; other sources write 1..3, names, or
``1.0``. One normalisation (:func:`parse_grade`) and one mapping (:func:`grade_lookup`)
serve every loader.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from viscope.errors import ViscopeError

#: Quality classes in label order (EyeQ's grades 0, 1, 2).
QUALITY_CLASSES = ("good", "usable", "reject")


def grade_key(value: object) -> str:
    """A grade cell as compared: trimmed, lower case, integral numbers as integers."""
    text = str(value).strip().lower()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if math.isfinite(number) and number == int(number) else text


def check_classes(classes: Sequence[str] | str) -> list[str]:
    """The class names as a list (a string is split at commas).

    Raises:
        ViscopeError: No names, an empty name, or two names equal up to case.
    """
    names = classes.split(",") if isinstance(classes, str) else list(classes)
    names = [str(n).strip() for n in names]
    lower = [n.lower() for n in names]
    if not names or "" in names or len(set(lower)) != len(lower):
        raise ViscopeError(
            f"Expected distinct, non-empty class names; got {classes!r}. "
            "Pass e.g. classes=('good', 'usable', 'reject')."
        )
    return names


def grade_lookup(
    classes: Sequence[str] | str = QUALITY_CLASSES, grades: Mapping[object, str] | None = None
) -> dict[str, int]:
    """Which grade cell (as :func:`parse_grade` compares it) gives which label.

    Without ``grades`` the integers ``0 .. K-1`` index ``classes``; with it, its keys map
    to the class names it gives. Class names always map to themselves (case-insensitive)
    unless ``grades`` uses the same value for another class.

    Raises:
        ViscopeError: ``classes`` is invalid, or ``grades`` names a class not in it or
            maps one value (e.g. ``1`` and ``"1.0"``) to two classes.
    """
    names = check_classes(classes)
    index = {n.lower(): k for k, n in enumerate(names)}
    if grades is None:
        lookup = {str(k): k for k in range(len(names))}
    else:
        if not isinstance(grades, Mapping):
            raise ViscopeError(
                f"Expected grades as a mapping from cell values to class names, e.g. "
                f"{{0: 'good', 1: 'usable', 2: 'reject'}}; got {grades!r}."
            )
        lookup = {}
        for value, name in grades.items():
            label = index.get(str(name).strip().lower())
            if label is None or lookup.get(grade_key(value), label) != label:
                why = "a class not in" if label is None else "a value already mapped to another of"
                raise ViscopeError(
                    f"Expected grades to map each value to one of the classes "
                    f"{', '.join(names)}; got {value!r}: {name!r}, {why} them. Fix the mapping "
                    "or pass classes=... with that name."
                )
            lookup[grade_key(value)] = label
    for name, label in index.items():
        lookup.setdefault(name, label)
    return lookup


def parse_grade(
    value: object,
    classes: Sequence[str] | str = QUALITY_CLASSES,
    grades: Mapping[object, str] | None = None,
) -> int | None:
    """Label of a grade cell (index into ``classes``), or None if it is not one.

    Case and spaces do not matter, and ``"1"``, ``"1.0"`` and ``1`` are the same grade.

    Example:
        >>> [parse_grade(v) for v in ("0", " 1.0 ", "Reject", 2, "3", "bad", "")]
        [0, 1, 2, 2, None, None, None]
        >>> parse_grade("1", grades={1: "good", 2: "usable", 3: "reject"})
        0
    """
    return grade_lookup(classes, grades).get(grade_key(value))
