"""Gradient and occlusion maps equal captum's own calls (summed over channels)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import viscope.explain as E

captum_attr = pytest.importorskip("captum.attr")


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4)).double().eval()


def test_integrated_gradients_equals_captum(net) -> None:
    images = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    ours = E.attribute(net, images, "integrated_gradients", target=[1, 3], n_steps=16,
                       normalize=False)
    ref = captum_attr.IntegratedGradients(net).attribute(
        images.clone().requires_grad_(), target=[1, 3], n_steps=16, baselines=0.0
    ).sum(1)
    torch.testing.assert_close(ours, ref.detach())


def test_occlusion_equals_captum(net) -> None:
    images = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    ours = E.attribute(net, images, "occlusion", target=[0, 2], window=4, stride=2,
                       normalize=False)
    ref = captum_attr.Occlusion(net).attribute(
        images, sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2), target=[0, 2],
        baselines=0.0,
    ).sum(1)
    torch.testing.assert_close(ours, ref)


def test_saliency_is_the_input_gradient(net) -> None:
    images = torch.rand(1, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(net(images)[0, 2], images)
    ours = E.attribute(net, images.detach(), "saliency", target=2, normalize=False)
    torch.testing.assert_close(ours, grad.abs().sum(1))
