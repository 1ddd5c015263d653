"""Audit of attribute(): class ranges, token grids, low precision, NaNs, batch independence."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import viscope.explain as E
import viscope.models as M
from viscope.errors import ViscopeError


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return M.create("resnet18", num_classes=4, zero_init_last=False).eval()


def _seg() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "saliency", "inputxgradient",
                                    "integrated_gradients", "smoothgrad", "occlusion"])
@pytest.mark.parametrize("target", [4, -1, [0, 9]])
def test_class_index_out_of_range_is_a_viscope_error(resnet, method, target) -> None:
    """Out-of-range classes gave torch's RuntimeError on the CPU (a device assert on CUDA);
    occlusion surfaced captum's indexing error."""
    opts = {"scorecam": {"layer": "layer4"}, "integrated_gradients": {"n_steps": 2},
            "smoothgrad": {"n_samples": 2}}.get(method, {})
    with pytest.raises(ViscopeError, match=r"class ind.*\[0, 4\)"):
        E.attribute(resnet, torch.rand(2, 3, 32, 32), method, target=target, **opts)


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "gradcam", "occlusion"])
def test_class_target_on_a_segmentation_output_is_a_viscope_error(method) -> None:
    """captum-based methods raised captum's AssertionError ('Output must be 2D')."""
    with pytest.raises(ViscopeError, match="RegionTarget"):
        E.attribute(_seg(), torch.rand(2, 3, 16, 16), method, layer="auto", target=1)


def test_region_target_explains_the_region(resnet) -> None:
    seg = _seg()
    images = torch.rand(2, 3, 16, 20)
    region = torch.zeros(16, 20)
    region[:8, :8] = 1
    kw = {"layer": "2", "normalize": False}
    shared = E.attribute(seg, images, "gradcam", target=E.RegionTarget(1, region), **kw)
    listed = E.attribute(seg, images, "gradcam", target=[E.RegionTarget(1, region)] * 2, **kw)
    by_hand = E.attribute(seg, images, "gradcam",
                          target=lambda out: (out[:, 1] * region).sum(dim=(-2, -1)), **kw)
    other = E.attribute(seg, images, "gradcam", target=E.RegionTarget(1, 1 - region), **kw)
    torch.testing.assert_close(shared, listed)
    torch.testing.assert_close(shared, by_hand)
    assert not torch.allclose(shared, other)


def test_dynamic_img_pad_vit_uses_the_models_padded_grid() -> None:
    """timm pads to whole patches (ceil); the grid was taken as H // patch (floor)."""
    model = M.create("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=3, depth=2,
                     dynamic_img_size=True, dynamic_img_pad=True).eval()
    images = torch.rand(2, 3, 36, 44)
    acts, _ = E.GradCAM().activations(model, images, E.resolve_target(0, 2), "blocks.1.norm1")
    assert acts.shape[-2:] == (5, 6)
    for method in ("gradcam", "rollout"):
        assert E.attribute(model, images, method, target=0).shape == (2, 36, 44)


def test_patch_embed_tokens_have_no_prefix_tokens() -> None:
    """The patch embedding's tokens come before CLS/register tokens are prepended: dropping
    ``num_prefix_tokens`` of them refused the layer, or with a 2 x 5 grid and one CLS token
    silently folded 9 tokens into a 3 x 3 grid."""
    model = M.create("vit_tiny_patch16_224", img_size=(16, 40), patch_size=8, num_classes=3,
                     depth=2).eval()
    images = torch.rand(1, 3, 16, 40)
    with E.LayerTap(model, "patch_embed", grad=False) as tap, torch.no_grad():
        model(images)
    tokens = tap.require()
    assert tokens.shape[1] == 10
    grid = E.to_grid(tokens, tap.record, model, (16, 40))
    assert grid.shape == (1, 192, 2, 5)
    torch.testing.assert_close(grid[0, :, 1, 3], tokens[0, 1 * 5 + 3])
    reg = M.create("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=3, depth=2,
                   reg_tokens=4).eval()
    maps = E.attribute(reg, torch.rand(2, 3, 32, 32), "gradcam", layer="patch_embed", target=0)
    assert maps.shape == (2, 32, 32)


def test_eigencam_ignores_nan_activations_like_grad_cam() -> None:
    """The mean was taken before NaNs were zeroed: the SVD then failed (LinAlgError)."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    acts = torch.rand(2, 6, 4, 5, dtype=torch.float64)
    acts[0, 1, 2, 3] = float("nan")
    ours = E.EigenCAM().combine(acts.clone(), None).numpy()
    ref = get_2d_projection(acts.numpy().copy())
    assert np.isfinite(ours).all()
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, np.sign((a * b).sum()) * b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["eigencam", "scorecam", "gradcam++"])
def test_low_precision_models_give_the_float32_maps(resnet, dtype, method) -> None:
    """EigenCAM's SVD has no half kernels; Score-CAM's 1e-8 underflows in float16 and an
    all-zero channel became a 0 / 0 mask (a NaN map)."""
    n = 1 if method == "scorecam" else 2  # Score-CAM: 256 half-precision passes an image
    images, target = torch.rand(n, 3, 32, 32), [0, 1][:n]
    ref = E.attribute(resnet, images, method, layer="layer3", target=target)
    low = copy.deepcopy(resnet).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        maps = E.attribute(low, images.to(dtype), method, layer="layer3", target=target)
    assert torch.isfinite(maps).all()
    if method == "eigencam":  # sign of a near-degenerate component may differ: compare |r|
        r = torch.corrcoef(torch.stack([maps.float().flatten(), ref.flatten()]))[0, 1]
        assert r > 0.9
    else:
        assert (maps.float() - ref).abs().max() < 0.1


def test_smoothgrad_batch_gives_each_images_own_map(resnet) -> None:
    """The noise of image i depended on its position in the batch."""
    images = torch.rand(3, 3, 32, 32)
    batch = E.attribute(resnet, images, "smoothgrad", target=[0, 1, 2], n_samples=4)
    for i in range(3):
        single = E.attribute(resnet, images[i : i + 1], "smoothgrad", target=i, n_samples=4)
        torch.testing.assert_close(batch[i : i + 1], single, atol=1e-5, rtol=1e-4)


def test_smoothgrad_equals_captum_for_one_image(resnet) -> None:
    from captum.attr import NoiseTunnel, Saliency

    image = torch.rand(1, 3, 32, 32)
    ours = E.attribute(resnet, image, "smoothgrad", target=2, n_samples=3, seed=5,
                       normalize=False)
    torch.manual_seed(5)
    ref = NoiseTunnel(Saliency(resnet)).attribute(
        image.clone().requires_grad_(), nt_type="smoothgrad", nt_samples=3, stdevs=0.15,
        target=[2],
    ).sum(1)
    torch.testing.assert_close(ours, ref.detach())


@pytest.mark.parametrize("kwargs", [{"reg_tokens": 4},
                                    {"reg_tokens": 2, "class_token": False,
                                     "global_pool": "avg"}])
@pytest.mark.parametrize("head_fusion", ["mean", "max"])
def test_rollout_equals_a_direct_computation(kwargs, head_fusion, attentions) -> None:
    model = M.create("vit_tiny_patch16_224", img_size=(32, 48), patch_size=8, num_classes=3,
                     depth=3, **kwargs).eval()
    net = M.unwrap(model)
    images = torch.rand(2, 3, 32, 48)
    ours = E.attention_rollout(model, images, head_fusion=head_fusion)
    attns = attentions(model, images)
    n, p = attns[0].shape[-1], net.num_prefix_tokens
    roll = torch.eye(n).repeat(2, 1, 1)
    for a in attns:
        a = a.mean(1) if head_fusion == "mean" else a.amax(1)
        a = 0.5 * a + 0.5 * torch.eye(n)
        roll = (a / a.sum(-1, keepdim=True)) @ roll
    ref = roll[:, 0, p:] if net.cls_token is not None else roll[:, p:, p:].mean(1)
    assert ours.shape == (2, 4, 6)
    torch.testing.assert_close(ours.flatten(1), ref)


@pytest.mark.filterwarnings("ignore:.*all zero")
@pytest.mark.parametrize("method", ["gradcam", "scorecam", "saliency"])
def test_training_mode_leaves_batchnorm_statistics_as_they_were(resnet, method) -> None:
    """In train mode every forward pass updated BatchNorm's running statistics."""
    model = copy.deepcopy(resnet).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opts = {"layer": "layer4"} if method == "scorecam" else {}
    with pytest.warns(UserWarning, match="training mode"):
        E.attribute(model, torch.rand(2, 3, 32, 32), method, target=[0, 1], **opts)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_smoothgrad_of_a_float16_model(resnet) -> None:
    """captum's float32 noise promoted float16 images: the model refused them."""
    images = torch.rand(2, 3, 32, 32)
    low = copy.deepcopy(resnet).half()
    maps = E.attribute(low, images.half(), "smoothgrad", target=[0, 1], n_samples=2)
    ref = E.attribute(resnet, images, "smoothgrad", target=[0, 1], n_samples=2)
    assert torch.isfinite(maps).all()
    assert (maps.float() - ref).abs().max() < 0.1
