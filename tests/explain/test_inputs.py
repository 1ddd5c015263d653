"""Bad input to attribute() and the metrics: one clear line naming the fix, or it just works
(float images of another dtype, calls under torch.inference_mode())."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision
from torch import nn

import viscope.evaluate as V
import viscope.explain as E
import viscope.models as M
from viscope.errors import ViscopeError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5)).eval()


def _one_line(call, match: str) -> str:
    with pytest.raises(ViscopeError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
    return str(err.value)


METRICS = {
    "deletion_auc": lambda m, x, maps: V.deletion_auc(m, x, maps, 1, steps=4),
    "insertion_auc": lambda m, x, maps: V.insertion_auc(m, x, maps, 1, steps=4),
    "road": lambda m, x, maps: V.road(m, x, maps, 1, fractions=(0.3,)),
    "peds": lambda m, x, maps: V.peds(m, x, maps, 1),
    "model_randomization": lambda m, x, maps: V.model_randomization(
        m, x, "gradcam", 1, layer="2", layers=["6", "0"]),
}


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"timm": timm.create_model("test_resnet", num_classes=5).eval(),
            "torchvision": torchvision.models.resnet18(num_classes=5).eval(),
            "viscope": M.create("test_resnet", num_classes=5).eval()}


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_integer_images_are_refused_with_the_division(dtype) -> None:
    """uint8 images gave 'expected scalar type Byte but found Float' (raw models) or NaN
    maps blamed on the layer (viscope's wrapper subtracted a uint8 mean)."""
    images = (torch.rand(2, 3, 16, 16) * 255).to(dtype)
    for model in (_net(), _models()["viscope"]):
        msg = _one_line(lambda m=model: E.attribute(m, images, "gradcam", target=1),
                        "float images in \\[0, 1\\]")
        assert str(dtype) in msg and "/ 255" in msg
    maps = torch.rand(2, 16, 16)
    for name, metric in METRICS.items():
        _one_line(lambda f=metric: f(_net(), images, maps), "float images"), name


@pytest.mark.parametrize("method", ["gradcam", "eigencam", "saliency", "rise"])
def test_float64_images_on_a_float32_model_and_the_reverse_just_work(method) -> None:
    """Both raised torch's 'expected scalar type Double but found Float'."""
    model = _net()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    opts = {"n_masks": 32, "seed": 1} if method == "rise" else {}
    ref = E.attribute(model, images, method, target=[1, 2], **opts)
    torch.testing.assert_close(
        E.attribute(model, images.double(), method, target=[1, 2], **opts).float(), ref,
        atol=1e-5, rtol=1e-4)
    double = copy.deepcopy(model).double()
    ref64 = E.attribute(double, images.double(), method, target=[1, 2], **opts)
    torch.testing.assert_close(E.attribute(double, images, method, target=[1, 2], **opts),
                               ref64)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metrics_cast_images_to_the_models_dtype(name) -> None:
    model, metric = _net(), METRICS[name]
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    maps = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(1))
    ref = metric(model.double(), images.double(), maps.double())
    out = metric(model, images, maps)  # float32 images on a float64 model
    if isinstance(out, dict):
        out, ref = torch.stack(list(out.values())), torch.stack(list(ref.values()))
    torch.testing.assert_close(out.double(), ref.double())


@pytest.mark.parametrize("kind", ["timm", "torchvision", "viscope"])
def test_one_channel_images_for_a_three_channel_model(kind) -> None:
    """timm and torchvision models raised torch's 'expected input[2, 1, 32, 32] to have 3
    channels'."""
    model = _models()[kind]
    grey = torch.rand(2, 1, 32, 32)
    for method in ("gradcam", "saliency", "rise"):
        msg = _one_line(lambda m=method: E.attribute(model, grey, m, target=1),
                        "3 channels|\\(B, 3, H, W\\)")
        assert "got" in msg
    if kind != "viscope":
        assert "expand(-1, 3, -1, -1)" in msg
    _one_line(lambda: V.deletion_auc(model, grey, torch.rand(2, 32, 32), 1, steps=2),
              "3 channels|\\(B, 3, H, W\\)")


@pytest.mark.parametrize("method", ["gradcam", "layercam", "saliency", "integrated_gradients",
                                    "eigencam", "rise"])
def test_calls_under_inference_mode_give_the_usual_maps(method) -> None:
    """Gradient methods raised 'element 0 of tensors does not require grad'."""
    model = _net()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    opts = {"integrated_gradients": {"n_steps": 4}, "rise": {"n_masks": 32}}.get(method, {})
    ref = E.attribute(model, images, method, target=[1, 2], **opts)
    with torch.inference_mode():
        inside = images.clone()  # an inference tensor
        maps = E.attribute(model, inside, method, target=[1, 2], **opts)
        scores = V.deletion_auc(model, inside, maps, [1, 2], steps=4)
    torch.testing.assert_close(maps, ref)
    torch.testing.assert_close(scores, V.deletion_auc(model, images, ref, [1, 2], steps=4))
    assert all(p.grad is None for p in model.parameters())


def test_model_made_under_inference_mode_is_refused_with_the_fix() -> None:
    with torch.inference_mode():
        model = _net()
    _one_line(lambda: E.attribute(model, torch.rand(1, 3, 16, 16), "gradcam", target=0),
              "inference_mode")


def test_nan_images_name_the_images() -> None:
    """NaN input gave all-NaN maps and a warning blaming the layer."""
    images = torch.rand(3, 3, 16, 16)
    images[1, 0, 2, 2] = float("nan")
    images[2, 2, 0, 0] = float("inf")
    for method in ("gradcam", "saliency"):
        msg = _one_line(lambda m=method: E.attribute(_net(), images, m, target=1),
                        r"images \[1, 2\]")
        assert "nan_to_num" in msg
    maps = torch.rand(3, 16, 16)
    for name, metric in METRICS.items():
        _one_line(lambda f=metric: f(_net(), images, maps), r"images \[1, 2\]"), name


def test_class_agnostic_methods_check_the_class_range() -> None:
    """rollout and eigencam accepted target 7 of 5 classes."""
    vit = M.create("test_vit", img_size=32, num_classes=5).eval()
    images = torch.rand(2, 3, 32, 32)
    _one_line(lambda: E.attribute(vit, images, "rollout", target=7), r"\[0, 5\)")
    _one_line(lambda: E.attribute(_net(), images, "eigencam", target=[0, 7]), r"\[0, 5\)")
    assert E.attribute(vit, images, "rollout", target=4).shape == (2, 32, 32)
