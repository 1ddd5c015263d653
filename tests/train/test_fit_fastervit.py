"""fit works on FasterViT (the published table's architecture), tiny CPU config."""

from __future__ import annotations

import torch

from viscope import data, models
from viscope.train import evaluate, fit


def test_fastervit_trains_with_augmentation_and_reloads(tmp_path):
    splits = {s: data.create("shapes", split=s, n=120, size=32) for s in ("train", "val",
                                                                            "test")}
    torch.manual_seed(0)
    net = models.create("fastervit_tiny", num_classes=5)
    res = fit(net, splits, augment="rotation", epochs=1, batch_size=32, out=tmp_path,
              progress=False)
    again = models.create(res.checkpoint).eval()
    x = torch.stack([splits["test"][i][0] for i in range(4)])
    with torch.no_grad():
        torch.testing.assert_close(again(x), net.eval()(x))
    assert abs(evaluate(again, splits["test"]) - res.test_acc) < 1e-9
