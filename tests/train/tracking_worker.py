"""Run by test_tracking.py under torchrun: a Lightning DDP training (gloo, CPU) with the
invariance tracker. Usage: torchrun --nproc_per_node 2 tracking_worker.py OUT_FOLDER"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

from viscope import data, models

EPOCHS = 2
FAMILIES = ["rotation", "contrast"]
PROBE = {"samples": 11, "params": 3, "seed": 2}  # odd: the two shards differ in size


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create("test_vit", num_classes=5, img_size=32, patch_size=8, depth=2)


def splits() -> dict[str, Any]:
    return {s: data.create("shapes", split=s, n=80, seed=1) for s in ("train", "val")}


if __name__ == "__main__":
    import warnings
    from pathlib import Path

    import lightning.pytorch as pl

    from viscope.train import InvarianceTracker, fit

    warnings.filterwarnings("ignore")

    class FinalWeights(pl.Callback):
        def on_train_end(self, trainer: pl.Trainer, module: Any) -> None:
            import torch.distributed as dist

            if trainer.is_global_zero:  # the weights are the same on every rank
                # the world the engine saw: it shards and merges when this is 2
                world = dist.get_world_size() if dist.is_initialized() else 1
                torch.save({"model": module.model.state_dict(), "world": world},
                           Path(sys.argv[1]) / "final.pt")

    tracker = InvarianceTracker(FAMILIES, "val", every=1, figures=False, **PROBE)
    fit(model(), splits(), out=sys.argv[1], epochs=EPOCHS, batch_size=16, progress=False,
        accelerator="cpu", devices=2, strategy="ddp",
        callbacks=[tracker, FinalWeights()])
    sys.stdout.flush()
    os._exit(0)  # gloo's teardown at exit sometimes aborts after all work is done
