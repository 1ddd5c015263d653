"""measure() against an independent brute force, model family by model family.

The brute force shares nothing with viscope's engine or tap: plain forward hooks that
clone every call's output, the whole N samples x M transformations grid held as one
array, and the Normalized Variance written with NumPy (Quiroga et al. 2023, as in
tmeasures): TV = mean over samples of the std over transformations, SV = mean over
transformations of the std over samples (ddof 1), NV = TV / SV with 0/0 -> 1 and
x/0 -> inf, and a layer's value the mean of its finite NV. Models run in float64, so
that the two sides' different batch compositions cannot move the numbers.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import TensorDataset

from viscope.invariance import measure
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
    split = {layer: (layer.split("@") + ["0"])[:2] for layer in layers}
    calls = hooked_calls(net, grid, {module for module, _ in split.values()})
    return {layer: calls[module][int(k)].double().numpy().reshape(n, m, *calls[module][
        int(k)].shape[1:]) for layer, (module, k) in split.items()}


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
                    slices: dict | None = None, spatial: dict | None = None, **kw) -> None:
    """measure() on ``layers`` equals the brute force per unit and per layer.

    Args:
        net: a float64 model (a viscope wrapper or a plain network).
        layers: what measure() is given (patterns, ``None`` for the defaults).
        expected: the layer addresses measure() must report (``None``: don't check).
        slices: per layer, an index applied to the brute-force units (token policies).
        spatial: per layer, the unit axes averaged when ``spatial=True`` is passed.
        **kw: further measure() arguments (``tokens=``, ``spatial=``).
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
        want = brute_nv(a, (spatial or {}).get(layer, ()))
        for q in ("tv", "sv", "nv"):
            got = r.per_unit(layer, q)
            assert got.shape == want[q].shape, (layer, q)
            np.testing.assert_allclose(got, want[q], rtol=1e-7, atol=1e-12,
                                       err_msg=f"{layer} {q}")
        row = r.per_layer().set_index("layer").loc[layer]
        assert row["nv"] == pytest.approx(finite_mean(want["nv"]), rel=1e-7, abs=1e-12)


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
