"""resolve_target: integer NumPy and torch values are class indices; fractional ones are
refused (known answers: the classes each spelling must give)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from viscope.errors import ViscopeError
from viscope.explain import resolve_target


@pytest.mark.parametrize(("target", "expected"), [
    (np.array([1, 3]), [1, 3]),
    (np.array([1, 3], dtype=np.uint8), [1, 3]),
    ([np.int64(1), np.int32(3)], [1, 3]),
    (np.int64(1), [1, 1]),
    (np.array(2), [2, 2]),
    (torch.tensor(2), [2, 2]),
    (torch.tensor([0, 4], dtype=torch.int32), [0, 4]),
    ([torch.tensor(1), torch.tensor(3)], [1, 3]),
    ((2, 0), [2, 0]),
])
def test_integer_numpy_and_torch_values_are_class_indices(target, expected) -> None:
    """np.array([1, 3]), a list of NumPy ints and np.int64(1) were refused."""
    resolved = resolve_target(target, 2)
    assert resolved.classes is not None and resolved.classes.dtype == torch.long
    assert resolved.classes.tolist() == expected


@pytest.mark.parametrize("target", [
    torch.tensor(2.7), torch.tensor([1.0, 2.5]), np.float64(1.0), np.array([1.5, 2.0]),
    2.7, [1, 2.5], [np.float32(1.0), 1], np.array([True, False]), [True, 1],
    torch.tensor([[1, 2]]), np.array([[1, 2]]),
])
def test_non_integral_targets_are_one_line_errors(target) -> None:
    """torch.tensor(2.7) was silently truncated to class 2."""
    with pytest.raises(ViscopeError, match="class ind") as err:
        resolve_target(target, 2)
    assert "\n" not in str(err.value)
