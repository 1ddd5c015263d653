"""Tiny models, data and a finished run shared by the training tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from viscope import models
from viscope.data import VisionDataset
from viscope.train import TrainResult, fit


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Run the training tests on one intra-op thread, restored afterwards: their tiny
    tensors gain nothing from more, and on a busy 2-core machine spinning threads can make
    them tens of times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: A ViT small enough for a CPU epoch of 140 images in well under a second.
TINY_VIT: dict[str, Any] = {"img_size": 32, "patch_size": 8, "depth": 2}
#: The configuration of the shared finished run.
RUN: dict[str, Any] = {
    "dataset": "shapes",
    "n": 200,
    "epochs": 2,
    "batch_size": 32,
    "lr": 2e-3,
    "augment": "rotation",
    "seed": 3,
    "model_kwargs": TINY_VIT,
    "progress": False,
}


def _tiny_vit(num_classes: int = 5) -> torch.nn.Module:
    return models.create("test_vit", num_classes=num_classes, **TINY_VIT)


@pytest.fixture(scope="session")
def tiny_vit() -> Callable[..., torch.nn.Module]:
    """``tiny_vit(num_classes=5)``: a fresh tiny ViT for 32 px images."""
    return _tiny_vit


@pytest.fixture
def run_config() -> dict[str, Any]:
    """The keyword arguments of the shared finished run (a copy)."""
    return dict(RUN)


class Separable(VisionDataset):
    """Two classes a linear model separates: dark (label 0) and bright (label 1) noise."""

    def __init__(self, n: int, seed: int, size: int = 32) -> None:
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % 2
        base = 0.25 + 0.5 * labels.float()
        noise = 0.1 * torch.randn(n, 3, size, size, generator=g)
        self.images = (base[:, None, None, None] + noise).clamp(0, 1)
        self.targets = labels.tolist()
        self.classes = ["dark", "bright"]
        self.has_masks = False

    def _item(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.targets[index]


@pytest.fixture(scope="session")
def make_separable() -> Callable[..., Separable]:
    """``make_separable(n, seed)``: a :class:`Separable` dataset."""
    return Separable


@pytest.fixture(scope="session")
def separable() -> dict[str, Separable]:
    """Train (128), val (32) and test (32) splits of :class:`Separable`."""
    return {"train": Separable(128, 0), "val": Separable(32, 1), "test": Separable(32, 2)}


class Recorder(pl.Callback):
    """Records what the trainer was given: the checkpoint monitor and the data it saw."""

    def __init__(self) -> None:
        self.monitor: str | None = None
        self.mode: str | None = None
        self.datasets: dict[str, Any] = {}
        self.train_epochs = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        callback = trainer.checkpoint_callback
        self.monitor, self.mode = callback.monitor, callback.mode

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_epochs += 1
        self.datasets["train"] = trainer.train_dataloader.dataset
        self.datasets["val"] = trainer.val_dataloaders.dataset


class FinishedRun:
    """The shared run: its result, its recorder and the number of trainer calls."""

    def __init__(self, result: TrainResult, recorder: Recorder, calls: dict[str, int]) -> None:
        self.result = result
        self.recorder = recorder
        self.calls = calls


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """``fit`` of the tiny ViT on ``shapes`` (200 items, 2 epochs, rotation augmentation),
    with ``Trainer.test`` forbidden and ``Trainer.fit`` / ``validate`` counted."""
    out = tmp_path_factory.mktemp("run")
    recorder = Recorder()
    calls = {"fit": 0, "validate": 0, "test": 0}
    original = {name: getattr(pl.Trainer, name) for name in calls}

    def counted(name: str) -> Any:
        def call(self: pl.Trainer, *args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return original[name](self, *args, **kwargs)

        return call

    with pytest.MonkeyPatch.context() as mp:
        for name in calls:
            mp.setattr(pl.Trainer, name, counted(name))
        result = fit("test_vit", out=out / "a", callbacks=[recorder], **RUN)
    return FinishedRun(result, recorder, calls)


def _state_of(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {
        k: v.detach().cpu().numpy().copy() for k, v in models.unwrap(model).state_dict().items()
    }


def _same_state(a: torch.nn.Module | Path, b: torch.nn.Module | Path) -> bool:
    sa = _state_of(models.create(a) if isinstance(a, Path) else a)
    sb = _state_of(models.create(b) if isinstance(b, Path) else b)
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="session")
def same_state() -> Callable[[Any, Any], bool]:
    """``same_state(a, b)``: models or checkpoint paths hold identical weights."""
    return _same_state
