"""A model in another floating dtype than its float32 data trains and evaluates (defect 5:
"Input type (float) and bias type (double) should be the same")."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from viscope.train import evaluate, fit

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:lightning.*")


def _accuracy_by_hand(model: torch.nn.Module, dataset: Any, dtype: torch.dtype) -> float:
    model.eval()
    with torch.no_grad():
        hits = [int(model(dataset[i][0][None].to(dtype)).argmax()) == dataset[i][1]
                for i in range(len(dataset))]
    return sum(hits) / len(hits)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["double", "bfloat16"])
def test_model_in_another_dtype_trains_on_float32_data(
    tiny_vit: Callable[..., torch.nn.Module], separable: dict[str, Any], tmp_path: Path,
    dtype: torch.dtype,
) -> None:
    model = tiny_vit(2).to(dtype)
    assert separable["train"][0][0].dtype == torch.float32
    result = fit(model, separable, out=tmp_path, epochs=2, batch_size=32, lr=3e-3,
                 progress=False)  # precision "32-true": Lightning leaves the dtypes alone
    assert next(model.parameters()).dtype == dtype
    assert result.history["train_loss"].notna().all()
    assert result.test_acc == _accuracy_by_hand(model, separable["test"], dtype)
    assert evaluate(model, separable["val"]) == _accuracy_by_hand(model, separable["val"], dtype)
