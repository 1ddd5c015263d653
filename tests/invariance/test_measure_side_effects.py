"""A measurement leaves the model and the random state as it found them: each module's own
train/eval mode (a frozen part of a training model stays in eval), its device, and the
global torch generator (a measurement inside a training must not change its randomness)."""

from __future__ import annotations

import torch

from viscope import models
from viscope.evaluate import explanation_invariance
from viscope.invariance import measure


def _model():
    net = models.create("test_resnet", num_classes=3).train()
    frozen = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    frozen.eval()  # as fit(freeze=...) keeps a frozen backbone's batch norm
    return net, frozen


def _data(n=6):
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(3, 32, 32, generator=g), i % 3) for i in range(n)]


def test_measure_restores_every_module_mode_and_the_global_rng():
    net, frozen = _model()
    modes = {name: m.training for name, m in net.named_modules()}
    torch.manual_seed(123)
    expected = torch.rand(4)  # what the generator gives next when nothing draws from it
    torch.manual_seed(123)
    measure(net, _data(), "rotation", samples=6, params=3, batch_size=4, seed=0)
    assert torch.equal(torch.rand(4), expected)
    assert {name: m.training for name, m in net.named_modules()} == modes
    assert net.training and not frozen.training


def test_explanation_invariance_restores_every_module_mode():
    net, frozen = _model()
    modes = {name: m.training for name, m in net.named_modules()}
    explanation_invariance(net, _data(), "brightness", samples=4, params=3, batch_size=4)
    assert {name: m.training for name, m in net.named_modules()} == modes
    assert not frozen.training
