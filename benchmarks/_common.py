"""What the benchmark scripts share (run them as ``python benchmarks/<name>.py``, which puts
this folder on the import path)."""

from __future__ import annotations

import argparse
import sys
import warnings

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


def add_host_args(parser: argparse.ArgumentParser, repeats: int = 3) -> None:
    """The options of where and how often a benchmark runs: --repeats, --device, --threads."""
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")


def host(args: argparse.Namespace) -> torch.device:
    """Apply :func:`add_host_args`' options: the checked device (threads set, library
    warnings silenced so that the timing lines stay readable)."""
    device = check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    return device
