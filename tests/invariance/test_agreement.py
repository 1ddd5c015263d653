"""measure() against an independent brute force, model family by model family.

The brute force shares nothing with viscope's engine or tap: plain forward hooks that
clone every call's output, the whole N samples x M transformations grid held as one
array, and the Normalized Variance written with NumPy (Quiroga et al. 2023, as in
tmeasures): TV = mean over samples of the std over transformations, SV = mean over
transformations of the std over samples (ddof 1), NV = TV / SV with 0/0 -> 1 and
x/0 -> inf, and a layer's value the mean of its finite NV. Models run in float64, so
that the two sides' different batch compositions cannot move the numbers: they agree
to 1e-9 (measured: 4e-16 per layer, 1e-14 per unit).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.utils.data import TensorDataset

from viscope.invariance import InvarianceResult, measure
from viscope.models import create, default_layers, unwrap

SIZE = 32

#: Transformations as plain callables, applied by the brute force itself.
CALLABLES = [
    lambda x: x,
    lambda x: (x * 1.3).clamp(0, 1),
    lambda x: torch.flip(x, dims=(-1,)),
    lambda x: torch.roll(x, 3, dims=-1),
]


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, SIZE, SIZE, generator=g, dtype=torch.float64)


def hooked_calls(model: nn.Module, x: torch.Tensor, modules: set[str]) -> dict[str, list]:
    """Every call's output of each module of ``model``'s network, cloned when it is
    produced (plain hooks), in one forward pass of ``model`` (its own normalisation)."""
    found = dict(unwrap(model).named_modules())
    out: dict[str, list[torch.Tensor]] = defaultdict(list)

    def keep(name: str):
        def hook(module, args, output):
            first = output if torch.is_tensor(output) else output[0]
            out[name].append(first.detach().clone())

        return hook

    handles = [found[m].register_forward_hook(keep(m)) for m in modules]
    model.eval()  # as measure() runs it
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return out


def brute_grid(net: nn.Module, x: torch.Tensor, layers: list[str]) -> dict[str, np.ndarray]:
    """The (N, M, units...) float64 activation array of each layer (``name@k``: the k-th
    call of module ``name``)."""
    n, m = x.shape[0], len(CALLABLES)
    grid = torch.stack([f(x) for f in CALLABLES], 1).flatten(0, 1)  # sample-major
    where = {layer: layer.split("@") if "@" in layer else (layer, "0") for layer in layers}
    calls = hooked_calls(net, grid, {module for module, _ in where.values()})
    out = {}
    for layer, (module, k) in where.items():
        a = calls[module][int(k)].double().numpy()
        out[layer] = a.reshape(n, m, *a.shape[1:])
    return out


def brute_nv(a: np.ndarray, spatial: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    """TV, SV, NV per unit of an (N, M, units...) array; ``spatial``: unit axes averaged
    (TV and SV separately) before dividing."""
    tv = a.std(axis=1, ddof=1).mean(axis=0)
    sv = a.std(axis=0, ddof=1).mean(axis=0)
    if spatial:
        tv, sv = tv.mean(axis=spatial), sv.mean(axis=spatial)
    with np.errstate(divide="ignore", invalid="ignore"):
        nv = np.where(sv > 0, tv / np.where(sv > 0, sv, 1), np.where(tv > 0, np.inf, 1.0))
    return {"tv": tv, "sv": sv, "nv": nv}


def finite_mean(v: np.ndarray) -> float:
    return float(v[np.isfinite(v)].mean())


def check_agreement(net: nn.Module, layers, expected: list[str] | None = None, *,
                    slices: dict | None = None, spatial_axes: dict | None = None,
                    **kw) -> InvarianceResult:
    """measure() on ``layers`` equals the brute force per unit and per layer.

    Args:
        net: a float64 model (a viscope wrapper or a plain network).
        layers: what measure() is given (patterns, ``None`` for the defaults).
        expected: the layer addresses measure() must report (``None``: don't check).
        slices: per layer, an index into the brute force's unit axes (token policies).
        spatial_axes: per layer, the unit axes the brute force averages TV and SV over
            (for ``spatial=True``), from what the architecture is known to output.
        **kw: further measure() arguments (``tokens=``, ``spatial=``).

    Returns:
        measure()'s result.
    """
    x = images()
    r = measure(net, TensorDataset(x, torch.zeros(len(x))), CALLABLES, samples=len(x),
                layers=layers, batch_size=8, **kw)
    if expected is not None:
        assert r.layers == expected
    assert r.layers
    ref = brute_grid(net, x, r.layers)
    for layer in r.layers:
        a = ref[layer]
        if slices and layer in slices:
            a = a[(slice(None), slice(None), *slices[layer])]
        want = brute_nv(a, (spatial_axes or {}).get(layer, ()))
        for q in ("tv", "sv", "nv"):
            got = r.per_unit(layer, q)
            assert got.shape == want[q].shape, (layer, q)
            np.testing.assert_allclose(got, want[q], rtol=1e-9, atol=1e-12,
                                       err_msg=f"{layer} {q}")
        row = r.per_layer().set_index("layer").loc[layer]
        assert row["nv"] == pytest.approx(finite_mean(want["nv"]), rel=1e-9, abs=1e-12)
    return r


# -- modules that run several times: each call measured on its own ------------------------

def test_each_call_of_a_reused_module_equals_hooks_on_that_call():
    """torchvision's BasicBlock applies one ReLU twice; ``layer1.0.*`` reaches it."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3).double().eval()
    block = ["layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu@0", "layer1.0.relu@1",
             "layer1.0.conv2", "layer1.0.bn2"]
    check_agreement(net, "layer1.0.*", block)
    check_agreement(net, ["layer1.0.relu@1", "layer2.0.relu"],
                    ["layer1.0.relu@1", "layer2.0.relu@0", "layer2.0.relu@1"])


def test_default_layers_of_a_model_with_a_shared_block_equal_the_brute_force():
    """timm's resnet18 whose layer1.1 is layer1.0 (shared weights: the block runs twice)."""
    torch.manual_seed(0)
    model = create("resnet18", num_classes=3).double()
    net = unwrap(model)
    net.layer1[1] = net.layer1[0]
    defaults = default_layers(model, (3, SIZE, SIZE))
    assert defaults[:2] == ["layer1.0@0", "layer1.0@1"] and "layer1.1" not in defaults
    check_agreement(model, None, defaults)


def test_the_cli_measures_one_call_of_a_reused_module(tmp_path, capsys):
    import pandas as pd

    from viscope.cli import main

    out = tmp_path / "run"
    main(["invariance", "--model", "torchvision:resnet18", "--transform", "brightness",
          "--samples", "4", "--params", "2", "--layers", "layer1.0.relu@1,layer1.0.conv1",
          "--no-progress", "--out", str(out)])
    capsys.readouterr()
    df = pd.read_csv(out / "per_layer.csv")
    assert df["layer"].tolist() == ["layer1.0.conv1", "layer1.0.relu@1"]
    assert np.isfinite(df["nv"]).all()


# -- model families: CNNs, token models with prefix tokens, channels-last stages ----------

def swin_timm() -> nn.Module:
    return timm.create_model("swin_tiny_patch4_window7_224", img_size=SIZE, window_size=4,
                             embed_dim=24, depths=(1, 1), num_heads=(1, 2), num_classes=3)


def swin_torchvision() -> nn.Module:
    return torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1],
                                              num_heads=[1, 2], window_size=[4, 4],
                                              num_classes=3)


def vit_torchvision() -> nn.Module:
    return torchvision.models.VisionTransformer(image_size=SIZE, patch_size=8, num_layers=2,
                                                num_heads=2, hidden_dim=16, mlp_dim=32,
                                                num_classes=3)


def deit_distilled() -> nn.Module:
    return timm.create_model("deit_tiny_distilled_patch16_224", img_size=SIZE, patch_size=8,
                             depth=2, num_classes=3)


def vit_registers() -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", img_size=SIZE, patch_size=8, depth=2,
                             reg_tokens=2, num_classes=3)


def build(make) -> nn.Module:
    torch.manual_seed(0)
    return make().double().eval()


@pytest.mark.parametrize("name", ["convnext_atto", "mobilenetv3_small_050", "regnetx_002",
                                  "efficientnet_b0", "fastervit_tiny"])
def test_default_layers_equal_the_brute_force(name):
    net = build(lambda: create(name, num_classes=3))
    check_agreement(net, None, default_layers(net, (3, SIZE, SIZE)))


@pytest.mark.parametrize("conv_mlp", [False, True])
def test_convnext_inner_layers_average_their_own_spatial_axes(conv_mlp):
    """timm ConvNeXt's norm and MLP run on (B, H, W, C) (conv_mlp=False) or on (B, C, H, W)
    (conv_mlp=True, convnext_atto's default): with spatial=True, TV and SV are averaged
    over the first two unit axes or the last two; block outputs are (B, C, H, W)."""
    net = build(lambda: timm.create_model("convnext_atto", conv_mlp=conv_mlp, num_classes=3))
    inner = ["stages.0.blocks.0.norm", "stages.0.blocks.0.mlp.fc1"]
    axes = dict.fromkeys(inner, (1, 2) if conv_mlp else (0, 1))
    r = check_agreement(net, [*inner, "stages.0.blocks.0"], spatial=True,
                        spatial_axes=axes | {"stages.0.blocks.0": (1, 2)})
    assert r.layouts[inner[0]] == ("chw" if conv_mlp else "hwc")


# name: (model factory, token layers, prefix tokens)
TOKEN_MODELS = {
    "deit_distilled": (deit_distilled, ["blocks.0", "blocks.1", "norm"], 2),
    "vit_registers": (vit_registers, ["blocks.0", "blocks.1", "norm"], 3),
    "vit_torchvision": (vit_torchvision, ["encoder.layers.encoder_layer_0",
                                          "encoder.layers.encoder_layer_1", "encoder.ln"], 1),
}


@pytest.mark.parametrize("name", list(TOKEN_MODELS))
def test_token_policies_equal_the_brute_force_over_those_tokens(name):
    """tokens='patch' keeps the tokens after the class / distillation / register ones
    (torchvision's ViT: after its class_token), 'prefix' those before, 'all' every one."""
    make, layers, prefix = TOKEN_MODELS[name]
    net = build(make)
    keep = {"all": slice(None), "patch": slice(prefix, None), "prefix": slice(None, prefix)}
    for tokens, index in keep.items():
        check_agreement(net, layers, layers, tokens=tokens,
                        slices=dict.fromkeys(layers, (index,)))
    # spatial: TV and SV averaged over the patch tokens (axis 0 of (N, D)) per channel
    check_agreement(net, layers, layers, tokens="patch", spatial=True,
                    slices=dict.fromkeys(layers, (keep["patch"],)),
                    spatial_axes=dict.fromkeys(layers, (0,)))


# name: (model factory, channels-last layers given as patterns, what they resolve to)
SWINS = {
    "swin_timm": (swin_timm, None, ["layers.0", "layers.1"]),
    "swin_torchvision": (swin_torchvision, ["features.*"],
                         ["features.0", "features.1", "features.2", "features.3"]),
}


@pytest.mark.parametrize("name", list(SWINS))
def test_swin_channels_last_stages_equal_the_brute_force(name):
    """Swin's stages output (B, H, W, C): per unit as they are, and with spatial=True
    averaged over H and W (the first two unit axes), one value per channel."""
    make, patterns, layers = SWINS[name]
    net = build(make)
    check_agreement(net, patterns, layers)
    r = check_agreement(net, patterns, layers, spatial=True,
                        spatial_axes=dict.fromkeys(layers, (0, 1)))
    assert all(r.layouts[layer] == "hwc" for layer in layers)
