"""Training with an augmentation family lowers the NV to that family (slow: trains twice)."""

from __future__ import annotations

import pytest

from viscope import data, models
from viscope.invariance import measure
from viscope.train import fit


@pytest.mark.slow
def test_rotation_training_lowers_rotation_nv(tmp_path):
    splits = {s: data.create("shapes", split=s, n=1500, size=32) for s in ("train", "val",
                                                                             "test")}
    nv = {}
    for aug in ("rotation", None):
        net = models.create("test_vit", img_size=32, num_classes=5)
        res = fit(net, splits, augment=aug, epochs=12, batch_size=64, lr=2e-3, seed=0,
                  out=tmp_path / str(aug), progress=False)
        model = models.create(res.checkpoint)
        r = measure(model, splits["test"], "rotation", samples=64, params=8, seed=0)
        nv[aug] = r.per_layer()["nv"].to_numpy()
    # the effect is clear in the deepest blocks, where invariance is built
    assert nv["rotation"][-2:].mean() < 0.8 * nv[None][-2:].mean(), nv
