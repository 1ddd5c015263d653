"""Layer discovery: names, shapes, call counts, glob selection and default layer sets."""

from __future__ import annotations

import re
import warnings
from typing import Any

import pytest
import torch
from torch import nn

from viscope.activations import capture
from viscope.errors import ViscopeError
from viscope.invariance import measure
from viscope.models import (
    create,
    default_input_size,
    default_layers,
    layers,
    match_layer,
    select_layers,
    unwrap,
    windowed_modules,
)

FAMILIES: list[tuple[str, dict[str, Any], str]] = [
    ("test_vit", {"img_size": 32}, "blocks.*"),
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4}, "blocks.*"),
    ("test_efficientnet", {}, "blocks.*.*"),
    ("efficientnet_b0", {}, "blocks.*.*"),
    ("resnet18", {}, "layer*.*"),
    ("torchvision:resnet18", {}, "layer*.*"),
    ("test_convnext", {}, "stages.*.blocks.*"),
    ("fastervit_tiny", {}, "patch_embed|levels.*"),
    ("test_byobnet", {}, "feature_info"),
    ("convnext_atto", {}, "stages.*.blocks.*"),
    ("regnetx_002", {}, "feature_info"),
    ("mobilenetv3_small_050", {}, "feature_info"),
]


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    return create("vit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=3)


@pytest.mark.parametrize(
    ("name", "pattern", "expected"),
    [
        ("blocks.0", "blocks.*", True),
        ("blocks.0.attn", "blocks.*", False),
        ("blocks", "blocks.*", False),
        ("blocks.0.attn", "blocks.**", True),
        ("blocks.0.attn.qkv", "**.qkv", True),
        ("qkv", "**.qkv", True),
        ("layer1.0", "layer*.*", True),
        ("layer1.0.conv1", "layer*.*", False),
        ("stages.1.blocks.2", "stages.*.blocks.*", True),
        ("blocks.10", "blocks.[0-9]", False),
        ("layer4.1.bn2", "layer4.1.bn2", True),
    ],
)
def test_match_layer(name: str, pattern: str, expected: bool) -> None:
    assert match_layer(name, pattern) is expected


def test_select_layers_star_does_not_cross_dots(vit: nn.Module) -> None:
    assert select_layers(vit, "blocks.*") == [f"blocks.{i}" for i in range(12)]
    # Network order, each once, however the patterns are ordered or overlap.
    picked = select_layers(vit, ["norm", "blocks.1*", "blocks.1", "patch_embed"])
    assert picked == ["patch_embed", "blocks.1", "blocks.10", "blocks.11", "norm"]
    assert select_layers(vit, None) == select_layers(vit, "default") == default_layers(vit)
    assert select_layers(vit, ["default", "head"])[-1] == "head"


def test_select_layers_no_match_explains(vit: nn.Module) -> None:
    with pytest.raises(ViscopeError) as err:
        select_layers(vit, ["blocks.*", "block.*"])
    message = str(err.value)
    assert message.startswith(
        "Expected layer pattern to match a module of VisionTransformer; got 'block.*'."
    )
    assert "Layers look like: blocks.0, blocks.1, blocks.2, ..." in message
    assert "--model vit_tiny_patch16_224" in message
    assert "Did you mean 'blocks.*'?" in message and "blocks.5" not in message


@pytest.mark.parametrize(
    ("name", "kwargs", "pattern", "meant"),
    [
        ("test_vit", {"img_size": 32}, "block.*", "blocks.*"),
        ("test_vit", {"img_size": 32}, "blocks.*.atn", "blocks.*.attn"),
        ("resnet18", {}, "layr1.*", "layer1.*"),
        ("resnet18", {}, "layers*.*", "layer*.*"),
        ("resnet18", {}, "layer*.0.conv", "layer*.0.conv2"),
        ("resnet18", {}, "**.donwsample", "**.downsample"),
    ],
)
def test_a_glob_that_matches_nothing_suggests_the_glob_meant(
    name: str, kwargs: dict[str, Any], pattern: str, meant: str
) -> None:
    model = create(name, **kwargs)
    with pytest.raises(ViscopeError, match=rf"got {re.escape(repr(pattern))}\. Did you mean "
                       rf"{re.escape(repr(meant))}\? Layers look like: "):
        select_layers(model, pattern)
    assert select_layers(model, meant)  # the suggestion is a pattern that works


def test_no_glob_repair_falls_back_to_close_names() -> None:
    model = create("resnet18")
    with pytest.raises(ViscopeError, match=r"got 'zzz\*'\. Layers look like: layer1\.0"):
        select_layers(model, "zzz*")
    with pytest.raises(ViscopeError, match=r"Did you mean 'layer1\.0\.conv\d'"):
        select_layers(model, "layer1.0.convv")  # no glob: names are suggested, as before


def test_vit_token_shapes_and_forward_order(vit: nn.Module) -> None:
    info = {i.name: i for i in layers(vit)}
    net = unwrap(vit)
    rows, cols = net.patch_embed.grid_size
    tokens = net.num_prefix_tokens + rows * cols
    assert (rows, cols) == (8, 8) and tokens == 65
    for i in range(12):
        assert info[f"blocks.{i}"].output_shape == (tokens, 192)
        assert info[f"blocks.{i}"].per_sample and info[f"blocks.{i}"].calls == 1
    assert info["head"].output_shape == (3,)
    assert info["blocks.0.mlp.fc1"].output_shape == (tokens, 4 * 192)
    order = [i.name for i in layers(vit)]
    assert order.index("patch_embed") < order.index("blocks.0") < order.index("blocks.0.attn")
    assert order.index("blocks.0.attn") < order.index("blocks.1") < order.index("head")


class _Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.late = nn.Conv2d(2, 2, 1)
        self.unused = nn.Linear(2, 2)
        self.early = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.late(self.early(x))


def test_call_order_counts_and_unused_modules() -> None:
    order = layers(create("torchvision:resnet18"), (3, 32, 32))
    info = {i.name: i for i in order}
    # torchvision's BasicBlock applies its one ReLU module twice: one entry per call, in
    # the order the calls run (after bn1, then after the residual sum).
    assert "layer1.0.relu" not in info
    assert info["layer1.0.relu@0"].calls == info["layer1.0.relu@1"].calls == 2
    assert info["layer1.0.relu@1"].module == "layer1.0.relu"
    names = [i.name for i in order]
    assert names.index("layer1.0.bn1") < names.index("layer1.0.relu@0")
    assert names.index("layer1.0.relu@0") < names.index("layer1.0.conv2")
    assert names.index("layer1.0.bn2") < names.index("layer1.0.relu@1")
    assert names.index("layer1.0.relu@1") < names.index("layer1.1")
    assert info["layer1.0.conv1"].calls == 1 and info["relu"].calls == 1
    assert info["layer2.0.downsample"].output_shape == (128, 4, 4)
    order = layers(_Unused(), (3, 4, 4))
    assert [i.name for i in order] == ["early", "late", "unused"]
    assert order[-1].calls == 0 and order[-1].output_shape is None
    assert not order[-1].per_sample


def _all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("train", [True, False])
def test_layers_leaves_no_trace(train: bool) -> None:
    model = create("resnet18", num_classes=3)
    model.train(train)
    model.net.layer2.eval()  # a mixed mode must come back as it was
    modes = {n: m.training for n, m in model.named_modules()}
    before = _snapshot(model)
    layers(model, (3, 32, 32))
    assert _all_hooks(model) == 0
    assert {n: m.training for n, m in model.named_modules()} == modes
    after = _snapshot(model)  # BatchNorm running stats included
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_failing_dry_run_is_a_user_error_and_leaves_no_trace() -> None:
    model = create("fastervit_tiny").train()
    with pytest.raises(ViscopeError, match=r"FasterViT to accept images of size \(3, 48, 48\)"):
        layers(model, (3, 48, 48))
    assert _all_hooks(model) == 0 and model.training
    with pytest.raises(ViscopeError, match=r"Expected images \(B, 3, H, W\)"):
        layers(model, (1, 32, 32))
    assert _all_hooks(model) == 0 and model.training


def test_default_input_size() -> None:
    assert default_input_size(create("test_vit", img_size=32)) == (3, 32, 32)
    assert default_input_size(create("fastervit_tiny", resolution=64)) == (3, 64, 64)
    assert default_input_size(create("resnet18", in_chans=1)) == (1, 224, 224)
    assert default_input_size(nn.Sequential(nn.Conv2d(5, 2, 1))) == (5, 224, 224)


def _capture(model: nn.Module, names: list[str], size: tuple[int, ...], batch: int) -> dict:
    modules = dict(unwrap(model).named_modules())
    out: dict[str, Any] = {}
    handles = [
        modules[n].register_forward_hook(lambda m, i, o, n=n: out.setdefault(n, o)) for n in names
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.rand(batch, *size))
    finally:
        for h in handles:
            h.remove()
    return out


@pytest.mark.parametrize(("name", "kwargs", "family"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_default_layers_are_per_sample(name: str, kwargs: dict[str, Any], family: str) -> None:
    model = create(name, num_classes=3, **kwargs)
    size = (3, 32, 32)
    defaults = default_layers(model, size)
    assert len(defaults) >= 3
    if family == "feature_info":
        assert defaults == [f["module"] for f in unwrap(model).feature_info]
    else:
        assert defaults == select_layers(model, family.split("|"), input_size=size)
    outputs = _capture(model, defaults, size, batch=3)
    for layer in defaults:
        assert torch.is_tensor(outputs[layer]), layer
        assert outputs[layer].shape[0] == 3, layer
    # measure() takes every default layer: none refused, none skipped.
    data = torch.utils.data.TensorDataset(torch.rand(2, *size), torch.zeros(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = measure(model, data, "brightness", samples=2, params=2)
    assert result.layers == defaults


def test_fallback_keeps_only_per_sample_leaves() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    net(torch.zeros(1, 3, 8, 8))  # materialise the lazy layer
    assert default_layers(net, (3, 8, 8)) == ["0", "3"]


@pytest.mark.parametrize(("name", "size", "expected"), [
    ("pit_ti_224", 64, "patch_embed.conv"),  # feature_info names token-pooling stages only
    ("torchvision:vit_b_16", None, "encoder.layers.encoder_layer_0"),
    ("torchvision:convnext_tiny", 32, "features.0"),
])
def test_default_layers_where_feature_info_gives_none_or_torchvision(name, size, expected):
    """Models whose timm feature_info names no per-sample module fall back to their
    convolutions and linears; torchvision's ViT measures its encoder blocks and the models
    built on a `features` Sequential its stages — and measure() takes them all."""
    kwargs = {"image_size": 32} if name.endswith("vit_b_16") else (
        {"img_size": 64} if name.startswith("pit") else {})
    model = create(name, num_classes=3, **kwargs)
    shape = (3, size or 32, size or 32)
    defaults = default_layers(model, shape)
    assert defaults and defaults[0] == expected
    data = torch.utils.data.TensorDataset(torch.rand(2, *shape), torch.zeros(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = measure(model, data, "brightness", samples=2, params=2, layers=None)
    assert result.layers == defaults


def test_fastervit_windowed_modules_are_not_per_sample() -> None:
    model = create("fastervit_tiny", num_classes=3)
    info = {i.name: i for i in layers(model, (3, 32, 32))}
    windowed = windowed_modules(unwrap(model))
    assert {"levels.2.blocks.0", "levels.2.blocks.0.attn", "levels.3.blocks.0.mlp"} <= windowed
    assert not any(n.startswith("levels.2.blocks.0.hat_") for n in windowed)
    # 4 × 4 map in 2 × 2 windows: dim 0 = 2 samples × 4 windows; attention sees 4 + 1 tokens.
    assert info["levels.2.blocks.0.attn"].output_shape == (5, 64)
    assert not info["levels.2.blocks.0.attn"].per_sample
    # A single window: dim 0 equals the batch, yet the output is windowed.
    assert not info["levels.3.blocks.0.norm1"].per_sample
    # Carrier tokens are per sample: 4 of them per image.
    assert info["levels.2.blocks.0.hat_attn"].output_shape == (4, 64)
    assert info["levels.2.blocks.0.hat_attn"].per_sample
    # Blocks return tuples; levels return feature maps.
    assert not info["levels.0.blocks.0"].per_sample
    assert info["levels.2"].output_shape == (128, 2, 2) and info["levels.2"].per_sample


# -- modules that run several times: addressed per call (``name@k``) ------------------------

SIZE = (3, 32, 32)


@pytest.fixture(scope="module")
def tv_resnet() -> nn.Module:
    return create("torchvision:resnet18", num_classes=3)


def reused_block_resnet() -> nn.Module:
    """timm's resnet18 with ``layer1.1`` replaced by ``layer1.0`` (weights shared): the
    block runs twice per forward pass, and ``named_modules`` lists it once."""
    model = create("resnet18", num_classes=3)
    net = unwrap(model)
    net.layer1[1] = net.layer1[0]
    return model


def test_a_call_address_selects_that_call(tv_resnet: nn.Module) -> None:
    # The tap's own refusal tells the user to pass 'layer1.0.relu@0'; it must be accepted.
    assert select_layers(tv_resnet, "layer1.0.relu@1", input_size=SIZE) == ["layer1.0.relu@1"]
    picked = select_layers(tv_resnet, ["layer1.0.relu@1", "layer1.0.relu@0", "layer1.0.conv1"],
                           input_size=SIZE)
    assert picked == ["layer1.0.conv1", "layer1.0.relu@0", "layer1.0.relu@1"]
    assert select_layers(tv_resnet, "layer*.0.relu@1", input_size=SIZE) == [
        f"layer{i}.0.relu@1" for i in range(1, 5)]


def test_a_glob_or_name_that_reaches_a_reused_module_gives_each_call(tv_resnet) -> None:
    assert select_layers(tv_resnet, "layer1.0.*", input_size=SIZE) == [
        "layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu@0", "layer1.0.relu@1",
        "layer1.0.conv2", "layer1.0.bn2"]
    # A plain name is a pattern like any other: every call of the module, in order.
    assert select_layers(tv_resnet, "layer1.0.relu", input_size=SIZE) == [
        "layer1.0.relu@0", "layer1.0.relu@1"]
    assert select_layers(tv_resnet, "relu", input_size=SIZE) == ["relu"]  # runs once
    # Every selected address is one the tap accepts: capture() refuses none of them.
    names = select_layers(tv_resnet, "layer1.*.*", input_size=SIZE)
    acts, records = capture(tv_resnet, torch.rand(2, *SIZE), names)
    assert set(acts) == set(names) and all(r.captured for r in records.values())


def test_a_call_that_never_happens_is_refused_with_the_calls_listed(tv_resnet) -> None:
    with pytest.raises(ViscopeError, match=r"got 'layer1\.0\.relu@2'.*runs 2 times.*"
                       r"'layer1\.0\.relu@0', 'layer1\.0\.relu@1'"):
        select_layers(tv_resnet, "layer1.0.relu@2", input_size=SIZE)
    with pytest.raises(ViscopeError, match=r"got 'layer1\.0\.conv1@1'.*runs once.*"
                       r"'layer1\.0\.conv1'"):
        select_layers(tv_resnet, "layer1.0.conv1@1", input_size=SIZE)
    with pytest.raises(ViscopeError, match=r"got 'layer1\.0\.rleu@1'\. Did you mean "
                       r"'layer1\.0\.relu@1'"):
        select_layers(tv_resnet, "layer1.0.rleu@1", input_size=SIZE)


def test_defaults_of_a_model_with_a_reused_block_give_each_call() -> None:
    model = reused_block_resnet()
    defaults = default_layers(model, SIZE)
    assert defaults[:3] == ["layer1.0@0", "layer1.0@1", "layer2.0"]
    acts, _ = capture(model, torch.rand(2, *SIZE), defaults)  # nothing refused
    assert set(acts) == set(defaults)


def test_list_layers_cli_shows_and_filters_each_call(capsys) -> None:
    from viscope.cli import main

    main(["list", "layers", "--model", "torchvision:resnet18", "--pattern", "layer1.0.relu@1"])
    out = capsys.readouterr().out
    assert "layer1.0.relu@1" in out and "layer1.0.relu@0" not in out
    main(["list", "layers", "--model", "torchvision:resnet18", "--pattern", "layer1.0.*"])
    out = capsys.readouterr().out
    assert "layer1.0.relu@0" in out and "layer1.0.relu@1" in out and "layer1.0.bn2" in out


# -- the dry pass runs at the size that will be measured ---------------------------------


@pytest.mark.parametrize("name", ["regnetx_002", "resnet18"])  # no built-in pattern / one
def test_default_layers_probe_at_the_measured_size(name: str) -> None:
    model = create(name, num_classes=3)
    seen: list[tuple[int, ...]] = []
    handle = unwrap(model).register_forward_pre_hook(
        lambda module, args: seen.append(tuple(args[0].shape[1:])))
    try:
        data = torch.utils.data.TensorDataset(torch.rand(2, 3, 40, 40), torch.zeros(2))
        result = measure(model, data, "brightness", samples=2, params=2)
        assert set(seen) == {(3, 40, 40)}  # not the model's default 224 px
        seen.clear()
        assert select_layers(model, None, input_size=(3, 48, 48)) == result.layers
        assert set(seen) == {(3, 48, 48)}
    finally:
        handle.remove()
