"""Every public function of viscope.explain and viscope.evaluate leaves the model as it found
it: weights, buffers, train/eval mode per module, hooks, requires_grad and .grad.

The model is in train mode (BatchNorm would update its running statistics: deletion_auc,
insertion_auc, road, peds and model_randomization changed all 60 buffers of resnet18),
with one submodule in eval mode, a frozen parameter, a parameter holding a .grad and a
hook of the user's. The list below is checked against both packages' ``__all__``, so a
new public function must say how it is called here (or that it takes no model).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import timm
import torch
from torch import nn

import viscope.evaluate as V
import viscope.explain as E
import viscope.models as M

FAST = {"rise": {"n_masks": 32, "chunk": 16}, "cbrise": {"max_masks": 32, "chunk": 16},
        "integrated_gradients": {"n_steps": 4}, "smoothgrad": {"n_samples": 2},
        "scorecam": {"batch_size": 64, "layer": "layer1"},
        "occlusion": {"window": 8, "stride": 8}}
MAPS = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(0))
TARGET = [1, 3]


def _target() -> E.Target:
    return E.resolve_target(TARGET, 2)


CALLS: dict[str, Callable[[nn.Module, torch.Tensor], object]] = {
    **{f"attribute[{m}]": (lambda model, x, m=m: E.attribute(model, x, m, target=TARGET,
                                                            **FAST.get(m, {})))
       for m in E.list_methods() if m != "rollout"},
    "attention_rollout": lambda vit, x: E.attention_rollout(vit, x, _target()),
    "attribute[rollout]": lambda vit, x: E.attribute(vit, x, "rollout", target=TARGET),
    "rise": lambda model, x: E.rise(model, x, _target(), n_masks=32, chunk=16),
    "cbrise": lambda model, x: E.cbrise(model, x, _target(), max_masks=32, chunk=16),
    "auto_layer": lambda model, x: E.auto_layer(model, x.shape[-2:]),
    "GradCAM": lambda model, x: E.GradCAM()(model, x, _target(), "layer3"),
    "GradCAMPlusPlus": lambda model, x: E.GradCAMPlusPlus()(model, x, _target(), "layer3"),
    "XGradCAM": lambda model, x: E.XGradCAM()(model, x, _target(), "layer3"),
    "LayerCAM": lambda model, x: E.LayerCAM()(model, x, _target(), "layer3"),
    "HiResCAM": lambda model, x: E.HiResCAM()(model, x, _target(), "layer3"),
    "EigenCAM": lambda model, x: E.EigenCAM()(model, x, _target(), "layer3"),
    "ScoreCAM": lambda model, x: E.ScoreCAM()(model, x, _target(), "layer1"),
    "Target.fix": lambda model, x: E.resolve_target(None, 2).fix(model, x),
    "deletion_curve": lambda model, x: V.deletion_curve(model, x, MAPS, TARGET, steps=3),
    "deletion_auc": lambda model, x: V.deletion_auc(model, x, MAPS, TARGET, steps=3),
    "insertion_auc": lambda model, x: V.insertion_auc(model, x, MAPS, TARGET, steps=3),
    "road": lambda model, x: V.road(model, x, MAPS, TARGET, fractions=(0.5,)),
    "peds": lambda model, x: V.peds(model, x, MAPS, TARGET, max_steps=2),
    "explanation_invariance": lambda model, x: V.explanation_invariance(
        model, [(img, 0) for img in x], "rotation", samples=2, params=2, layer="layer3"),
    "equivariance_cell": lambda model, x: V.equivariance_cell(
        model, [(img, 0) for img in x], "brightness", "gradcam", samples=2, params=2,
        layer="layer3"),
    "model_randomization": lambda model, x: V.model_randomization(
        model, x, "gradcam", None, layer="layer3", layers=["fc", "layer4", "conv1"]),
}
# public names that take no model (maps, masks, images or names only), or a class whose
# instances are called above (CAM, Target, LayerTap: used by the CAMs themselves)
NO_MODEL = {"CAM", "ExplanationEquivariance", "LayerTap", "METHODS", "Method", "RegionTarget",
            "Target", "list_methods",
            "normalize_maps", "perturbation_baseline", "resolve_target", "rise_masks",
            "to_grid", "dice", "energy_pointing_game", "iou", "noisy_linear_impute",
            "pointing_game", "spearman"}


def test_every_public_function_is_listed() -> None:
    called = {name.split("[")[0].split(".")[0] for name in CALLS}
    assert set(E.__all__) | set(V.__all__) == called | NO_MODEL


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "modes": {n: m.training for n, m in model.named_modules()},
        "hooks": {n: (len(m._forward_hooks), len(m._forward_pre_hooks),
                      len(m._backward_hooks), len(getattr(m, "_backward_pre_hooks", {})))
                  for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad": {n: None if p.grad is None else p.grad.clone()
                 for n, p in model.named_parameters()},
    }


def _assert_same(before: dict, after: dict) -> None:
    changed = [k for k, v in after["state"].items() if not torch.equal(v, before["state"][k])]
    assert not changed, f"{len(changed)} tensors changed, e.g. {changed[:3]}"
    for key in ("modes", "hooks", "requires_grad"):
        assert after[key] == before[key], key
    for n, g in after["grad"].items():
        ref = before["grad"][n]
        assert (g is None and ref is None) or torch.equal(g, ref), n


def _user_state(model: nn.Module, eval_part: nn.Module, frozen: nn.Parameter,
                with_grad: nn.Parameter) -> nn.Module:
    model.train()
    eval_part.eval()
    frozen.requires_grad_(False)
    with_grad.grad = torch.full_like(with_grad, 0.25)
    model.register_forward_hook(lambda m, i, o: None)
    return model


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    model = M.create("resnet18", num_classes=4, zero_init_last=False)
    net = M.unwrap(model)
    return _user_state(model, net.layer2, net.conv1.weight, net.fc.bias)


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2,
                              num_classes=4, drop_rate=0.1)
    return _user_state(model, model.blocks[0], model.cls_token, model.head.bias)


@pytest.mark.parametrize(("name", "call"), sorted(CALLS.items()), ids=sorted(CALLS))
def test_the_model_is_left_as_it_was_found(name, call, resnet, vit) -> None:
    model = vit if "rollout" in name else resnet
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    before = _snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # train mode; empty maps
        call(model, images)
    _assert_same(before, _snapshot(model))
