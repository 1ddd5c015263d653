"""``create("fgrnet")``: FGR-Net as a viscope classifier — smp's parts, one encoder pass for
logits and reconstruction, checkpoints offline, and explanations / invariance on its
encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

from viscope import models
from viscope.cli import main
from viscope.errors import ViscopeError
from viscope.explain import attribute, auto_layer
from viscope.invariance import measure
from viscope.models import FGRNet

#: The brief's tiny FGR-Net (32 px images: the deepest stage is 2 x 2).
TINY = {"encoder": "tu-test_efficientnet", "encoder_depth": 4,
        "decoder_channels": [32, 16, 8, 8], "dropout": 0.2}
#: test_efficientnet's stages as timm's own features_only model names them.
STAGES = [f"encoder.model.{n}" for n in timm.create_model(
    "test_efficientnet", features_only=True, out_indices=(0, 1, 2, 3)).feature_info.module_name()]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(num_classes: int = 3, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return models.create("fgrnet", num_classes=num_classes, **{**TINY, **kwargs}).eval()


def normalized(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The network's input, normalised by hand with the recorded mean/std."""
    mean, std = model.viscope_spec.normalize
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def test_logits_are_a_linear_layer_on_the_pooled_deepest_encoder_map() -> None:
    model = tiny()
    net = models.unwrap(model)
    assert isinstance(net, FGRNet) and model.num_classes == 3
    assert isinstance(net.encoder, smp.encoders.TimmUniversalEncoder)
    assert isinstance(net.classification_head, smp.base.ClassificationHead)
    assert [m.p for m in net.classification_head if isinstance(m, nn.Dropout)] == [0.2]
    x = torch.rand(2, 3, 32, 32)
    deepest = net.encoder(normalized(model, x))[-1]
    linear = net.classification_head[3]
    by_hand = deepest.mean(dim=(2, 3)) @ linear.weight.T + linear.bias
    assert torch.allclose(model(x), by_hand, atol=1e-5)
    assert torch.equal(net.forward_features(normalized(model, x)), deepest)


@pytest.mark.parametrize("encoder", ["tu-test_efficientnet",
                                     pytest.param("vgg11", marks=pytest.mark.slow)])
def test_one_encoder_pass_equals_smp_unet_with_aux_params(encoder: str) -> None:
    """forward_reconstruction == smp's own Unet(aux_params) with the same weights: its
    mask logits through a sigmoid, its labels as logits; and forward's logits are the
    same, while the encoder runs once."""
    model = tiny(encoder=encoder)
    net = models.unwrap(model)
    reference = smp.Unet(encoder, encoder_depth=4, decoder_channels=[32, 16, 8, 8],
                         encoder_weights=None, classes=3,
                         aux_params={"classes": 3, "dropout": 0.2}).eval()
    state = {k.replace("reconstruction_head.", "segmentation_head."): v
             for k, v in net.state_dict().items()}
    reference.load_state_dict(state)
    x = torch.rand(2, 3, 32, 32)
    calls = []
    handle = net.encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        logits, features, recon = net.forward_reconstruction(normalized(model, x))
    finally:
        handle.remove()
    assert len(calls) == 1
    masks, labels = reference(normalized(model, x))
    assert torch.allclose(recon, torch.sigmoid(masks), atol=1e-6)
    assert torch.allclose(logits, labels, atol=1e-6)
    assert torch.allclose(model(x), logits, atol=1e-6)
    assert recon.shape == x.shape and 0 <= recon.min() and recon.max() <= 1
    assert features.shape[-2:] == (2, 2)


def test_checkpoint_rebuilds_it_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny(num_classes=4)
    with torch.no_grad():  # weights that differ from any fresh initialisation
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    file = models.save_checkpoint(model, tmp_path / "fgrnet.pt")

    def offline(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)
    again = models.create(file).eval()
    assert again.viscope_spec == model.viscope_spec
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(x), again(x))
    a = models.unwrap(model).forward_reconstruction(normalized(model, x))[2]
    b = models.unwrap(again).forward_reconstruction(normalized(again, x))[2]
    assert torch.equal(a, b)


def test_nothing_is_downloaded_unless_pretrained(monkeypatch: pytest.MonkeyPatch) -> None:
    class Downloaded(Exception):
        pass

    def trap(*args: object, **kwargs: object) -> None:
        raise Downloaded

    monkeypatch.setattr(timm.models._builder, "load_pretrained", trap)
    torch.manual_seed(0)
    a = models.create("fgrnet", **TINY)
    torch.manual_seed(1)
    b = models.create("fgrnet", **TINY)
    assert not torch.equal(next(a.parameters()), next(b.parameters()))  # random
    assert a.num_classes == 2  # gradable or not, when not told
    with pytest.raises(Downloaded):
        models.create("fgrnet", pretrained=True, **TINY)


def test_default_layers_and_auto_layer_are_the_encoder_stages() -> None:
    model = tiny()
    assert models.default_layers(model, (3, 32, 32)) == STAGES
    # the deepest stage whose grid is at least 4 x 4: reduction 8 at 32 px, 16 at 64 px
    assert auto_layer(model, (32, 32)) == STAGES[2]
    assert auto_layer(model, (64, 64)) == STAGES[3]


def test_vgg_stages_are_the_relus_before_each_pooling() -> None:
    """smp's vgg11 encoder returns the activation before each max-pooling (and the last
    layer's): those modules, with their hooked outputs equal to the encoder's maps."""
    model = tiny(encoder="vgg11")
    net = models.unwrap(model)
    features = net.encoder.features
    expected = [f"encoder.features.{i - 1}" for i, m in enumerate(features)
                if isinstance(m, nn.MaxPool2d)][:4] + ["encoder.features.19"]
    assert [f["module"] for f in net.feature_info] == expected
    assert [f["reduction"] for f in net.feature_info] == [1, 2, 4, 8, 16]
    seen = {}
    handles = [net.get_submodule(n).register_forward_hook(
        lambda m, a, o, n=n: seen.setdefault(n, o.clone())) for n in expected]
    try:
        with torch.no_grad():
            maps = net.encoder(torch.rand(1, 3, 32, 32))
    finally:
        for h in handles:
            h.remove()
    assert all(torch.equal(seen[n], f) for n, f in zip(expected, maps, strict=True))
    x = torch.rand(2, 3, 32, 32)
    logits, _, recon = net.forward_reconstruction(normalized(model, x))
    assert torch.allclose(logits, model(x), atol=1e-6)
    assert recon.shape == x.shape and 0 <= recon.min() and recon.max() <= 1


def test_gradcam_on_the_encoder_equals_pytorch_grad_cam() -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = tiny().double()
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    layer = auto_layer(model, (32, 32))
    ours = attribute(model, x, "gradcam", layer="auto", target=[0, 1, 2])
    with pgc.GradCAM(model, [models.unwrap(model).get_submodule(layer)]) as cam:
        ref = cam(x, [ClassifierOutputTarget(c) for c in (0, 1, 2)])
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4, atol=1e-5)


def test_explain_command_runs_on_fgrnet(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["explain", "--model", "fgrnet", "--dataset", "shapes", "--method", "gradcam",
            "--samples", "4", "--batch-size", "4", "--out", str(tmp_path / "run")]
    for key, value in TINY.items():
        args += ["--model-arg", f"{key}={value}"]
    try:
        main(args)
    except SystemExit as exit_:
        assert exit_.code in (0, None), capsys.readouterr().err
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["resolved_layer"] == STAGES[2]
    maps = np.load(tmp_path / "run" / "maps.npz")["gradcam"]
    assert maps.shape == (4, 32, 32) and np.isfinite(maps).all()


def test_invariance_of_the_default_layers_equals_numpy_nv() -> None:
    """measure(..., layers=None) on FGR-Net: the encoder stages, each NV equal to a NumPy
    computation on hooked activations (TV = mean over samples of the std over
    transformations, SV = mean over transformations of the std over samples, NV = TV / SV
    per unit, the layer's value the mean over finite units)."""
    model = tiny().double()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 32, 32, generator=g, dtype=torch.float64)
    callables = [lambda v: v, lambda v: (v * 1.3).clamp(0, 1), lambda v: v.flip(-1)]
    result = measure(model, TensorDataset(x, torch.zeros(5)), callables, samples=5, batch_size=8)
    assert result.layers == STAGES
    grid = torch.stack([f(x) for f in callables], 1).flatten(0, 1)  # sample-major
    net = models.unwrap(model)
    acts = {}
    handles = [net.get_submodule(n).register_forward_hook(
        lambda m, a, o, n=n: acts.setdefault(n, o.detach().clone())) for n in STAGES]
    try:
        with torch.no_grad():
            model(grid)
    finally:
        for h in handles:
            h.remove()
    table = result.per_layer().set_index("layer")
    for layer in STAGES:
        a = acts[layer].numpy().reshape(5, 3, -1)
        tv, sv = a.std(axis=1, ddof=1).mean(axis=0), a.std(axis=0, ddof=1).mean(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            nv = np.where(sv > 0, tv / np.where(sv > 0, sv, 1), np.where(tv > 0, np.inf, 1.0))
        assert table.loc[layer, "nv"] == pytest.approx(nv[np.isfinite(nv)].mean(), rel=1e-9)


def test_listed_among_the_models() -> None:
    assert "fgrnet" in models.list_models()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"encoder": "tu-test_efficientnett"}, "Did you mean 'tu-test_efficientnet'"),
        ({"encoder": "vgg111"}, "Did you mean 'vgg11'"),
        ({"aux_params": {"classes": 3}}, "dropout="),
        ({"activation": "sigmoid"}, "sigmoid already"),
        ({"classes": 3}, "num_classes="),
        ({"dropout": 1.0}, "dropout"),
        ({"pooling": "mean"}, "'avg' or 'max'"),
        ({"encoder": "vgg11", "decoder_channel": [8]}, "'decoder_channels'"),
    ],
)
def test_bad_arguments_are_one_clear_error(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ViscopeError, match=match):
        models.create("fgrnet", **kwargs)


def test_an_image_side_the_decoder_cannot_restore_names_the_padded_size() -> None:
    model = tiny()
    assert model(torch.rand(1, 3, 40, 40)).shape == (1, 3)  # the classifier alone is fine
    with pytest.raises(ViscopeError, match="divisible by 16.*48x48"):
        models.unwrap(model).forward_reconstruction(torch.rand(1, 3, 40, 40))
