"""attribute(): options a method does not take are a ViscopeError naming the ones it does."""

from __future__ import annotations

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


@pytest.mark.parametrize(("method", "options", "message"), [
    ("gradcam", {"n_masks": 10}, "Method 'gradcam' takes no option 'n_masks'; it has no options"),
    ("scorecam", {"n_masks": 10},
     "Method 'scorecam' takes no option 'n_masks'; its options are: batch_size, align_corners."),
    ("rise", {"n_mask": 8, "windw": 3},
     "Method 'rise' takes no options 'n_mask', 'windw'; its options are: n_masks, cells, p, "
     "baseline, batch_size, chunk, seed, estimator."),
    ("occlusion", {"n_steps": 4},
     "Method 'occlusion' takes no option 'n_steps'; its options are: window, stride, baseline, "
     "batch_size."),
    ("saliency", {"stdev": 0.1}, "Method 'saliency' takes no option 'stdev'; it has no options"),
])
def test_unknown_option_names_the_methods_options(resnet, method, options, message) -> None:
    """These raised TypeError from deep inside (e.g. 'GradCAM() takes no arguments')."""
    with pytest.raises(ViscopeError) as err:
        E.attribute(resnet, torch.rand(1, 3, 32, 32), method, **options)
    assert str(err.value).startswith(message)


def test_every_registered_option_is_a_parameter_of_the_method() -> None:
    expected = {"scorecam": ("batch_size", "align_corners"), "gradcam": (),
                "rollout": ("head_fusion", "residual", "discard_ratio"),
                "integrated_gradients": ("n_steps", "baseline", "method", "internal_batch_size")}
    for name, options in expected.items():
        assert E.METHODS.get(name).options == options


def test_valid_options_still_reach_the_method(resnet) -> None:
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    kw = {"target": [1, 2], "normalize": False}
    a = E.attribute(resnet, images, "rise", n_masks=32, chunk=16, seed=1, **kw)
    b = E.attribute(resnet, images, "rise", n_masks=32, chunk=16, seed=2, **kw)
    assert not torch.allclose(a, b)  # the seed was used
    small = E.attribute(resnet, images, "occlusion", window=4, stride=4, **kw)
    large = E.attribute(resnet, images, "occlusion", window=16, stride=8, **kw)
    assert not torch.allclose(small, large)
    # a CAM class's options reach its constructor: the batch size changes only the passes
    cam = E.attribute(resnet, images, "scorecam", layer="layer1", batch_size=64, **kw)
    torch.testing.assert_close(
        E.attribute(resnet, images, "scorecam", layer="layer1", batch_size=7, **kw), cam)
    corners = E.attribute(resnet, images, "scorecam", layer="layer1", align_corners=True, **kw)
    assert not torch.allclose(corners, cam)


def test_a_method_registered_without_options_is_not_checked(resnet, monkeypatch) -> None:
    def flat(model, images, target, layer, **options):
        return torch.full((images.shape[0], 2, 2), float(options["level"]))

    # a Method built without ``options`` (a user's own) accepts any keyword
    monkeypatch.setitem(E.METHODS._items, "_test_any", E.Method(flat, False, "test"))
    maps = E.attribute(resnet, torch.rand(1, 3, 8, 8), "_test_any", normalize=False, level=3)
    assert torch.equal(maps, torch.full((1, 8, 8), 3.0))
