"""Overhead of ``InvarianceTracker`` on training at the matrix demo's sizes, same run.

Each of the demo's models (``configs/matrix-demo.yaml``: tiny ViT 12 epochs, tiny
EfficientNet 5 epochs, ``color-digits`` at 32 px, batch 32) is trained with
``viscope.train.fit`` without and with the tracker (the demo's evaluation families, the
tracker's defaults of samples, params and every unless given), the two alternating
``--repeats`` times. Timed: the whole ``fit`` call (data, model, training, validation,
checkpoints, test evaluation), on both sides; the tracker's own time (the sum of its
measurements, :attr:`InvarianceTracker.seconds`, and of writing the figures at the end,
:attr:`InvarianceTracker.figure_seconds`) is printed beside it. The ratio of the
medians, tracked / plain - 1, is the overhead (target <= 15 %).

Run:
    python benchmarks/tracking_overhead.py                    # CPU, both demo models
    python benchmarks/tracking_overhead.py --threads 1 --repeats 5
    python benchmarks/tracking_overhead.py --every 2 --samples 48 --params 6
    python benchmarks/tracking_overhead.py --no-figures       # the table alone
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from importlib.resources import files
from typing import Any

import lightning.pytorch as pl
import torch
from _common import add_host_args, host

from viscope.experiments.config import load_config
from viscope.train import InvarianceTracker, fit


def train(model: Any, cfg: Any, splits: dict[str, Any], device: torch.device,
          tracker: InvarianceTracker | None) -> float:
    """Seconds of one ``fit`` of a demo model (a fresh run folder)."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        fit(model.name, splits, out=out, model_kwargs=model.args,
            epochs=model.epochs or cfg.epochs, lr=model.lr or cfg.lr,
            batch_size=cfg.batch_size, weight_decay=cfg.weight_decay, seed=0,
            accelerator="gpu" if device.type == "cuda" else "cpu", progress=False,
            callbacks=[tracker] if tracker is not None else [])
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma-separated demo labels "
                        "(default: all the demo's models)")
    parser.add_argument("--families", default=None, help="default: the demo's eval families")
    parser.add_argument("--every", type=int, default=None)
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--params", type=int, default=None)
    parser.add_argument("--no-figures", action="store_true",
                        help="the tracker writes the table only (figures=False)")
    add_host_args(parser)
    args = parser.parse_args()
    device = host(args)
    cfg = load_config(str(files("viscope") / "configs" / "matrix-demo.yaml"))
    from viscope.train.data import resolve_splits

    splits = resolve_splits(cfg.dataset, image_size=cfg.image_size, n=cfg.n, seed=0)
    families = args.families.split(",") if args.families else cfg.eval_families
    options = {k: v for k in ("every", "samples", "params")
               if (v := getattr(args, k)) is not None}
    probe = InvarianceTracker(families, "val", **options)
    print(
        f"device={args.device} torch={torch.__version__} lightning={pl.__version__} "
        f"threads={torch.get_num_threads()} load={os.getloadavg()[0]:.1f} | "
        f"{cfg.dataset}: {len(splits['train'])} train images, batch {cfg.batch_size}; "
        f"tracker: {len(families)} families, samples {probe.samples}, params "
        f"{probe.params}, every {probe.every}; {args.repeats} alternating repeats"
    )
    chosen = args.models.split(",") if args.models else None
    for model in cfg.models:
        label = model.label or model.name
        if chosen is not None and label not in chosen:
            continue
        plain, tracked, measured, drawn = [], [], [], []
        for _ in range(args.repeats):
            plain.append(train(model, cfg, splits, device, None))
            tracker = InvarianceTracker(families, "val", figures=not args.no_figures,
                                        **options)
            tracked.append(train(model, cfg, splits, device, tracker))
            measured.append(sum(s for _, s in tracker.seconds))
            drawn.append(tracker.figure_seconds)
        a, b, c, d = (statistics.median(x) for x in (plain, tracked, measured, drawn))
        print(f"{label:18s} {model.epochs or cfg.epochs:2d} epochs  plain {a:5.1f} s   "
              f"tracked {b:5.1f} s   overhead {b / a - 1:+.1%}   of which measurements "
              f"{c:4.1f} s = {c / a:.1%} ({len(tracker.seconds)}), figures {d:4.1f} s = "
              f"{d / a:.1%} (runs plain {[round(x, 1) for x in plain]}, tracked "
              f"{[round(x, 1) for x in tracked]})")
    print(f"load at end={os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
