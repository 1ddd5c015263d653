"""``evaluate``: accuracy on clean and transformed images, against a brute-force loop."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from viscope import data, transforms
from viscope.errors import ViscopeError
from viscope.train import evaluate


@pytest.fixture(scope="module")
def shapes() -> data.VisionDataset:
    return data.create("shapes", split="test", n=400)


def pooled_linear() -> torch.nn.Module:
    """A small model whose predictions vary a lot between images (unlike an untrained
    ViT, which tends to predict one class), so that accuracies are informative."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 5)
    )


def _reference(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        predictions = [int(model.eval()(x[None])[0].argmax()) for x in images]
    return sum(p == y for p, y in zip(predictions, labels.tolist(), strict=True)) / len(labels)


def _all(dataset: data.VisionDataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([i[0] for i in items]), torch.tensor([i[1] for i in items])


def test_clean_accuracy_matches_one_by_one_loop(shapes: data.VisionDataset) -> None:
    model = pooled_linear()
    images, labels = _all(shapes)
    expected = _reference(model, images, labels)
    assert 0.05 < expected < 0.95  # informative
    assert evaluate(model, shapes, batch_size=7) == pytest.approx(expected, abs=1e-12)


def test_identity_transform_equals_clean(shapes: data.VisionDataset) -> None:
    model = pooled_linear()
    clean = evaluate(model, shapes)
    assert evaluate(model, shapes, transform="identity") == clean
    assert evaluate(model, shapes, transform="identity", params=3) == clean


def test_grid_accuracy_is_mean_over_grid_values(shapes: data.VisionDataset) -> None:
    model = pooled_linear()
    family = transforms.create("rotation")
    images, labels = _all(shapes)
    expected = sum(_reference(model, family.apply(images, g), labels) for g in family.grid(3)) / 3
    got = evaluate(model, shapes, transform=family, params=3, batch_size=64)
    assert got == pytest.approx(expected, abs=1e-12)
    assert got != evaluate(model, shapes)  # rotation changes some predictions


def test_random_parameters_are_seeded_and_batch_size_free(shapes: data.VisionDataset) -> None:
    model = pooled_linear()
    family = transforms.create("rotation")
    images, labels = _all(shapes)
    values = family.sample(len(shapes), torch.Generator().manual_seed(4))
    expected = _reference(model, family.apply(images, values), labels)
    a = evaluate(model, shapes, transform="rotation", seed=4, batch_size=32)
    b = evaluate(model, shapes, transform="rotation", seed=4, batch_size=200)
    assert a == b == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", ["invert", "solarize", "perspective"])
def test_strong_transform_gives_a_probability(
    tiny_vit: Callable[..., torch.nn.Module], name: str, shapes: data.VisionDataset
) -> None:
    acc = evaluate(tiny_vit(), shapes, transform=name)
    assert isinstance(acc, float) and 0.0 <= acc <= 1.0
    # and it is the accuracy on the images each transformed with its own seeded value
    model, family = pooled_linear(), transforms.create(name)
    images, labels = _all(shapes)
    values = family.sample(len(shapes), torch.Generator().manual_seed(0))
    expected = _reference(model, family.apply(images, values), labels)
    assert evaluate(model, shapes, transform=name, batch_size=96) == pytest.approx(
        expected, abs=1e-12
    )


def test_model_mode_device_and_grads_restored(
    tiny_vit: Callable[..., torch.nn.Module], shapes: data.VisionDataset
) -> None:
    model = tiny_vit().train()
    model.net.blocks[0].eval()  # a mixed-mode model keeps each module's mode
    modes = {name: m.training for name, m in model.named_modules()}
    evaluate(model, shapes, transform="rotation")
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(p.grad is None for p in model.parameters())
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_model_in_another_float_dtype_gets_images_in_its_dtype(
    dtype: torch.dtype, shapes: data.VisionDataset
) -> None:
    # e.g. after fit(precision="bf16-true"), which trains the model in bfloat16
    model = pooled_linear().to(dtype)
    images, labels = _all(shapes)
    expected = _reference(model, images.to(dtype), labels)
    assert evaluate(model, shapes, batch_size=64) == pytest.approx(expected, abs=1e-12)
    family = transforms.create("rotation")
    values = family.sample(len(shapes), torch.Generator().manual_seed(0))
    expected = _reference(model, family.apply(images, values).to(dtype), labels)
    assert evaluate(model, shapes, transform=family) == pytest.approx(expected, abs=1e-12)


def test_bad_arguments(
    tiny_vit: Callable[..., torch.nn.Module], shapes: data.VisionDataset
) -> None:
    model = tiny_vit()
    with pytest.raises(ViscopeError, match="params only together with a transform"):
        evaluate(model, shapes, params=3)
    with pytest.raises(ViscopeError, match="positive int"):
        evaluate(model, shapes, transform="rotation", params=0)
    with pytest.raises(ViscopeError, match="rotation"):
        evaluate(model, shapes, transform="rotatoin")
