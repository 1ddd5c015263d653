"""``apply`` on every supported model; mimetic; errors; ``viscope train --init``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from viscope import data, init, models
from viscope.errors import ViscopeError
from viscope.train import INITIALISERS

MODELS = [
    ("test_vit", {"img_size": 32}, "patch_embed.proj"),
    ("test_resnet", {}, "conv1.0"),
    ("test_efficientnet", {}, "conv_stem"),
    ("convnext_atto", {}, "stem.0"),
    ("torchvision:resnet18", {}, "conv1"),
    ("fastervit_tiny", {}, "patch_embed.conv_down.0"),
]


@pytest.fixture(scope="module")
def shapes() -> Any:
    return data.create("shapes", n=24)


@pytest.mark.parametrize(("name", "kwargs", "layer"), MODELS, ids=[m[0] for m in MODELS])
def test_pca_writes_only_the_first_layer(name: str, kwargs: dict, layer: str, shapes: Any) -> None:
    if name.startswith("fastervit"):
        pytest.importorskip("fastervit")
    torch.manual_seed(0)
    model = models.create(name, num_classes=3, **kwargs)
    model.train()
    before = {k: v.clone() for k, v in models.unwrap(model).state_dict().items()}
    report = init.apply(model, shapes, "pca", samples=300, seed=0)
    net = models.unwrap(model)
    conv = dict(net.named_modules())[layer]
    assert report.layer == layer and report.filters == conv.out_channels
    assert model.training and all(m.training for m in model.modules())
    after = net.state_dict()
    for key, value in after.items():
        if not key.startswith(layer + "."):
            assert torch.equal(value, before[key]), key  # bit-identical
    weight = conv.weight.detach()
    assert weight.dtype == torch.float32 and weight.shape == before[layer + ".weight"].shape
    k = report.from_data
    assert k == min(conv.out_channels, weight[0].numel())
    assert k + report.from_default == report.filters
    assert not torch.equal(weight[:k], before[layer + ".weight"][:k])
    # norms: the mean norm of the layer re-initialised by reset_parameters, seeded
    fresh = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                      bias=conv.bias is not None)
    torch.manual_seed(0)
    fresh.reset_parameters()
    want = float(fresh.weight.detach().flatten(1).norm(dim=1).mean())
    np.testing.assert_allclose(weight[:k].flatten(1).norm(dim=1).numpy(), want, rtol=1e-5)
    if conv.bias is not None:
        assert not conv.bias.detach().any()
    # unscaled filters are orthonormal principal components
    rows = weight[:k].flatten(1).double() / want
    np.testing.assert_allclose((rows @ rows.T).numpy(), np.eye(k), atol=1e-4)


def test_more_filters_than_patch_dims_keep_the_default(shapes: Any) -> None:
    model = models.create("test_vit", img_size=32, patch_size=2, embed_dim=32, depth=1,
                          num_heads=2, num_classes=3)  # 3·2·2 = 12 dims < 32 filters
    conv = models.unwrap(model).patch_embed.proj
    before = conv.weight.detach().clone()
    report = init.apply(model, shapes, "zca", samples=400)
    assert (report.from_data, report.from_default) == (12, 20)
    assert torch.equal(conv.weight[12:], before[12:])
    assert not torch.equal(conv.weight[:12], before[:12])


def test_kmeans_and_default_and_make(shapes: Any) -> None:
    model = models.create("test_resnet", num_classes=3)
    conv = models.unwrap(model).conv1[0]
    report = init.make("kmeans", samples=200, normalize=True)(model, shapes)
    assert report.from_data == 16 and report.patches == 200
    init.apply(model, None, "default", seed=4)
    ref = nn.Conv2d(3, 16, 3, bias=False)  # same shapes: reset_parameters draws the same
    torch.manual_seed(4)
    ref.reset_parameters()
    assert torch.equal(conv.weight, ref.weight)
    assert init.make("zca", eps=0.1).describe() == {"method": "zca", "eps": 0.1}


def test_mimetic_products_have_the_target_structure() -> None:
    model = models.create("test_vit", img_size=32, num_classes=3)
    net = models.unwrap(model)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = init.apply(model, method="mimetic", seed=0)
    assert report.filters == len(net.blocks)
    for block in net.blocks:
        attn = block.attn
        d, heads = attn.qkv.in_features, attn.num_heads
        hd = d // heads
        w = attn.qkv.weight.detach().double()
        q, k, v = w[:d], w[d:2 * d], w[2 * d:]
        for h in range(heads):
            qk = q[h * hd:(h + 1) * hd].T @ k[h * hd:(h + 1) * hd]  # paper's W_q^h W_k^hᵀ
            assert torch.linalg.matrix_rank(qk) <= hd
            diag, off = qk.diagonal(), qk - torch.diag(qk.diagonal())
            assert float(diag.mean()) > 0.2 and float(diag.mean()) > 5 * float(off.abs().mean())
        vp = v.T @ attn.proj.weight.detach().double().T  # paper's W_v W_proj (full rank)
        off = vp - torch.diag(vp.diagonal())
        assert abs(float(vp.diagonal().mean()) + 0.4) < 0.1  # −β2
        assert abs(float(off.std()) - 0.4 / d ** 0.5) < 0.02  # α2 Z, Z ~ N(0, 1/d)
    changed = {k for k in before if not torch.equal(before[k], net.state_dict()[k])}
    assert changed == {f"blocks.{i}.attn.{p}.weight" for i in range(len(net.blocks))
                       for p in ("qkv", "proj")}


@pytest.mark.parametrize(("call", "words"), [
    (lambda m, d: init.apply(m, d, "pcaa"), "Did you mean 'pca'"),
    (lambda m, d: init.apply(m, d, "pca", layer="nope"), "Expected layer"),
    (lambda m, d: init.apply(m, d, "pca", layer="head"), "nn.Conv2d"),
    (lambda m, d: init.apply(m, d, "pca", samples=0), "samples"),
    (lambda m, d: init.apply(m, d, "pca", alpha1=1), "Unknown option"),
    (lambda m, d: init.apply(m, None, "pca"), "Expected a dataset"),
    (lambda m, d: init.apply(models.create("test_resnet"), None, "mimetic"), "needs a ViT"),
])
def test_bad_input_is_a_one_line_error(call: Any, words: str, shapes: Any) -> None:
    model = models.create("test_vit", img_size=32, num_classes=3)
    with pytest.raises(ViscopeError) as err:
        call(model, shapes)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_registry_names() -> None:
    assert INITIALISERS.names() == ["default", "pca", "zca", "kmeans", "mimetic"]


@pytest.mark.filterwarnings("ignore::UserWarning:lightning.*")
def test_viscope_train_init_pca(tmp_path: Path, capsys: Any) -> None:
    from viscope.cli import main

    code = 0
    try:
        main(["train", "--model", "test_vit", "--model-arg", "img_size=32", "--model-arg",
              "patch_size=8", "--model-arg", "depth=1", "--dataset", "shapes", "--n", "48",
              "--epochs", "1", "--batch-size", "16", "--set", "max_steps=1", "--init", "pca",
              "--out", str(tmp_path / "run")])
    except SystemExit as e:
        code = int(e.code or 0)
    assert code == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "run" / "train.json").read_text())
    assert record.get("config", record)["init"] == "pca"
    weights = torch.load(next((tmp_path / "run").rglob("*.pt")), weights_only=True)
    state = weights.get("state_dict", weights)
    proj = next(v for k, v in state.items() if k.endswith("patch_embed.proj.weight"))
    norms = proj.flatten(1).norm(dim=1)  # one training step moves them only a little
    assert float(norms.std() / norms.mean()) < 0.05
