"""Audit of the tap against brute-force answers: per-module channels-last layouts, prefix
tokens per module, checkpoint recomputation, state left on the model, stale outputs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.utils.checkpoint import checkpoint

from viscope.activations import Tap, capture
from viscope.errors import ViscopeError


def test_convnext_inner_modules_are_channels_last():
    """timm ConvNeXt permutes to (B, H, W, C) around its LayerNorm and MLP (conv_mlp=False);
    the block itself is channels-first again."""
    torch.manual_seed(0)
    net = timm.create_model("test_convnext", num_classes=3).eval()
    blk = "stages.0.blocks.0"
    names = ["stem", blk, f"{blk}.conv_dw", f"{blk}.norm", f"{blk}.mlp.fc1", f"{blk}.mlp.act",
             f"{blk}.mlp", f"{blk}.drop_path"]
    acts, rec = capture(net, torch.rand(2, 3, 32, 32), names)
    b = net.stages[0].blocks[0]
    with torch.no_grad():
        dw = b.conv_dw(net.stages[0].downsample(acts["stem"]))
        norm = b.norm(dw.permute(0, 2, 3, 1))  # brute force: (B, H, W, C)
        fc1 = b.mlp.fc1(norm)
        act = b.mlp.act(fc1)
    torch.testing.assert_close(acts[f"{blk}.norm"], norm)
    torch.testing.assert_close(acts[f"{blk}.mlp.act"], act)
    expected = {f"{blk}.conv_dw": ("chw", tuple(dw.shape[1:])),
                f"{blk}.norm": ("hwc", tuple(norm.shape[1:])),
                f"{blk}.mlp.fc1": ("hwc", tuple(fc1.shape[1:])),
                f"{blk}.mlp.act": ("hwc", tuple(act.shape[1:])),
                f"{blk}.mlp": ("hwc", tuple(norm.shape[1:])),
                f"{blk}.drop_path": ("chw", tuple(dw.shape[1:])),
                blk: ("chw", tuple(dw.shape[1:]))}
    got = {n: (rec[n].layout, rec[n].unit_shape) for n in expected}
    assert got == expected


def test_torchvision_convnext_block_layouts_follow_its_permutes():
    """CNBlock.block = Conv2d, Permute(0,2,3,1), LayerNorm, Linear, GELU, Linear, Permute."""
    torch.manual_seed(0)
    net = torchvision.models.convnext_tiny(num_classes=3).eval()
    pre = "features.1.0.block"
    layouts = {f"{pre}.{i}": lay for i, lay in
               enumerate(["chw", "hwc", "hwc", "hwc", "hwc", "hwc", "chw"])}
    layouts[pre] = layouts["features.1.0"] = "chw"
    _, rec = capture(net, torch.rand(2, 3, 32, 32), list(layouts))
    assert {n: r.layout for n, r in rec.items()} == layouts
    assert rec[f"{pre}.4"].unit_shape == (8, 8, 384)  # GELU after Linear(96, 384)


def test_dynamic_size_vit_patch_embedding_is_channels_last():
    """timm ViT with dynamic_img_size: the patch embedding outputs (B, h, w, D)."""
    torch.manual_seed(0)
    net = timm.create_model("test_vit", img_size=32, dynamic_img_size=True, num_classes=3)
    x = torch.rand(2, 3, 32, 32)
    acts, rec = capture(net.eval(), x, ["patch_embed"])
    with torch.no_grad():
        expected = net.patch_embed.proj(x).permute(0, 2, 3, 1)
    torch.testing.assert_close(acts["patch_embed"], expected)
    assert rec["patch_embed"].layout == "hwc"


def test_patch_embedding_tokens_have_no_prefix_tokens():
    """The patch embedding runs before CLS/register tokens are prepended: tokens='patch'
    keeps all its tokens, and tokens='prefix' has nothing to return."""
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, reg_tokens=2,
                            num_classes=3).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = net.patch_embed.proj(x).flatten(2).transpose(1, 2)  # 16 patch tokens
    acts, rec = capture(net, x, ["patch_embed", "blocks.0"], tokens="patch")
    torch.testing.assert_close(acts["patch_embed"], expected)
    assert (rec["patch_embed"].prefix_tokens, rec["patch_embed"].grid) == (0, (4, 4))
    assert (rec["blocks.0"].prefix_tokens, rec["blocks.0"].grid) == (3, (4, 4))
    assert acts["blocks.0"].shape[1] == 16
    with pytest.raises(ViscopeError, match="prefix"):
        capture(net, x, ["patch_embed"], tokens="prefix")


class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)
        self.reentrant = reentrant

    def forward(self, x):
        return self.b(checkpoint(self.a, x, use_reentrant=self.reentrant))


@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpoint_recomputation_in_backward_is_not_a_second_call(reentrant):
    torch.manual_seed(0)
    net = Checkpointed(reentrant)
    x = torch.rand(3, 4, requires_grad=True)
    with Tap(net, ["a", "a@1"]) as tap:
        net(x).sum().backward()  # backward re-runs `a`
    torch.testing.assert_close(tap.activations["a"], net.a(x).detach())
    assert tap.records["a"].calls == 1 and tap.missing == ["a@1"]
    assert x.grad is not None


def test_direct_submodule_calls_are_not_counted_as_one_forward():
    """Only the network's own forward is captured; calling a sub-path (forward_features)
    twice must not be mistaken for a module that runs twice in one pass."""
    torch.manual_seed(0)
    net = timm.create_model("test_vit", img_size=32, num_classes=3).eval()
    with torch.no_grad(), Tap(net, ["blocks.0"]) as tap:
        net.forward_features(torch.rand(2, 3, 32, 32))
        net.forward_features(torch.rand(3, 3, 32, 32))
        assert tap.missing == ["blocks.0"]
        x = torch.rand(2, 3, 32, 32)
        net(x)
    torch.testing.assert_close(tap.activations["blocks.0"], net.blocks[0](
        net.norm_pre(net._pos_embed(net.patch_embed(x)))))


class Branch(nn.Module):
    def __init__(self):
        super().__init__()
        self.big = nn.Linear(4, 4)
        self.small = nn.Linear(4, 4)

    def forward(self, x):
        return self.big(x) if x.shape[0] > 2 else self.small(x)


def test_activations_come_from_the_last_forward_only():
    net = Branch()
    x = torch.rand(2, 4)
    with torch.no_grad(), Tap(net, ["big", "small"]) as tap:
        net(torch.rand(3, 4))
        net(x)
    assert set(tap.activations) == {"small"}  # not `big` from the batch before
    torch.testing.assert_close(tap.activations["small"], net.small(x).detach())


def test_capture_in_train_mode_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3).train()
    ref = copy.deepcopy(net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(2, 3, 32, 32)
    acts, _ = capture(net, x, ["bn1"])
    with torch.no_grad():
        torch.testing.assert_close(acts["bn1"], ref.bn1(ref.conv1(x)))  # batch statistics
    assert net.training
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_layer_named_twice_is_streamed_once_per_forward():
    net = nn.Sequential(nn.Linear(3, 3))
    seen = []
    with torch.no_grad(), Tap(net, ["0", "0"], callback=lambda n, a: seen.append(a)):
        net(torch.rand(2, 3))
    assert len(seen) == 1


def test_vit_attention_maps_have_no_spatial_axes():
    # (B, heads, N, N) attention weights are token x token, not an image: no spatial
    # averaging, and a geometric inverse would warp them meaninglessly.
    from viscope import models as vm
    from viscope.invariance import measure

    net = vm.create("test_vit", img_size=32).eval()
    for m in net.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    images = torch.rand(2, 3, 32, 32)
    _, recs = capture(net, images, ["blocks.0.attn.attn_drop", "patch_embed.proj"])
    assert recs["blocks.0.attn.attn_drop"].layout == "other"
    assert recs["blocks.0.attn.attn_drop"].unit_shape == (2, 5, 5)  # heads, N, N
    assert recs["patch_embed.proj"].layout == "chw"
    data = torch.utils.data.TensorDataset(torch.rand(6, 3, 32, 32), torch.zeros(6))
    layer = ["blocks.0.attn.attn_drop"]
    plain = measure(net, data, "rotation", samples=6, params=3, layers=layer)
    spatial = measure(net, data, "rotation", samples=6, params=3, layers=layer, spatial=True)
    np.testing.assert_array_equal(plain.per_unit(layer[0]), spatial.per_unit(layer[0]))
    assert plain.per_unit(layer[0]).shape == (2, 5, 5)
    with pytest.raises(ViscopeError, match="nv_se"):
        measure(net, data, "rotation", samples=6, params=3, layers=layer, measure="nv_se")


def test_data_parallel_over_several_devices_is_refused_one_device_is_fine():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    images = torch.rand(2, 3, 8, 8)
    one = nn.DataParallel(net)  # no GPU: no device ids, a plain call
    acts, _ = capture(one, images, ["0"])
    torch.testing.assert_close(acts["0"], net[0](images))
    many = nn.DataParallel(net)
    many.device_ids = [0, 1]  # as on a two-GPU machine; refused before any forward
    with pytest.raises(ViscopeError, match="torchrun"):
        Tap(many, ["0"])
    assert not net[0]._forward_hooks
