"""Training with an augmentation family lowers the NV to that family (slow: trains twice)."""

from __future__ import annotations

import pytest
import torch

from viscope import data, models
from viscope.invariance import measure
from viscope.train import fit


@pytest.mark.slow
def test_rotation_training_lowers_rotation_nv(tmp_path):
    splits = {s: data.create("digits", split=s, size=32) for s in ("train", "val", "test")}
    layers = ["blocks.4", "global_pool", "classifier"]
    nv = {}
    for aug in ("rotation", None):
        torch.manual_seed(0)
        net = models.create("test_efficientnet", num_classes=10)
        res = fit(net, splits, augment=aug, epochs=5, batch_size=32, lr=2e-3, seed=0,
                  out=tmp_path / str(aug), progress=False)
        assert res.test_acc > 0.7  # both models learnt the task
        r = measure(models.create(res.checkpoint), splits["test"], "rotation", samples=64,
                    params=8, layers=layers, seed=0)
        nv[aug] = r.per_layer().set_index("layer")["nv"]
    # where invariance is built (the pooled features and the logits) the effect is large:
    # measured 0.78 vs 0.99 (global_pool) and 0.47 vs 0.99 (classifier)
    assert nv["rotation"]["classifier"] < 0.7 * nv[None]["classifier"], nv
    assert nv["rotation"]["global_pool"] < 0.9 * nv[None]["global_pool"], nv
    # ...while the early blocks are barely affected
    assert abs(nv["rotation"]["blocks.4"] - nv[None]["blocks.4"]) < 0.5
