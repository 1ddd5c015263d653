"""Run by test_distributed.py under torchrun: measure NV sharded over the processes.

Usage: torchrun --nproc_per_node N dist_worker.py OUT.npz MEASURE [RESUME_FILE [STOP_AT]]

With RESUME_FILE the measurement is resumable (saved after every batch); with STOP_AT
each process stops with an error after that many batches (an interruption).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

from viscope.invariance import measure


def setup():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten()).double()
    g = torch.Generator().manual_seed(1)
    # float64 end to end, so that the comparison sees the merge, not float32 rounding of
    # batch-level sums (which differ at ~1e-8 when shards hold different samples)
    x = torch.rand(21, 3, 12, 12, generator=g, dtype=torch.float64)
    ds = TensorDataset(x, torch.zeros(21))
    return net, ds


class Stop(Exception):
    pass


def run(name: str, resume: str | None = None, stop: int | None = None):
    net, ds = setup()

    def progress(done, total):
        if done == stop:
            raise Stop(f"stopped after {done} batches")

    # layers 0 and 1 share a unit shape: nv updates them as one stack (stacking.py)
    r = measure(net, ds, "rotation", measure=name, samples=21, params=5,
                layers=["0", "1", "2", "4"], batch_size=10, resume=resume, save_every=0,
                progress=progress if stop else False)
    return {f"{layer}::{q}": v for layer in r.layers for q, v in r.values[layer].items()}


if __name__ == "__main__":
    out, name = sys.argv[1], sys.argv[2]
    resume = sys.argv[3] if len(sys.argv) > 3 else None
    stop = int(sys.argv[4]) if len(sys.argv) > 4 else None
    dist.init_process_group("gloo")
    values = run(name, resume, stop)
    if dist.get_rank() == 0:
        np.savez(out, **values)
    dist.barrier()  # every rank has finished and rank 0 has written the result
    # gloo's teardown at interpreter exit sometimes aborts ("terminate called without an
    # active exception") after all work is done; leave without running it
    sys.stdout.flush()
    os._exit(0)
