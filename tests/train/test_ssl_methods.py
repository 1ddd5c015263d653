"""The pre-training methods: two steps on a ViT and a CNN, views, momentum updates."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from viscope import models, transforms
from viscope.errors import ViscopeError
from viscope.train.ssl.methods import SSL_METHODS, create_method, pooled_features

VIT: dict[str, Any] = {"img_size": 32, "patch_size": 8, "depth": 2}
BACKBONES = {"test_vit": VIT, "test_efficientnet": {}}


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create(name, num_classes=3, **BACKBONES[name])


def _steps(method: Any, n: int = 2) -> list[float]:
    trained = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-3)
    losses = []
    for step in range(n):
        views = method.views(torch.rand(8, 3, 32, 32), torch.Generator().manual_seed(step))
        loss = method.loss(views)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.on_step_end(step, n)
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("name", sorted(SSL_METHODS))
def test_every_method_trains_two_steps_on_a_vit_and_a_cnn(name: str, backbone: str) -> None:
    model = _model(backbone)
    if name == "mae" and backbone != "test_vit":
        with pytest.raises(ViscopeError, match="VisionTransformer"):
            create_method(name, model)
        return
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = create_method(name, model)
    losses = _steps(method)
    assert all(math.isfinite(v) for v in losses)
    # the model given is the one trained (not a copy)
    changed = [k for k, v in model.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed


def test_the_views_differ_and_are_the_configured_family_with_the_sampled_parameters() -> None:
    method = create_method("simclr", _model("test_vit"), families=["rotation"])
    images = torch.rand(4, 3, 32, 32)
    views = method.views(images, torch.Generator().manual_seed(5))
    rotation = transforms.create("rotation")
    replay = torch.Generator().manual_seed(5)
    for view in views:  # drawn in order from the same generator
        params = rotation.sample(4, replay, device="cpu")
        torch.testing.assert_close(view, rotation.apply(images, params))
    assert not torch.allclose(views[0], views[1])


def test_two_families_are_applied_in_turn() -> None:
    method = create_method("byol", _model("test_vit"), families=["brightness", "invert"])
    images = torch.rand(2, 3, 32, 32)
    views = method.views(images, torch.Generator().manual_seed(1))
    (b0, i0), _ = method.last_params
    expected = transforms.create("invert").apply(
        transforms.create("brightness").apply(images, b0), i0)
    torch.testing.assert_close(views[0], expected)


@pytest.mark.parametrize("name", ["byol", "dino"])
def test_the_teacher_moves_by_the_momentum_update(name: str) -> None:
    method = create_method(name, _model("test_efficientnet"), momentum=0.9)
    _steps(method, 1)  # the student moves away from the teacher
    student = {k: v.clone() for k, v in method.model.state_dict().items()}
    teacher = {k: v.clone() for k, v in method.teacher_model.state_dict().items()}
    step, total = 3, 10
    method.on_step_end(step, total)
    # lightly's cosine schedule from 0.9 to 1 over total steps, by hand
    m = 1.0 - (1.0 - 0.9) * (math.cos(math.pi * step / (total - 1)) + 1) / 2
    assert method.last_momentum == pytest.approx(m)
    params = dict(method.teacher_model.named_parameters())
    moved = 0
    for key, value in method.teacher_model.state_dict().items():
        if key in params:  # parameters move; buffers (BN statistics) are the teacher's own
            torch.testing.assert_close(value, m * teacher[key] + (1 - m) * student[key])
            moved += int(not torch.equal(value, teacher[key]))
    assert moved > 0


def test_pooled_features_are_the_backbones_pre_logits() -> None:
    model = _model("test_efficientnet").eval()
    images = torch.rand(2, 3, 32, 32)
    net = models.unwrap(model)
    # the classifier applied to the pooled features gives the model's logits
    torch.testing.assert_close(net.get_classifier()(pooled_features(model, images)),
                               model(images))


def test_an_unknown_method_or_setting_is_one_line() -> None:
    with pytest.raises(ViscopeError, match="simclr"):
        create_method("moco", _model("test_vit"))
    with pytest.raises(ViscopeError, match="settings"):
        create_method("simclr", _model("test_vit"), momentum=0.5)
