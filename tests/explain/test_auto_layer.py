"""layer="auto" at the images' size, 1×1 layers and constant maps (defect 7 of issue 11).

At 32 px, auto picked test_resnet/resnet18 ``layer4`` and test_efficientnet ``blocks.4``:
1×1 grids, whose upsampled constant (±1 ulp) was min-max scaled into maps reaching
0.57-0.70 with three distinct values.
"""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import viscope.data
import viscope.explain as E
import viscope.models as M
from viscope.explain.api import normalize_maps
from viscope.explain.layer_choice import MIN_GRID


def _grids(model: nn.Module, names: list[str], hw: tuple[int, int]) -> dict[str, tuple]:
    """Each module's output (h, w) by plain forward hooks (NCHW modules only)."""
    net = M.unwrap(model)
    shapes: dict[str, tuple] = {}

    def keep(name: str):
        def hook(module, args, output) -> None:
            shapes.setdefault(name, tuple(output.shape[-2:]))
        return hook

    hooks = [net.get_submodule(n).register_forward_hook(keep(n)) for n in names]
    try:
        with torch.no_grad():
            model(torch.rand(2, 3, *hw))
    finally:
        for h in hooks:
            h.remove()
    return shapes


@pytest.mark.parametrize(("build", "size", "expected", "deeper"), [
    (lambda: M.create("test_resnet", num_classes=5), 32, "layer2", "layer3"),
    (lambda: M.create("test_efficientnet", num_classes=5), 32, "blocks.2", "blocks.3"),
    (lambda: M.create("resnet18", num_classes=5), 32, "layer2", "layer3"),
    (lambda: M.create("resnet18", num_classes=5), 64, "layer3", "layer4"),
    (lambda: M.create("resnet18", num_classes=5), 224, "layer4", None),
    (lambda: M.create("test_efficientnet", num_classes=5), 48, "blocks.2", "blocks.3"),
    (lambda: timm.create_model("convnext_atto", num_classes=5), 32, "stages.1", "stages.2"),
    (lambda: timm.create_model("mobilenetv3_small_050", num_classes=5), 32, "blocks.1",
     "blocks.3"),
    (lambda: torchvision.models.resnet18(num_classes=5), 32, "layer2", "layer3"),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, 2, 1),
                           nn.Conv2d(4, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 2, 1),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)),
     16, "2", "3"),
])
def test_auto_is_the_deepest_layer_with_a_large_enough_grid(build, size, expected,
                                                            deeper) -> None:
    model = build().eval()
    assert E.auto_layer(model, (size, size)) == expected
    grids = _grids(model, [n for n in (expected, deeper) if n], (size, size))
    assert min(grids[expected]) >= MIN_GRID  # brute force: hooks on the real forward
    if deeper is not None:
        assert min(grids[deeper]) < MIN_GRID


def test_auto_without_a_size_is_the_models_own_size() -> None:
    assert E.auto_layer(M.create("resnet18")) == "layer4"  # 224 px: 7 x 7


def test_the_dry_pass_leaves_a_train_mode_model_as_it_was() -> None:
    model = torchvision.models.resnet18(num_classes=5).train()
    model.layer2.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {n: m.training for n, m in model.named_modules()}
    rng = torch.get_rng_state()
    assert E.auto_layer(model, (32, 32)) == "layer2"
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


@pytest.mark.parametrize("normalize", [True, False])
def test_an_explicit_1x1_layer_gives_zero_maps_and_one_warning(normalize) -> None:
    model = M.create("test_resnet", num_classes=5).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        maps = E.attribute(model, torch.rand(2, 3, 32, 32), "gradcam", layer="layer4",
                           target=[0, 1], normalize=normalize)
    assert torch.equal(maps, torch.zeros(2, 32, 32))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "1x1 grid" in message and "layer='layer2'" in message
    assert caught[0].filename == __file__  # blames the caller's line


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normalisation_treats_rounding_noise_as_constant(dtype) -> None:
    """The bilinear upsampling of a constant 1x1 map, and a map 1-2 ulp apart."""
    const = torch.full((3, 1, 1, 1), 0.0, dtype=dtype)
    const[:, 0, 0, 0] = torch.tensor([0.3, 7.1, 1234.5], dtype=dtype)
    up = F.interpolate(const.expand(3, 1, 2, 2), size=(32, 32), mode="bilinear",
                       align_corners=False)[:, 0]
    eps = torch.finfo(dtype).eps
    up[0, 5, 5] *= 1 + eps  # one ulp up
    up[1, 7, 9] *= 1 - 2 * eps
    assert torch.equal(normalize_maps(up), torch.zeros(3, 32, 32, dtype=dtype))
    real = up.clone()
    real[:, 3, 4] *= 1 + 1e-3 if dtype == torch.float32 else 1 + 1e-12
    out = normalize_maps(real)
    assert torch.equal(out.amax(dim=(1, 2)), torch.ones(3, dtype=dtype))
    assert (out[:, 3, 4] == 1).all() and (out.flatten(1) == 1).sum(1).eq(1).all()


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])
def test_auto_maps_at_32_px_are_not_constant(name) -> None:
    """The README's example at 32 px: the auto map must vary (the 1x1 map had 3 values)."""
    torch.manual_seed(0)
    model = M.create(name, num_classes=5).eval()
    ds = viscope.data.create("shapes", split="test")
    images = torch.stack([ds[i][0] for i in range(4)])
    maps = E.attribute(model, images, "gradcam", layer="auto", target=[0, 1, 2, 3])
    for m in maps:
        assert len(torch.unique(m)) > 10 and float(m.std()) > 0.05
