"""Training throughput of ``viscope.train.fit`` against a plain PyTorch loop, same run.

Both sides train the same model (same architecture and initial weights) on the same
data with the same optimizer (AdamW, timm parameter groups), cosine schedule (timm's,
stepped after every update), batch size,
number of steps, data loader (seeded epoch sampler, last incomplete batch dropped) and
augmentation (the family applied on the batch with per-image random parameters, the
generator reseeded every epoch). The plain loop does what Lightning does per step and
nothing else: forward, cross-entropy, backward, optimizer and scheduler step, the epoch's
loss accumulated on the device.

What is timed, identically on both sides: each training epoch from its start to the end
of its last batch (data loading, augmentation, forward, backward, step, logging),
synchronising CUDA at both ends. One-off start-up is excluded in both by dropping the
first epoch (warm-up: allocator, kernels, caches) and by not timing anything outside
epochs (model and Trainer construction, validation, checkpoint writing, test
evaluation). Runs of the two alternate, ``--repeats`` times each, and the medians are
compared, so that a busy machine slows both alike.

Run:
    python benchmarks/train_throughput.py                 # CPU, test_vit and test_resnet
    python benchmarks/train_throughput.py --threads 1     # steadier on a shared machine
    python benchmarks/train_throughput.py --device cuda --n 4000 --batch-size 256
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from _common import check_device
from _timing import EpochTimer, throughput

from viscope import data, models, transforms
from viscope.train import BatchAugment, fit, make_loader, make_optimizer
from viscope.train.augment import mix_seed
from viscope.train.callbacks import synchronize
from viscope.train.optim import OptimSettings, make_scheduler

MODELS: dict[str, dict[str, Any]] = {
    "test_vit": {"img_size": 32},
    "test_resnet": {},
}


def make_model(name: str, num_classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.create(name, num_classes=num_classes, **MODELS[name])


def plain_loop(
    model: torch.nn.Module,
    train: Any,
    *,
    augment: str,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    device: torch.device,
) -> list[tuple[int, float]]:
    """Train like ``fit`` does, in plain PyTorch; return (images, seconds) per epoch."""
    model = model.to(device).train()
    loader = make_loader(
        train,
        batch_size,
        shuffle_seed=seed,
        drop_last=len(train) > batch_size,
        pin_memory=device.type == "cuda",
    )
    optimizer = make_optimizer(model, lr, weight_decay)
    settings = OptimSettings(lr=lr, weight_decay=weight_decay)
    scheduler = make_scheduler(optimizer, settings, epochs * len(loader), len(loader))
    assert scheduler is not None
    step = 0
    aug = BatchAugment(transforms.create(augment), seed=seed)
    timings = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        torch.manual_seed(mix_seed(seed, 0, epoch, 0))
        aug.reseed(mix_seed(seed, 0, epoch, 1))
        synchronize(device)
        start = time.perf_counter()
        images_seen, total = 0, torch.zeros((), device=device)
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            loss = F.cross_entropy(model(aug(images)).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(step)
            total += loss.detach() * len(labels)
            images_seen += len(labels)
        synchronize(device)
        timings.append((images_seen, time.perf_counter() - start))
    return timings


def viscope_fit(
    model: torch.nn.Module,
    splits: dict[str, Any],
    *,
    augment: str,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    device: torch.device,
) -> list[tuple[int, float]]:
    """Train with ``viscope.train.fit``; return (images, seconds) per epoch."""
    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as out:
        fit(
            model,
            splits,
            out=out,
            augment=augment,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            seed=seed,
            accelerator="gpu" if device.type == "cuda" else "cpu",
            progress=False,
            callbacks=[timer],
        )
    return timer.epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="test_vit,test_resnet")
    parser.add_argument("--augment", default="rotation")
    parser.add_argument("--n", type=int, default=1000, help="training images")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    device = check_device(args.device)
    if args.epochs < 2:
        sys.exit(f"--epochs must be at least 2 (the first is an untimed warm-up); got "
                 f"{args.epochs}. Use --epochs 2 or more")
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="lightning")

    # Split n / 0.7 items so that the train split holds about n images.
    total = round(args.n / 0.7)
    splits = {s: data.create("shapes", split=s, n=total, seed=args.seed) for s in ("train", "val")}
    k = len(splits["train"].classes)
    common = dict(
        augment=args.augment,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=1e-3,
        weight_decay=0.05,
        seed=args.seed,
        device=device,
    )
    steps = len(splits["train"]) // args.batch_size
    print(
        f"device={device} torch={torch.__version__} lightning={pl.__version__} "
        f"threads={torch.get_num_threads()} load={os.getloadavg()[0]:.1f} | "
        f"{len(splits['train'])} train images, batch {args.batch_size}, {steps} steps/epoch, "
        f"{args.epochs} epochs (first excluded), augment={args.augment}, "
        f"{args.repeats} alternating repeats"
    )
    for name in args.models.split(","):
        plain_runs, fit_runs = [], []
        for _ in range(args.repeats):
            plain_runs.append(
                throughput(plain_loop(make_model(name, k, args.seed), splits["train"], **common))
            )
            fit_runs.append(
                throughput(viscope_fit(make_model(name, k, args.seed), splits, **common))
            )
        plain_ips, fit_ips = statistics.median(plain_runs), statistics.median(fit_runs)
        print(
            f"{name:12s} plain {plain_ips:8.1f} img/s   viscope.fit {fit_ips:8.1f} img/s   "
            f"ratio {fit_ips / plain_ips:.3f}   "
            f"(runs plain {[round(r) for r in plain_runs]}, fit {[round(r) for r in fit_runs]})"
        )
    print(f"load at end={os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
