"""torchvision models: layer="auto" and their CAMs (defect 12 of issue 11).

Auto picked swin_t's ``features.0.0`` (the stride-4 patch embedding), vit_b_16's
``conv_proj`` (every token layer was refused) and a depthwise convolution inside
convnext_tiny's last block. Small configurations of the same classes keep this fast.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.convnext import CNBlockConfig

import viscope.explain as E

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


def _vit() -> nn.Module:
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=5)
    nn.init.normal_(vit.heads.head.weight)  # torchvision zero-initialises the head
    return vit.eval()


def _swin() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.SwinTransformer(
        [4, 4], 16, [1, 1, 1, 1], [1, 1, 1, 1], [2, 2], num_classes=5).eval()


def _convnext() -> nn.Module:
    torch.manual_seed(0)
    setting = [CNBlockConfig(8, 16, 1), CNBlockConfig(16, 24, 1), CNBlockConfig(24, 32, 1),
               CNBlockConfig(32, None, 1)]
    return torchvision.models.ConvNeXt(setting, num_classes=5).eval()


@pytest.mark.parametrize(("build", "size", "expected"), [
    (_vit, 32, "encoder.layers.encoder_layer_1.ln_1"),
    (_swin, 64, "features.5"),  # stage 3: 4 x 4 (stage 4, features.7, is 2 x 2)
    (_swin, 128, "features.7"),
    (_convnext, 32, "features.3"),  # stage 2 at stride 8: 4 x 4
    (_convnext, 64, "features.5"),
])
def test_auto_is_the_last_block_norm_or_the_deepest_stage(build, size, expected) -> None:
    assert E.auto_layer(build(), (size, size)) == expected


@pytest.mark.parametrize("build", [_vit, _swin, _convnext])
def test_auto_maps_are_finite_and_not_empty(build) -> None:
    model = build()
    size = 32 if build is _vit else 64
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no empty or constant map
        for method in ("gradcam", "layercam", "eigencam"):
            maps = E.attribute(model, images, method, target=[0, 1])
            assert maps.shape == (2, size, size) and torch.isfinite(maps).all()


@pytest.mark.parametrize("method", ["gradcam", "layercam", "hirescam"])
def test_torchvision_vit_cam_equals_grad_cam_with_a_reshape_transform(method) -> None:
    model = _vit().double()
    layer = "encoder.layers.encoder_layer_1.ln_1"
    images = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    classes = [0, 3, 4]
    ours = E.attribute(model, images, method, layer="auto", target=classes)

    def tokens_to_grid(t: torch.Tensor) -> torch.Tensor:  # drop the class token, 4 x 4
        return t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    reference = {"gradcam": pgc.GradCAM, "layercam": pgc.LayerCAM, "hirescam": pgc.HiResCAM}
    with reference[method](model, [model.get_submodule(layer)],
                           reshape_transform=tokens_to_grid) as cam:
        ref = cam(images, [ClassifierOutputTarget(c) for c in classes])
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4, atol=1e-6)


def test_torchvision_swin_cam_equals_grad_cam_with_a_permute() -> None:
    model = _swin().double()
    images = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    ours = E.attribute(model, images, "gradcam", layer="features.5", target=[1, 2])
    with pgc.GradCAM(model, [model.features[5]],
                     reshape_transform=lambda t: t.permute(0, 3, 1, 2)) as cam:
        ref = cam(images, [ClassifierOutputTarget(c) for c in (1, 2)])
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "expected"), [
    ("swin_t", "features.7"), ("convnext_tiny", "features.7"),
    ("vit_b_16", "encoder.layers.encoder_layer_11.ln_1"),
])
def test_full_size_torchvision_models_at_224_px(name, expected) -> None:
    model = getattr(torchvision.models, name)(num_classes=5).eval()
    assert E.auto_layer(model, (224, 224)) == expected
