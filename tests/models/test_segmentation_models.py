"""``create("smp:<arch>", encoder=...)``: segmentation-models-pytorch networks as viscope
models — normalised, rebuilt from their checkpoints, never downloading weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import timm
import torch

from viscope import models
from viscope.errors import ViscopeError
from viscope.models import IMAGENET_MEAN, IMAGENET_STD

TINY = {"encoder": "tu-test_resnet", "encoder_depth": 4, "decoder_channels": [16, 8, 8, 4]}


def test_a_unet_is_a_normalized_model_with_logits_per_pixel() -> None:
    model = models.create("smp:unet", num_classes=2, **TINY)
    assert isinstance(model, models.Normalized)
    net = models.unwrap(model)
    assert isinstance(net, smp.Unet) and model.num_classes == 2
    x = torch.rand(3, 3, 32, 32)
    out = model.eval()(x)
    assert out.shape == (3, 2, 32, 32)
    # the wrapper normalises with timm's own mean/std of the encoder (test_resnet: 0.5)
    cfg = timm.models.get_pretrained_cfg("test_resnet")
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    assert torch.allclose(out, net((x - mean) / std), atol=1e-6)


def test_smp_encoders_get_imagenet_normalisation_and_one_channel_by_default() -> None:
    model = models.create("smp:unet", encoder="resnet18", encoder_depth=3,
                          decoder_channels=[16, 8, 8])
    assert model.viscope_spec.normalize == (IMAGENET_MEAN, IMAGENET_STD)
    assert model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)


def test_checkpoint_rebuilds_the_same_network(tmp_path: Path) -> None:
    model = models.create("smp:unet", num_classes=1, in_chans=1, **TINY)
    with torch.no_grad():  # weights that differ from any fresh initialisation
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    file = models.save_checkpoint(model, tmp_path / "unet.pt", epoch=3)
    again = models.create(file)
    assert again.viscope_spec == model.viscope_spec
    assert again.viscope_spec.kwargs == {**TINY, "num_classes": 1, "in_chans": 1}
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(model.eval()(x), again.eval()(x))


def test_architectures_other_than_unet_by_name() -> None:
    model = models.create("smp:FPN", encoder="tu-test_resnet", decoder_segmentation_channels=32,
                          decoder_pyramid_channels=32)
    assert isinstance(models.unwrap(model), smp.FPN)
    # GroupNorm of 32 groups needs more than one value per group at the deepest stage
    assert model.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)


@pytest.mark.parametrize("encoder", ["tu-test_resnet", "resnet18"])
def test_nothing_is_downloaded_unless_pretrained(monkeypatch: pytest.MonkeyPatch,
                                                 encoder: str) -> None:
    """The download functions smp (its own encoders) and timm (``tu-``) call are made to
    fail: random weights never reach them; ``pretrained=True`` does (so the trap works)."""

    class Downloaded(Exception):
        pass

    def trap(*args: object, **kwargs: object) -> None:
        raise Downloaded

    monkeypatch.setattr(smp.encoders, "hf_hub_download", trap)
    monkeypatch.setattr(timm.models._builder, "load_pretrained", trap)
    kwargs = {"encoder": encoder, "encoder_depth": 3, "decoder_channels": [8, 8, 8]}
    torch.manual_seed(0)
    a = models.create("smp:unet", **kwargs)
    torch.manual_seed(1)
    b = models.create("smp:unet", **kwargs)
    first = next(models.unwrap(a).encoder.parameters())
    assert not torch.equal(first, next(models.unwrap(b).encoder.parameters()))  # random
    with pytest.raises(Downloaded):
        models.create("smp:unet", pretrained=True, **kwargs)


def test_listed_among_the_models() -> None:
    assert "smp:unet" in models.list_models()


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("smp:unett", {}, "Did you mean 'smp:unet'"),
        ("smp:unet", {"encoder": "tu-test_resnett"}, "Did you mean 'tu-test_resnet'"),
        ("smp:unet", {"encoder": "resnet344"}, "Did you mean 'resnet34'"),
        ("smp:unet", {"encoder": "resnet18", "encoder_weights": "imagenet"}, "pretrained=True"),
        ("smp:unet", {"encoder": "resnet18", "activation": "sigmoid"}, "logits"),
        ("smp:unet", {"encoder": "resnet18", "decoder_channel": [8]}, "'decoder_channels'"),
        ("smp:unet", {"encoder": "tu-test_resnet", "bogus": 1}, "bogus"),
    ],
)
def test_bad_names_and_arguments_are_one_clear_error(name: str, kwargs: dict[str, object],
                                                     match: str) -> None:
    with pytest.raises(ViscopeError, match=match):
        models.create(name, **kwargs)
