"""CAMs equal pytorch-grad-cam's on the same model, layer and targets.

Conventions compared: grad-cam clips negatives, min-max scales at the layer's resolution,
resizes with ``cv2.resize`` (bilinear, half-pixel centres) and min-max scales again; ours
clips, upsamples with ``F.interpolate(bilinear, align_corners=False)`` (the same
interpolation) and min-max scales once. Min-max scaling is affine and bilinear resizing
commutes with affine maps, so the results agree up to the epsilons. Eigen-CAM is compared
at the layer's resolution up to sign: SVD's sign is arbitrary and grad-cam keeps LAPACK's,
while we make the largest-magnitude value positive.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch import nn

import viscope.explain as E

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection  # noqa: E402

REFERENCE = {
    "gradcam": pgc.GradCAM,
    "gradcam++": pgc.GradCAMPlusPlus,
    "xgradcam": pgc.XGradCAM,
    "layercam": pgc.LayerCAM,
    "hirescam": pgc.HiResCAM,
}


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    """timm resnet18, random weights, out-of-place ReLUs, eval mode, float64.

    ``zero_init_last=False``: timm zeroes each block's last BatchNorm, which would make
    ``bn2`` outputs identically zero.
    """
    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=6, zero_init_last=False)
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return net.double().eval()


@pytest.mark.parametrize("method", sorted(REFERENCE))
@pytest.mark.parametrize("layer", ["layer4", "layer3", "layer3.1.conv2"])
def test_cam_equals_grad_cam(resnet: nn.Module, method: str, layer: str) -> None:
    images = torch.rand(3, 3, 96, 128, dtype=torch.float64)
    classes = [0, 3, 5]
    ours = E.attribute(resnet, images, method, layer=layer, target=classes)
    assert all(p.grad is None for p in resnet.parameters())
    with REFERENCE[method](resnet, [resnet.get_submodule(layer)]) as cam:
        ref = cam(images, [ClassifierOutputTarget(c) for c in classes])
    resnet.zero_grad(set_to_none=True)  # grad-cam back-propagates into every parameter
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4, atol=1e-5)


def test_eigencam_equals_grad_cam_projection(resnet: nn.Module) -> None:
    images = torch.rand(2, 3, 128, 128, dtype=torch.float64)
    with E.LayerTap(resnet, "layer4", grad=False) as tap, torch.no_grad():
        resnet(images)
    acts = tap.require()
    ours = E.EigenCAM().combine(acts, None).numpy()
    ref = get_2d_projection(acts.numpy())
    for a, b in zip(ours, ref, strict=True):
        sign = np.sign((a * b).sum())
        np.testing.assert_allclose(a, sign * b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


def test_grad_cam_stores_activations_that_in_place_ops_overwrite(resnet: nn.Module) -> None:
    """Where grad-cam is wrong: after ``bn2`` timm adds the shortcut in place (``x +=``),
    and grad-cam's stored activation (a detached view, not a copy) becomes the sum."""
    images = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    with E.LayerTap(resnet, "layer3.1.bn2", grad=False) as tap, torch.no_grad():
        resnet(images)
    bn2 = resnet.layer3[1].bn2
    kept: list[torch.Tensor] = []
    handle = bn2.register_forward_hook(lambda m, i, o: kept.append(o.clone()))
    try:
        with torch.no_grad():
            resnet(images)
    finally:
        handle.remove()
    truth = kept[0]
    torch.testing.assert_close(tap.require(), truth)
    store = pgc.activations_and_gradients.ActivationsAndGradients(resnet, [bn2], None)
    try:
        with torch.no_grad():
            store(images)
        stored = store.activations[0].clone()
    finally:
        store.release()
    assert not torch.allclose(stored, truth)


def test_scorecam_equals_grad_cam() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2, padding=1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4),
    ).double().eval()
    images = torch.rand(2, 3, 24, 24, dtype=torch.float64)
    ours = E.attribute(net, images, "scorecam", layer="2", target=[1, 2], batch_size=7,
                        align_corners=True)  # grad-cam's UpsamplingBilinear2d
    with pgc.ScoreCAM(net, [net[2]]) as cam:
        ref = cam(images, [ClassifierOutputTarget(c) for c in (1, 2)])
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4, atol=1e-5)
