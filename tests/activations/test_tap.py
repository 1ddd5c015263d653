"""The tap: per-sample outputs, in-place safety, repeated / missing modules, tokens,
window-partitioned tensors, and no trace left on the model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from viscope import models as vm
from viscope.activations import Tap, capture
from viscope.errors import ViscopeError
from viscope.invariance import measure

MODELS = {
    "test_vit": {"img_size": 32},
    "test_efficientnet": {},
    "torchvision:resnet18": {},
    "fastervit_tiny": {},
}


def hooks_of(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())


def snapshot(model: nn.Module):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    torch.manual_seed(0)
    return request.param, vm.create(request.param, num_classes=4, **MODELS[request.param])


def test_default_layers_give_per_sample_outputs_and_leave_no_trace(model, device):
    name, net = model
    net = net.to(device)
    layers = vm.default_layers(net)
    x = torch.rand(3, 3, 32, 32, device=device)
    before_hooks = hooks_of(net)
    net.train()
    acts, records = capture(net, x, layers)
    assert net.training  # the tap never switches the mode behind the user's back
    net.eval()
    before_w = snapshot(net)
    assert set(acts) == set(layers)
    for layer in layers:
        assert acts[layer].shape[0] == 3, (name, layer)
        assert tuple(acts[layer].shape[1:]) == records[layer].unit_shape
        assert records[layer].calls == 1
    # per sample: image i's activations do not depend on the rest of the batch (eval mode)
    acts_b, _ = capture(net, x, layers)
    acts_1, _ = capture(net, x[1:2], layers)
    for layer in layers:
        torch.testing.assert_close(acts_b[layer][1:2], acts_1[layer], rtol=1e-4, atol=1e-4)
    assert not net.training
    assert hooks_of(net) == before_hooks
    after = snapshot(net)
    assert all(torch.equal(before_w[k], after[k]) for k in before_w)


def test_measure_restores_mode_hooks_and_weights(device):
    net = vm.create("test_efficientnet", num_classes=3).to(device)
    from viscope.data import create as dataset

    for mode in (True, False):
        net.train(mode)
        before_hooks, before_w = hooks_of(net), snapshot(net)
        measure(net, dataset("shapes", n=12), "brightness", samples=6, params=3,
                device=device)
        assert net.training is mode
        assert hooks_of(net) == before_hooks
        after = snapshot(net)
        assert all(torch.equal(before_w[k], after[k]) for k in before_w)


def test_hooks_removed_when_forward_raises():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.raises(RuntimeError):
        with Tap(net, ["0"]):
            net(torch.rand(2, 5))  # wrong input size: the forward raises
    assert hooks_of(net) == 0


def test_inplace_relu_does_not_corrupt_stored_batchnorm_output():
    """torchvision ResNet: bn1 is followed by ReLU(inplace=True)."""
    torch.manual_seed(0)
    net = vm.create("torchvision:resnet18", num_classes=3).eval()
    ref = copy.deepcopy(net)
    for m in vm.unwrap(ref).modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    x = torch.rand(2, 3, 32, 32)
    ours, _ = capture(net, x, ["layer1.0.bn1", "bn1"])
    expected, _ = capture(ref, x, ["layer1.0.bn1", "bn1"])
    for k in ours:
        assert (ours[k] < 0).any(), "a BatchNorm output has negative values"
        torch.testing.assert_close(ours[k], expected[k])
    # what a non-cloning hook (as in tmeasures) stores is overwritten by the ReLU
    stored = {}
    h = vm.unwrap(net).layer1[0].bn1.register_forward_hook(
        lambda m, i, o: stored.__setitem__("x", o.detach()))
    try:
        with torch.no_grad():
            net(x)
    finally:
        h.remove()
    assert not (stored["x"] < 0).any()


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(12, 12)
        self.unused = nn.Linear(12, 12)
        self.pair = PairOut()

    def forward(self, x):
        y = self.shared(self.shared(x.flatten(1)))
        return self.pair(y)[0]


class PairOut(nn.Module):
    def forward(self, x):
        return x * 2, torch.zeros(7)


def test_module_called_twice_needs_a_call_index():
    net = Twice()
    x = torch.rand(3, 3, 2, 2)
    with pytest.raises(ViscopeError, match="shared@0"):
        capture(net, x, ["shared"])
    acts, rec = capture(net, x, ["shared@0", "shared@1"])
    first = net.shared(x.flatten(1))
    torch.testing.assert_close(acts["shared@0"], first)
    torch.testing.assert_close(acts["shared@1"], net.shared(first))
    assert rec["shared@1"].calls == 2


def test_module_that_never_runs_is_reported_and_skipped():
    net = Twice()
    acts, rec = capture(net, torch.rand(3, 3, 2, 2), ["unused", "pair"])
    assert "unused" not in acts and not rec["unused"].captured
    assert rec["pair"].picked == "[0]"  # tuple output: the per-sample element
    with pytest.warns(UserWarning, match="never ran"):
        from torch.utils.data import TensorDataset

        ds = TensorDataset(torch.rand(8, 3, 2, 2), torch.zeros(8))
        r = measure(net, ds, [lambda x: x, lambda x: 2 * x], samples=8,
                    layers=["unused", "pair"])
    assert r.layers == ["pair"] and r.meta["skipped"] == ["unused"]


def test_vit_tokens_cls_and_register_tokens():
    torch.manual_seed(0)
    net = vm.create("vit_tiny_patch16_224", img_size=32, patch_size=8, reg_tokens=4,
                    num_classes=3).eval()
    x = torch.rand(2, 3, 32, 32)
    every, rec = capture(net, x, ["blocks.0"])
    assert rec["blocks.0"].prefix_tokens == 5 and rec["blocks.0"].grid == (4, 4)
    assert every["blocks.0"].shape == (2, 21, 192)
    patch, _ = capture(net, x, ["blocks.0"], tokens="patch")
    prefix, _ = capture(net, x, ["blocks.0"], tokens="prefix")
    torch.testing.assert_close(patch["blocks.0"], every["blocks.0"][:, 5:])
    torch.testing.assert_close(prefix["blocks.0"], every["blocks.0"][:, :5])


def test_fastervit_window_partitioned_modules_are_refused():
    net = vm.create("fastervit_tiny", num_classes=3).eval()
    windowed = sorted(vm.windowed_modules(vm.unwrap(net)))
    assert windowed, "the tiny FasterViT must exercise hierarchical attention"
    with pytest.raises(ViscopeError, match="windows"):
        capture(net, torch.rand(2, 3, 32, 32), [windowed[-1]])


def test_dim0_not_batch_is_refused():
    class Flat(nn.Module):
        def forward(self, x):
            return x.reshape(-1, x.shape[-1])

    net = nn.Sequential(nn.Identity(), Flat())
    with pytest.raises(ViscopeError, match="not the sample"):
        capture(net, torch.rand(2, 3, 4), ["1"])


def test_channels_last_models_get_a_layout_per_module():
    """timm's Swin works channels-last (output_fmt NHWC) but its patch embedding's conv is
    channels-first; torchvision's Swin is channels-last until its final Permute."""
    import torchvision

    timm_swin = vm.create("swin_tiny_patch4_window7_224", num_classes=3, img_size=64,
                       window_size=2, embed_dim=24, depths=(1, 1, 1, 1),
                       num_heads=(1, 1, 1, 1)).eval()
    _, rec = capture(timm_swin, torch.rand(2, 3, 64, 64),
                     ["patch_embed.proj", "patch_embed", "layers.0", "layers.1"])
    assert (rec["patch_embed.proj"].layout, rec["patch_embed.proj"].unit_shape) == (
        "chw", (24, 16, 16))
    assert (rec["patch_embed"].layout, rec["patch_embed"].unit_shape) == ("hwc", (16, 16, 24))
    assert (rec["layers.1"].layout, rec["layers.1"].unit_shape) == ("hwc", (8, 8, 48))

    tv_swin = torchvision.models.swin_t(num_classes=3).eval()
    _, rec = capture(tv_swin, torch.rand(2, 3, 64, 64),
                     ["features.0.0", "features.0", "features.1", "permute", "avgpool"])
    assert (rec["features.0.0"].layout, rec["features.0.0"].unit_shape) == ("chw", (96, 16, 16))
    assert (rec["features.0"].layout, rec["features.0"].unit_shape) == ("hwc", (16, 16, 96))
    assert rec["features.1"].layout == "hwc"
    assert (rec["permute"].layout, rec["permute"].unit_shape) == ("chw", (768, 2, 2))
    assert rec["avgpool"].layout == "chw"
