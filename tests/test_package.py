"""`import viscope` alone reaches every job's API (the README's snippets rely on it)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_subpackages_are_attributes_after_import_viscope():
    code = ("import sys, viscope; assert 'viscope.explain' not in sys.modules; "
            "print(viscope.explain.attribute.__name__, viscope.evaluate.deletion_auc.__name__,"
            " viscope.invariance.measure.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == ["attribute", "deletion_auc", "measure"]


def test_unknown_attribute_is_an_attribute_error():
    import viscope

    with pytest.raises(AttributeError, match="no attribute 'explian'"):
        viscope.explian  # noqa: B018
    assert {"explain", "invariance", "ViscopeError"} <= set(dir(viscope))
