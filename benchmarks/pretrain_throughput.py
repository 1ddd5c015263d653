"""Pre-training throughput of ``viscope.train.ssl.pretrain.pretrain`` against a plain
PyTorch loop with the same lightly loss, heads and views, same run.

Both sides pre-train the same model (same architecture and initial weights) with the same
method object (:func:`viscope.train.ssl.methods.create_method`: lightly's loss and heads,
views from viscope's transformation families drawn from a CPU generator reseeded every
epoch), optimizer (AdamW over timm's parameter groups of model and heads), cosine
schedule (timm's, stepped after every update), momentum update after each step, data
loader (seeded epoch sampler, last incomplete batch dropped), batch size and number of
steps. The plain loop does what Lightning does per step and nothing else.

What is timed, identically on both sides: each training epoch from its start to the end
of its last batch, synchronising CUDA at both ends. The first epoch (warm-up) is
dropped, and nothing outside epochs is timed (construction, the k-NN / linear probe
that ``pretrain`` runs after each epoch, checkpoint writing). Runs of the two alternate,
``--repeats`` times each, and the medians are compared.

Run:
    python benchmarks/pretrain_throughput.py                 # CPU, test_vit at 32 px, SimCLR
    python benchmarks/pretrain_throughput.py --threads 1     # steadier on a shared machine
    python benchmarks/pretrain_throughput.py --device cuda --n 4000 --batch-size 256
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import torch
from _timing import EpochTimer, add_run_args, compare, prepare

from viscope import models
from viscope.train import make_loader, make_optimizer
from viscope.train.augment import mix_seed
from viscope.train.callbacks import synchronize
from viscope.train.optim import OptimSettings, make_scheduler
from viscope.train.ssl.methods import create_method
from viscope.train.ssl.pretrain import pretrain

MODELS: dict[str, dict[str, Any]] = {
    "test_vit": {"img_size": 32, "patch_size": 4},
    "test_efficientnet": {},
}


def make_model(name: str, num_classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.create(name, num_classes=num_classes, **MODELS[name])


def plain_loop(model: torch.nn.Module, train: Any, *, method: str, epochs: int,
               batch_size: int, lr: float, weight_decay: float, seed: int,
               device: torch.device) -> list[tuple[int, float]]:
    """Pre-train as ``pretrain`` does, in plain PyTorch; return (images, seconds) per epoch."""
    torch.manual_seed(seed)
    ssl = create_method(method, model).to(device).train()
    loader = make_loader(train, batch_size, shuffle_seed=seed,
                         drop_last=len(train) > batch_size, pin_memory=device.type == "cuda")
    settings = OptimSettings(lr=lr, weight_decay=weight_decay)
    optimizer = make_optimizer(ssl.model, settings=settings, extra=ssl.heads())
    total = epochs * len(loader)
    scheduler = make_scheduler(optimizer, settings, total, len(loader))
    assert scheduler is not None
    generator = torch.Generator()
    step, timings = 0, []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        torch.manual_seed(mix_seed(seed, epoch, 0))
        generator.manual_seed(mix_seed(seed, epoch, 1))
        synchronize(device)
        start = time.perf_counter()
        seen, running = 0, torch.zeros((), device=device)
        for images, _labels in loader:
            images = images.to(device, non_blocking=True)
            loss = ssl.loss(ssl.views(images, generator))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(step)
            ssl.on_step_end(step - 1, total)
            running += loss.detach()
            seen += len(images)
        synchronize(device)
        timings.append((seen, time.perf_counter() - start))
    return timings


def viscope_pretrain(model: torch.nn.Module, splits: dict[str, Any], *, method: str,
                     epochs: int, batch_size: int, lr: float, weight_decay: float, seed: int,
                     device: torch.device) -> list[tuple[int, float]]:
    """Pre-train with ``pretrain``; return (images, seconds) per epoch."""
    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as out:
        pretrain(model, splits, out=out, method=method, epochs=epochs, batch_size=batch_size,
                 lr=lr, weight_decay=weight_decay, seed=seed, progress=False,
                 accelerator="gpu" if device.type == "cuda" else "cpu", callbacks=[timer])
    return timer.epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(parser, models="test_vit", batch_size=128)
    parser.add_argument("--method", default="simclr")
    args = parser.parse_args()
    device, splits = prepare(args)
    k = len(splits["train"].classes)
    common = dict(method=args.method, epochs=args.epochs, batch_size=args.batch_size, lr=1e-3,
                  weight_decay=0.05, seed=args.seed, device=device)
    compare(args, splits, f"method={args.method}",
            lambda name: plain_loop(make_model(name, k, args.seed), splits["train"], **common),
            lambda name: viscope_pretrain(make_model(name, k, args.seed), splits, **common),
            "pretrain")


if __name__ == "__main__":
    main()
