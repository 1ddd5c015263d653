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
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F
from _timing import EpochTimer, add_run_args, compare, prepare

from viscope import models, transforms
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
    add_run_args(parser, models="test_vit,test_resnet", batch_size=64)
    parser.add_argument("--augment", default="rotation")
    args = parser.parse_args()
    device, splits = prepare(args)
    k = len(splits["train"].classes)
    common = dict(augment=args.augment, epochs=args.epochs, batch_size=args.batch_size,
                  lr=1e-3, weight_decay=0.05, seed=args.seed, device=device)
    compare(args, splits, f"augment={args.augment}",
            lambda name: plain_loop(make_model(name, k, args.seed), splits["train"], **common),
            lambda name: viscope_fit(make_model(name, k, args.seed), splits, **common),
            "viscope.fit")


if __name__ == "__main__":
    main()
