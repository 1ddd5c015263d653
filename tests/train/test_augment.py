"""Augmentation on the batch: what the model sees in ``training_step``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from viscope import transforms
from viscope.errors import ViscopeError
from viscope.train import BatchAugment, Classifier, EpochShuffleSampler, fit, make_optimizer
from viscope.train.augment import mix_seed

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:lightning.*")

Splits = dict[str, Any]
ModelFactory = Callable[..., torch.nn.Module]


class Capture(pl.Callback):
    """Keeps, per training batch, the raw batch, the model's input and the parameters."""

    def __init__(self) -> None:
        self.raw: list[torch.Tensor] = []
        self.seen: list[torch.Tensor] = []
        self.params: list[torch.Tensor] = []
        self.applied: list[torch.Tensor] = []
        self._handle: Any = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if module.training:
                self.seen.append(args[0].detach().clone())

        self._handle = pl_module.model.register_forward_pre_hook(hook)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._handle.remove()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        self.raw.append(batch[0].detach().clone())

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        self.params.append(pl_module.last_params.clone())
        self.applied.append(pl_module.last_applied.clone())


def _train(
    model: torch.nn.Module,
    separable: Splits,
    out: Path,
    augment: Any,
    p: float = 1.0,
    seed: int = 0,
) -> Capture:
    capture = Capture()
    fit(
        model,
        separable,
        out=out,
        augment=augment,
        augment_p=p,
        epochs=2,
        batch_size=64,
        progress=False,
        callbacks=[capture],
        seed=seed,
    )
    return capture


@pytest.mark.parametrize("name", ["rotation", "brightness", "perspective"])
def test_model_sees_family_applied_with_params_in_range(
    tiny_vit: ModelFactory, name: str, separable: Splits, tmp_path: Path
) -> None:
    capture = _train(tiny_vit(2), separable, tmp_path, name)
    family = transforms.create(name)
    assert len(capture.seen) == len(capture.raw) == 4  # 2 epochs x 2 batches
    for raw, seen, params in zip(capture.raw, capture.seen, capture.params, strict=True):
        assert not torch.allclose(seen, raw, atol=1e-3)
        assert torch.equal(seen, family.apply(raw, params))
        lo = torch.tensor(family.low, dtype=params.dtype)
        hi = torch.tensor(family.high, dtype=params.dtype)
        flat = params.reshape(len(params), -1)
        assert bool(((flat >= torch.minimum(lo, hi)) & (flat <= torch.maximum(lo, hi))).all())
        assert flat[:, 0].unique().numel() > len(params) // 2  # one value per image
    assert not torch.equal(capture.params[0], capture.params[2])  # new values every epoch


def test_family_instance_keeps_its_range(
    tiny_vit: ModelFactory, separable: Splits, tmp_path: Path
) -> None:
    family = transforms.create("rotation", low=10, high=20)
    capture = _train(tiny_vit(2), separable, tmp_path, family)
    params = torch.cat(capture.params)
    assert params.min() >= 10 and params.max() <= 20
    assert torch.equal(capture.seen[0], family.apply(capture.raw[0], capture.params[0]))


def test_no_augmentation_passes_the_batch_unchanged(
    tiny_vit: ModelFactory, separable: Splits, tmp_path: Path
) -> None:
    capture = Capture()
    capture.on_train_batch_end = lambda *a, **k: None  # type: ignore[method-assign]
    fit(
        tiny_vit(2),
        separable,
        out=tmp_path,
        epochs=1,
        batch_size=64,
        progress=False,
        callbacks=[capture],
    )
    assert all(torch.equal(s, r) for s, r in zip(capture.seen, capture.raw, strict=True))


def test_augment_p_selects_images(
    tiny_vit: ModelFactory, separable: Splits, tmp_path: Path
) -> None:
    capture = _train(tiny_vit(2), separable, tmp_path, "invert", p=0.5)
    family = transforms.create("invert")
    applied = torch.cat(capture.applied)
    assert 0 < int(applied.sum()) < len(applied)
    for raw, seen, params, mask in zip(
        capture.raw, capture.seen, capture.params, capture.applied, strict=True
    ):
        assert torch.equal(seen[~mask], raw[~mask])
        assert torch.equal(seen[mask], family.apply(raw[mask], params[mask]))


def test_augmentation_is_seeded(tiny_vit: ModelFactory, separable: Splits, tmp_path: Path) -> None:
    a = _train(tiny_vit(2), separable, tmp_path / "a", "rotation", seed=1)
    b = _train(tiny_vit(2), separable, tmp_path / "b", "rotation", seed=1)
    c = _train(tiny_vit(2), separable, tmp_path / "c", "rotation", seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.params, b.params, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(a.raw, b.raw, strict=True))
    assert not torch.equal(a.params[0], c.params[0])


def test_batch_augment_unit() -> None:
    family = transforms.create("brightness")
    aug = BatchAugment(family, p=0.0, seed=0)
    x = torch.rand(6, 3, 8, 8)
    assert torch.equal(aug(x), x) and not bool(aug.last_applied.any())
    aug = BatchAugment(family, seed=5)
    first = aug(x)
    aug.reseed(5)
    assert torch.equal(aug(x), first)
    with pytest.raises(ViscopeError, match="augment_p"):
        BatchAugment(family, p=-0.1)


class _RecordingFamily(transforms.Family):
    """Brightness-like family that records the device of the parameters it is given."""

    name = "recording"
    param_names = ("value",)
    low = (0.0,)
    high = (1.0,)

    def __init__(self) -> None:
        super().__init__()
        self.params: list[torch.Tensor] = []

    def apply(self, images: torch.Tensor, params: Any) -> torch.Tensor:
        self.params.append(params)
        return images + 0.0


def test_partial_augmentation_hands_cpu_params_to_any_device() -> None:
    # Parameters are drawn on the CPU; with p < 1 the chosen ones must be picked there too
    # (indexing a CPU tensor with a CUDA index raises). "meta" stands in for a GPU.
    family = _RecordingFamily()
    aug = BatchAugment(family, p=0.5, seed=0)
    out = aug(torch.zeros(16, 3, 4, 4, device="meta"))
    assert out.device.type == "meta" and aug.last_applied.device.type == "meta"
    replay = torch.Generator().manual_seed(0)
    drawn = family.sample(16, replay, device="cpu", dtype=torch.float32)
    chosen = torch.rand(16, generator=replay) < 0.5
    assert 0 < int(chosen.sum()) < 16 and len(family.params) == 1
    assert family.params[0].device.type == "cpu"
    assert torch.equal(family.params[0], drawn[chosen])  # the chosen images' own values
    invert = BatchAugment(transforms.create("invert"), p=0.5, seed=0)
    assert invert(torch.zeros(16, 3, 4, 4, device="meta")).shape == (16, 3, 4, 4)


def test_partial_augmentation_on_the_test_device_matches_cpu(device) -> None:
    """``pytest --device cuda`` runs it on a GPU (where CPU-index bugs show)."""
    x = torch.rand(16, 3, 8, 8)
    cpu = BatchAugment(transforms.create("rotation"), p=0.5, seed=3)
    gpu = BatchAugment(transforms.create("rotation"), p=0.5, seed=3)
    expected, got = cpu(x), gpu(x.to(device))
    assert torch.equal(cpu.last_applied, gpu.last_applied.cpu())
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=0)


def test_augmentation_runs_outside_autocast(tiny_vit: ModelFactory) -> None:
    module = Classifier(tiny_vit(2), 2, augment="rotation")
    x = torch.rand(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = module.augment_batch(x)
    assert y.dtype == torch.float32
    assert torch.equal(y, module.augment.family.apply(x, module.last_params))


def test_epoch_sampler_depends_on_seed_and_epoch_only() -> None:
    a, b = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    first = list(a)
    a.set_epoch(4)
    b.set_epoch(4)
    assert sorted(first) == list(range(50)) and list(a) == list(b) != first
    assert mix_seed(3, 4) != mix_seed(4, 3)


def test_optimizer_groups_skip_decay_on_biases_norms_and_tokens(tiny_vit: ModelFactory) -> None:
    model = tiny_vit(2)
    optimizer = make_optimizer(model, lr=1e-3, weight_decay=0.05)
    assert isinstance(optimizer, torch.optim.AdamW)
    by_id = {id(p): name for name, p in model.named_parameters()}
    decay = {g["weight_decay"]: [by_id[id(p)] for p in g["params"]] for g in optimizer.param_groups}
    assert set(decay) == {0.0, 0.05}
    assert "net.pos_embed" in decay[0.0] and "net.cls_token" in decay[0.0]
    assert all(n.endswith(".weight") for n in decay[0.05])
    assert sum(len(v) for v in decay.values()) == len(by_id)


def test_cosine_schedule_reaches_zero(
    tiny_vit: ModelFactory, separable: Splits, tmp_path: Path
) -> None:
    lrs: list[float] = []

    class LR(pl.Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, i: int) -> None:
            lrs.append(trainer.optimizers[0].param_groups[1]["lr"])

    fit(
        tiny_vit(2),
        separable,
        out=tmp_path,
        epochs=2,
        batch_size=32,
        lr=1e-2,
        progress=False,
        callbacks=[LR()],
    )
    steps = len(lrs)
    assert steps == 8 and lrs[0] == pytest.approx(1e-2)
    expected = [
        0.5 * 1e-2 * (1 + torch.cos(torch.tensor(torch.pi * i / steps))).item()
        for i in range(steps)
    ]
    assert lrs == pytest.approx(expected, rel=1e-5)
