"""What the benchmark scripts share (run them as ``python benchmarks/<name>.py``, which puts
this folder on the import path)."""

from __future__ import annotations

import sys

import torch


def check_device(name: str) -> torch.device:
    """``--device`` as a torch device; exit with one line if this machine cannot use it."""
    try:
        device = torch.device(name)
    except RuntimeError:
        sys.exit(f"--device {name!r} is not a torch device; use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {name} but CUDA is not available here; run on a GPU machine "
                 "or use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        sys.exit(f"--device {name} but this machine has {torch.cuda.device_count()} CUDA "
                 "device(s); use --device cuda or cuda:N with a smaller N")
    return device
