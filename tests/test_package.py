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


def test_the_command_line_imports_no_torch():
    """Every job's command module is imported for `viscope --help`; the job packages import
    their API on first use (viscope.lazy), so the help costs no torch import."""
    code = ("import sys, viscope.cli; "
            "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("package, name", [("viscope.train", "fit"),
                                           ("viscope.train", "evaluate")])
def test_exported_function_wins_over_its_submodule(package, name):
    """`viscope.train.fit` is the function, as with an eager import in __init__, even once
    the submodule viscope/train/fit.py has been imported."""
    import importlib

    importlib.import_module(f"{package}.{name}")
    value = getattr(importlib.import_module(package), name)
    assert callable(value) and value.__name__ == name and not hasattr(value, "__path__")
    assert name in dir(importlib.import_module(package))
