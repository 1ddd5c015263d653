"""A small CNN trained on the built-in ``shapes`` data (session-scoped; used by slow tests)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import viscope.data

N_TRAIN, N_TEST = 1000, 300  # 300 held out: the pointing game's standard error ~0.02


def small_cnn(classes: int = 5) -> nn.Module:
    """Conv-BN-ReLU blocks at 32, 16 and 8 px, global average pooling, a linear head."""

    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(
        *block(3, 32), nn.MaxPool2d(2), *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
        *block(64, 96), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, classes),
    )


@pytest.fixture(scope="session")
def shapes_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(model in eval mode, held-out images, labels, masks); ~92 % held-out accuracy."""
    data = viscope.data.create("shapes", n=N_TRAIN + N_TEST, size=32)
    items = [data[i] for i in range(len(data))]
    images = torch.stack([it[0] for it in items])
    labels = torch.tensor([it[1] for it in items])
    masks = torch.stack([it[2] for it in items])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = small_cnn()
        epochs, batch = 15, 32
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, 3e-3, total_steps=epochs * ((N_TRAIN + batch - 1) // batch)
        )
        for _ in range(epochs):
            for idx in torch.randperm(N_TRAIN).split(batch):
                loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    model.eval()
    model.zero_grad(set_to_none=True)
    return model, images[N_TRAIN:], labels[N_TRAIN:], masks[N_TRAIN:]


def vit_attentions(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Each block's attention weights (B, heads, n, n) of a timm ViT, read by hooks
    outside viscope (fused attention switched off for the pass, then restored)."""
    from viscope.models import unwrap

    net = unwrap(model)
    attns: list[torch.Tensor] = []
    hooks = [b.attn.attn_drop.register_forward_hook(lambda m, i, o: attns.append(o.clone()))
             for b in net.blocks]
    fused = [b.attn.fused_attn for b in net.blocks]
    try:
        for b in net.blocks:
            b.attn.fused_attn = False
        with torch.no_grad():
            model(images)
    finally:
        for h, b, f in zip(hooks, net.blocks, fused, strict=True):
            h.remove()
            b.attn.fused_attn = f
    return attns


@pytest.fixture
def attentions():
    """:func:`vit_attentions`, for tests that compare against the raw attention weights."""
    return vit_attentions
