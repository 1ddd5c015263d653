"""attribute(): batching, in-place models, no leaks, layouts, targets and warnings."""

from __future__ import annotations

import copy
import warnings

import pytest
import timm
import torch
from torch import nn

import viscope.explain as E
import viscope.models as M
from viscope.errors import ViscopeError

FAST = {"rise": {"n_masks": 64, "chunk": 32}, "cbrise": {"max_masks": 64, "chunk": 32},
        "integrated_gradients": {"n_steps": 4}, "smoothgrad": {"n_samples": 3},
        "scorecam": {"batch_size": 64, "layer": "layer1"}}


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return M.create("resnet18", num_classes=4, zero_init_last=False).eval()


@pytest.mark.parametrize("method", [m for m in E.list_methods() if m != "rollout"])
def test_every_method_leaves_the_model_as_it_was(resnet, device, method) -> None:
    model = resnet.to(device)
    images = torch.rand(2, 3, 64, 80, device=device)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = _hooks(model)
    maps = E.attribute(model, images, method, target=[1, 3], **FAST.get(method, {}))
    assert maps.shape == (2, 64, 80) and maps.device == images.device
    assert maps.grad_fn is None and torch.isfinite(maps).all()
    assert 0 <= maps.min() and maps.max() <= 1
    assert _hooks(model) == hooks and not model.training
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


@pytest.mark.filterwarnings("error")  # an empty map would make the comparison trivial
@pytest.mark.parametrize("method", ["gradcam", "layercam", "eigencam", "scorecam", "rise"])
def test_batch_gives_each_images_own_map(resnet, method) -> None:
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    targets = [1, 2, 3]
    batch = E.attribute(resnet, images, method, target=targets, **FAST.get(method, {}))
    for i in range(3):
        single = E.attribute(resnet, images[i : i + 1], method, target=targets[i],
                             **FAST.get(method, {}))
        torch.testing.assert_close(batch[i : i + 1], single, atol=1e-5, rtol=1e-4)


def test_in_place_model_gives_the_out_of_place_map() -> None:
    torch.manual_seed(0)
    inplace = timm.create_model("resnet18", num_classes=4, zero_init_last=False).eval()
    outplace = copy.deepcopy(inplace)
    for m in outplace.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    assert any(getattr(m, "inplace", False) for m in inplace.modules())
    images = torch.rand(2, 3, 64, 64)
    for method in ("gradcam", "hirescam"):
        a = E.attribute(inplace, images, method, layer="layer4.1.bn2", target=[0, 1],
                        normalize=False)
        b = E.attribute(outplace, images, method, layer="layer4.1.bn2", target=[0, 1],
                        normalize=False)
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("name", "kwargs", "size"),
    [
        ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "reg_tokens": 4}, (32, 32)),
        ("vit_tiny_patch16_224", {"img_size": (32, 48), "patch_size": 8, "reg_tokens": 2},
         (32, 48)),
        ("swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 2, "embed_dim": 24,
                                          "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)},
         (64, 64)),
        ("fastervit_tiny", {}, (32, 32)),
    ],
)
def test_token_nhwc_and_hierarchical_layouts(name, kwargs, size) -> None:
    torch.manual_seed(0)
    model = M.create(name, num_classes=3, **kwargs).eval()
    images = torch.rand(2, 3, *size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the auto layer gives a non-empty map
        for method in ("gradcam", "layercam", "eigencam"):
            maps = E.attribute(model, images, method, target=[0, 2])
            assert maps.shape == (2, *size) and torch.isfinite(maps).all()
    assert _hooks(model) == 0
    assert all(p.grad is None for p in model.parameters())


def test_vit_grid_comes_from_the_model_with_register_tokens() -> None:
    model = M.create("vit_tiny_patch16_224", img_size=32, patch_size=8, reg_tokens=4).eval()
    images = torch.rand(1, 3, 32, 32)
    acts, grads = E.GradCAM().activations(model, images, E.resolve_target(0, 1),
                                          E.auto_layer(model))
    assert acts.shape == (1, 192, 4, 4) and grads.shape == acts.shape
    with E.LayerTap(model, "blocks.1.norm1", grad=False) as tap, torch.no_grad():
        model(images)
    tokens = tap.require()  # (1, 5 prefix + 16 patches, 192)
    grid = E.to_grid(tokens, tap.record, model, (32, 32))
    torch.testing.assert_close(grid[0, :, 1, 2], tokens[0, 5 + 1 * 4 + 2])


def test_vit_last_block_warns_with_a_better_layer() -> None:
    model = M.create("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=3).eval()
    with pytest.warns(UserWarning, match=r"all zero.*blocks\.11\.norm1"):
        E.attribute(model, torch.rand(2, 3, 32, 32), "gradcam", layer="blocks.11", target=0)


def test_training_mode_is_kept_and_warned(resnet) -> None:
    model = copy.deepcopy(resnet).train()
    with pytest.warns(UserWarning, match="training mode"):
        E.attribute(model, torch.rand(2, 3, 64, 64), "gradcam", target=0)
    assert model.training


def test_targets(resnet) -> None:
    images = torch.rand(2, 3, 64, 64)
    with pytest.raises(ViscopeError, match="one target per image"):
        E.attribute(resnet, images, "gradcam", target=[0, 1, 2])
    by_int = E.attribute(resnet, images, "gradcam", target=2)
    by_fn = E.attribute(resnet, images, "gradcam", target=lambda out: out[:, 2])
    by_list = E.attribute(resnet, images, "gradcam", target=[lambda o: o[2]] * 2)
    torch.testing.assert_close(by_int, by_fn)
    torch.testing.assert_close(by_int, by_list)
    with torch.no_grad():
        predicted = resnet(images).argmax(1)
    torch.testing.assert_close(E.attribute(resnet, images, "gradcam"),
                               E.attribute(resnet, images, "gradcam", target=predicted))


def test_region_target_for_a_segmentation_model() -> None:
    torch.manual_seed(0)
    seg = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    region = torch.zeros(16, 16)
    region[:8, :8] = 1
    maps = E.attribute(seg, torch.rand(2, 3, 16, 16), "gradcam", layer="2",
                       target=[E.RegionTarget(1, region)] * 2)
    assert maps.shape == (2, 16, 16)


def test_unknown_method_and_misused_layer(resnet) -> None:
    images = torch.rand(1, 3, 32, 32)
    with pytest.raises(ViscopeError, match="Did you mean 'gradcam'"):
        E.attribute(resnet, images, "gradcma")
    with pytest.raises(ViscopeError, match="does not read a layer"):
        E.attribute(resnet, images, "saliency", layer="layer4")
    with pytest.raises(ViscopeError, match="module name"):
        E.attribute(resnet, images, "gradcam", layer="layer9")


def test_raw_maps_are_signed_and_normalised_maps_are_their_clipped_scaling(resnet) -> None:
    images = torch.rand(2, 3, 64, 64)
    raw = E.attribute(resnet, images, "hirescam", target=1, normalize=False)
    norm = E.attribute(resnet, images, "hirescam", target=1)
    assert (raw < 0).any()
    assert torch.allclose(norm.amax(dim=(1, 2)), torch.ones(2))
    assert torch.allclose(norm.amin(dim=(1, 2)), torch.zeros(2))


def test_attention_rollout_restores_fused_attention() -> None:
    model = M.create("vit_tiny_patch16_224", img_size=32, patch_size=8, reg_tokens=4).eval()
    net = M.unwrap(model)
    before = [b.attn.fused_attn for b in net.blocks]
    maps = E.attribute(model, torch.rand(2, 3, 32, 32), "rollout")
    assert maps.shape == (2, 32, 32)
    assert [b.attn.fused_attn for b in net.blocks] == before
    raw = E.attention_rollout(model, torch.rand(2, 3, 32, 32))
    assert raw.shape == (2, 4, 4) and (raw > 0).all()
