"""Prefix tokens and patch grids from the model's structure (timm, torchvision, plain)."""

import pytest
import timm
import torch
import torchvision
from torch import nn

from viscope.activations import capture
from viscope.errors import ViscopeError
from viscope.models.tokens import patch_grid, prefix_tokens


def _tv_vit():
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(32, 8, num_layers=2, num_heads=2,
                                               hidden_dim=16, mlp_dim=32).eval()


class _PlainViT(nn.Module):
    """A hand-written ViT with a class token and 2 registers, nothing timm knows."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 8))
        self.reg_token = nn.Parameter(torch.randn(1, 2, 8))
        self.block = nn.Linear(8, 8)

    def forward(self, x):
        t = self.proj(x).flatten(2).transpose(1, 2)
        b = x.shape[0]
        t = torch.cat([self.cls_token.expand(b, -1, -1), self.reg_token.expand(b, -1, -1), t], 1)
        return self.block(t)[:, 0]


class _Anonymous(nn.Module):
    """Tokens with a prefix that nothing in the structure announces."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 8)
        self.block = nn.Identity()

    def forward(self, x):
        t = self.proj(x.flatten(2).transpose(1, 2))  # (B, H*W, 8)
        return self.block(torch.cat([t.mean(1, keepdim=True), t], 1))[:, 0]


@pytest.mark.parametrize("model, expected", [
    (lambda: timm.create_model("test_vit", img_size=32), 1),
    (lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1,
                               reg_tokens=3), 4),
    (lambda: timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, depth=1), 2),
    (_tv_vit, 1),
    (_PlainViT, 3),
    (lambda: timm.create_model("test_resnet"), None),
])
def test_prefix_tokens_from_structure(model, expected):
    assert prefix_tokens(model()) == expected


def test_torchvision_vit_patch_tokens_are_the_patches():
    """Regression: tokens='patch' kept all 17 tokens of torchvision's ViT (class token
    not recognised), and tokens='prefix' was refused."""
    net = _tv_vit()
    x = torch.rand(3, 3, 32, 32)
    layer = "encoder.layers.encoder_layer_1"
    full, recs = capture(net, x, [layer])
    patch, _ = capture(net, x, [layer], tokens="patch")
    prefix, _ = capture(net, x, [layer], tokens="prefix")
    assert full[layer].shape == (3, 17, 16)
    assert recs[layer].prefix_tokens == 1 and recs[layer].grid == (4, 4)
    torch.testing.assert_close(patch[layer], full[layer][:, 1:])
    torch.testing.assert_close(prefix[layer], full[layer][:, :1])
    assert patch_grid(net, (32, 32)) == (4, 4)


def test_plain_module_with_cls_and_register_parameters():
    net = _PlainViT().eval()
    acts, recs = capture(net, torch.rand(2, 3, 16, 16), ["block"], tokens="patch")
    assert recs["block"].prefix_tokens == 3
    assert acts["block"].shape == (2, 16, 8)


def test_unknown_prefix_is_refused_with_the_way_to_pass_it():
    net = _Anonymous().eval()
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(ViscopeError, match="prefix_tokens=K"):
        capture(net, x, ["block"], tokens="patch")
    acts, recs = capture(net, x, ["block"])  # all tokens: nothing to split
    assert recs["block"].prefix_tokens is None and acts["block"].shape == (2, 17, 8)
    acts, recs = capture(net, x, ["block"], tokens="patch", prefix_tokens=1)
    assert recs["block"].grid == (4, 4) and acts["block"].shape == (2, 16, 8)
    with pytest.raises(ViscopeError, match="at most 17"):
        capture(net, x, ["block"], tokens="patch", prefix_tokens=20)
