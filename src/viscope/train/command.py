"""``viscope train``: the command-line options of :func:`viscope.train.fit`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from viscope.cli_common import ModelArg, ModelName, Pretrained, SkipCorrupt, console, model_kwargs


def train(
    model: ModelName,
    out: Annotated[Path, typer.Option(help="run folder")],
    dataset: Annotated[str, typer.Option(help="built-in name, folder or CSV")] = "shapes",
    augment: Annotated[str | None, typer.Option(help="augmentation family (default none)")]
    = None,
    epochs: Annotated[int, typer.Option()] = 5,
    batch_size: Annotated[int, typer.Option()] = 64,
    lr: Annotated[float, typer.Option()] = 1e-3,
    image_size: Annotated[int, typer.Option()] = 32,
    n: Annotated[int | None, typer.Option(help="items of a built-in dataset")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    accelerator: Annotated[str, typer.Option(help="cpu, gpu, auto")] = "cpu",
    devices: Annotated[int, typer.Option()] = 1,
    precision: Annotated[str, typer.Option(help="32-true, bf16-mixed, 16-mixed")] = "32-true",
    model_arg: ModelArg = None,
    pretrained: Pretrained = False,
    overwrite: Annotated[bool, typer.Option(help="delete a run of another configuration in "
                                                 "--out and train again")] = False,
    skip_corrupt: SkipCorrupt = False,
) -> None:
    """Train a classifier with an augmentation family; best checkpoint on validation."""
    import torch

    from viscope import data, models
    from viscope.train import fit

    splits = {s: data.create(dataset, split=s, size=image_size, n=n, seed=0,
                             skip_corrupt=skip_corrupt)
              for s in ("train", "val", "test")}
    with torch.random.fork_rng(devices=[]):  # random-init weights follow --seed
        torch.manual_seed(seed)
        net = models.create(model, **model_kwargs(model_arg, pretrained,
                                                  num_classes=len(splits["train"].classes)))
    res = fit(net, splits, augment=augment, epochs=epochs, batch_size=batch_size, lr=lr,
              seed=seed, out=out, accelerator=accelerator, devices=devices,
              precision=precision, progress=True, overwrite=overwrite)
    console().print(f"best val accuracy {res.best_val_acc:.3f}, test accuracy "
                     f"{res.test_acc:.3f}; checkpoint {res.checkpoint}")
