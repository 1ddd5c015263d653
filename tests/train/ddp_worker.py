"""Run by test_ddp.py: a study-like job in two CPU processes (gloo).

Usage: python ddp_worker.py OUT

``launch`` starts the second process (which re-runs this file), then every rank trains
one model with Lightning's DDP, measures its invariance sharded over the same processes,
and rank 0 writes the measurement (``OUT/sharded.npz``). Each rank writes what it saw
(``OUT/rank<k>.json``): its rank, whether it is main, what rank 0 broadcast, whether
the process group outlived ``fit``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

DATA = {"dataset": "shapes", "n": 64, "image_size": 32}
MEASURE = {"samples": 16, "params": 4, "batch_size": 8, "seed": 0, "progress": False}


def measure_values(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """NV under rotation of the test split, float64 end to end (as dist_worker.py)."""
    from viscope import data
    from viscope.invariance import measure

    # more images than the training's test split, so that each rank measures several
    test = data.create(DATA["dataset"], split="test", size=DATA["image_size"], n=200, seed=0)
    r = measure(model.double().eval(), test, "rotation", **MEASURE)
    return {f"{layer}::{q}": np.asarray(v) for layer in r.layers
            for q, v in r.values[layer].items()}


def main(out: Path) -> None:
    import torch.distributed as dist

    from viscope.train import fit
    from viscope.train.distributed import barrier, broadcast_object, is_main, launch, leads

    torch.set_num_threads(1)
    rank, world = launch(2, "cpu")
    chosen = broadcast_object(os.getpid() if is_main() else None)  # rank 0's choice
    res = fit("test_resnet", DATA["dataset"], out=out / "run", n=DATA["n"],
              image_size=DATA["image_size"], epochs=1, batch_size=8, devices=2,
              accelerator="cpu", progress=False)
    group_after_fit = dist.is_initialized()
    values = measure_values(res.model)
    (out / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world": world, "main": is_main(), "leads": leads(), "chosen": chosen,
        "pid": os.getpid(), "group_after_fit": group_after_fit,
    }))
    if is_main():
        np.savez(out / "sharded.npz", **values)
    barrier()
    sys.stdout.flush()
    os._exit(0)  # gloo's teardown at exit sometimes aborts after the work is done


if __name__ == "__main__":
    main(Path(sys.argv[1]))
