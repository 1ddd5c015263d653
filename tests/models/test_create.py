"""create(): every family builds offline, runs on 32 px images and normalises its input."""

from __future__ import annotations

import sys
import time
from typing import Any

import pytest
import torch
from torch import nn

from viscope.errors import ViscopeError
from viscope.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSpec,
    Normalized,
    create,
    list_models,
    spec_of,
    unwrap,
)

SMALL: list[tuple[str, dict[str, Any]]] = [
    ("test_vit", {"img_size": 32}),
    ("test_efficientnet", {}),
    ("torchvision:resnet18", {}),
    ("fastervit_tiny", {}),
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4}),
]


def _by_hand(model: Normalized, x: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
    mean_t = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return model.net((x - mean_t) / std_t)


@pytest.mark.parametrize(("name", "kwargs"), SMALL, ids=[n for n, _ in SMALL])
def test_forward_gives_logits_of_normalised_input(
    name: str, kwargs: dict[str, Any], device: torch.device
) -> None:
    model = create(name, num_classes=7, **kwargs).to(device).eval()
    x = torch.rand(2, 3, 32, 32, device=device)
    with torch.no_grad():
        y = model(x)
        cfg = getattr(model.net, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
        expected = _by_hand(model, x, mean, std)
        raw = model.net(x)
    assert y.shape == (2, 7)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, expected)
    assert not torch.allclose(y, raw, atol=1e-4), "the wrapper must normalise its input"


def test_auto_normalisation_uses_the_model_cfg() -> None:
    vit = create("test_vit", img_size=32)  # timm's cfg: mean = std = 0.5
    assert vit.viscope_spec.normalize == ((0.5,) * 3, (0.5,) * 3)
    assert create("torchvision:resnet18").viscope_spec.normalize == (IMAGENET_MEAN, IMAGENET_STD)


def test_normalize_options(device: torch.device) -> None:
    x = torch.rand(2, 3, 32, 32, device=device)
    none = create("test_vit", img_size=32, normalize=None).to(device).eval()
    custom = create("test_vit", img_size=32, normalize=([0.1, 0.2, 0.3], [0.5, 0.5, 0.25]))
    custom.to(device).eval()
    custom.load_state_dict(none.state_dict())
    imagenet = create("test_vit", img_size=32, normalize="imagenet")
    assert imagenet.viscope_spec.normalize == (IMAGENET_MEAN, IMAGENET_STD)
    with torch.no_grad():
        torch.testing.assert_close(none(x), none.net(x))
        torch.testing.assert_close(custom(x), _by_hand(none, x, (0.1, 0.2, 0.3), (0.5, 0.5, 0.25)))


@pytest.mark.parametrize("bad", ["imagenett", ([0.5] * 2, [0.5] * 2), ([0.5] * 3, [0.0] * 3), 3.0])
def test_bad_normalize_is_refused(bad: Any) -> None:
    with pytest.raises(ViscopeError, match="Expected"):
        create("test_vit", img_size=32, normalize=bad)


def test_one_channel_model_averages_the_imagenet_stats() -> None:
    model = create("resnet18", in_chans=1, num_classes=2).eval()
    mean, std = model.viscope_spec.normalize
    assert mean == pytest.approx((sum(IMAGENET_MEAN) / 3,))
    assert std == pytest.approx((sum(IMAGENET_STD) / 3,))
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 2)
    with pytest.raises(ViscopeError, match=r"\(B, 1, H, W\)"):
        model(torch.rand(2, 3, 32, 32))


def test_spec_records_how_to_rebuild() -> None:
    model = create("vit_tiny_patch16_224", num_classes=4, img_size=32, patch_size=4)
    assert spec_of(model) == ModelSpec(
        name="vit_tiny_patch16_224",
        kwargs={"img_size": 32, "patch_size": 4, "num_classes": 4},
        normalize=model.viscope_spec.normalize,
    )
    assert spec_of(nn.DataParallel(model)) is model.viscope_spec
    assert spec_of(nn.Linear(2, 2)) is None


def test_unwrap_and_vit_passthroughs() -> None:
    model = create("vit_tiny_patch16_224", img_size=32, patch_size=4)
    net = unwrap(model)
    assert net is model.net and unwrap(net) is net
    assert unwrap(nn.DataParallel(model)) is net
    assert model.num_prefix_tokens == net.num_prefix_tokens == 1
    assert model.grid_size == (8, 8)
    assert model.patch_size == (4, 4)
    assert not hasattr(create("test_efficientnet"), "grid_size")
    # Layer names are the network's: no "net." prefix.
    assert "blocks.0" in dict(net.named_modules())


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ViscopeError, match=r"Unknown model 'resnt18'.*Did you mean.*'resnet18'"):
        create("resnt18")
    with pytest.raises(ViscopeError, match=r"Unknown torchvision model 'resnt18'.*'resnet18'"):
        create("torchvision:resnt18")


def test_wrong_kwargs_are_user_errors() -> None:
    with pytest.raises(ViscopeError, match="accepts.*colour"):
        create("resnet18", colour="red")
    with pytest.raises(ViscopeError, match="accepts.*colour"):
        create("torchvision:resnet18", colour="red")
    with pytest.raises(ViscopeError, match="in_chans=3"):
        create("torchvision:resnet18", in_chans=1)
    with pytest.raises(ViscopeError, match="positive int"):
        create("resnet18", in_chans=0)


def test_fastervit_tiny_runs_at_32_and_64_px_with_carrier_tokens(device: torch.device) -> None:
    for res in (32, 64):
        model = create("fastervit_tiny", num_classes=5, resolution=res).to(device).eval()
        net = unwrap(model)
        level = net.levels[2]
        assert level.do_gt, "level 2 must make carrier tokens"
        assert all(block.sr_ratio > 1 for block in level.blocks), "hierarchical attention on"
        x = torch.rand(2, 3, res, res, device=device)
        with torch.no_grad():
            y = model(x)
        assert y.shape == (2, 5) and torch.isfinite(y).all()


def test_fastervit_tiny_is_fast_on_cpu() -> None:
    model = create("fastervit_tiny", num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32)
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(10):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    # ~5 ms alone on 2 cores; the minimum and a wide bound keep it robust when another
    # test process saturates the cores (0.2 s once failed that way)
    assert min(times) < 1.0


def test_fastervit_tiny_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ViscopeError, match="multiple of 32"):
        create("fastervit_tiny", resolution=48)
    with pytest.raises(ViscopeError, match="pretrained=False"):
        create("fastervit_tiny", pretrained=True)


def test_fastervit_0_maps_to_the_package_model() -> None:
    net = unwrap(create("fastervit_0", num_classes=3))
    assert type(net).__name__ == "FasterViT"
    assert [len(level.blocks) for level in net.levels] == [2, 3, 6, 5]  # faster_vit_0_224
    assert net.head.out_features == 3


def test_missing_fastervit_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail as if the package were absent.
    monkeypatch.setitem(sys.modules, "fastervit.models.faster_vit", None)
    with pytest.raises(ViscopeError, match=r"pip install 'viscope\[fastervit\]'"):
        create("fastervit_tiny")


@pytest.mark.parametrize("name", list_models())
def test_curated_models_build_offline(name: str) -> None:
    model = create(name, num_classes=3)
    assert isinstance(model, Normalized)
    assert unwrap(model) is model.net


def test_pretrained_is_passed_through_and_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm
    import torchvision

    seen: list[dict[str, Any]] = []

    def fake_timm(name: str, **kwargs: Any) -> nn.Module:
        seen.append({"name": name, **kwargs})
        return nn.Conv2d(kwargs["in_chans"], 2, 1)

    def fake_torchvision(name: str, **kwargs: Any) -> nn.Module:
        seen.append({"name": name, **kwargs})
        return nn.Sequential(nn.Flatten(), nn.Linear(3, 1000))

    monkeypatch.setattr(timm, "create_model", fake_timm)
    monkeypatch.setattr(torchvision.models, "get_model", fake_torchvision)
    create("resnet18")
    create("resnet18", pretrained=True, num_classes=4, drop_rate=0.1)
    create("torchvision:resnet18")
    head = unwrap(create("torchvision:resnet18", pretrained=True, num_classes=4))[1]
    assert seen == [
        {"name": "resnet18", "pretrained": False, "in_chans": 3},
        {"name": "resnet18", "pretrained": True, "in_chans": 3, "num_classes": 4, "drop_rate": 0.1},
        {"name": "resnet18", "weights": None},
        {"name": "resnet18", "weights": "DEFAULT"},
    ]
    # Pretrained torchvision weights keep their 1000-class head; a new one is fitted.
    assert head.out_features == 4 and head.in_features == 3


def test_torchvision_normalisation_follows_its_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    # EfficientNet-V2-L's torchvision weights expect mean = std = 0.5, not ImageNet's;
    # a small stand-in network keeps the test fast (only the weights' metadata matters).
    monkeypatch.setattr(torchvision.models, "get_model", lambda name, **kwargs: nn.Conv2d(3, 2, 1))
    half = ((0.5,) * 3, (0.5,) * 3)
    assert create("torchvision:efficientnet_v2_l").viscope_spec.normalize == half
    assert create("torchvision:efficientnet_v2_s").viscope_spec.normalize == (
        IMAGENET_MEAN,
        IMAGENET_STD,
    )


@pytest.mark.parametrize(
    ("arch", "size", "num_classes"),
    [
        ("googlenet", 64, None),
        ("googlenet", 64, 3),
        ("inception_v3", 80, None),
        ("inception_v3", 80, 3),
    ],
)
def test_torchvision_pretrained_round_trip(
    arch: str, size: int, num_classes: int | None, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision
    from torchvision.models._api import WeightsEnum

    from viscope.models import save_checkpoint

    # Stand-in "published" weights, saved here: the real ones have aux heads and make
    # torchvision switch on transform_input.
    def local_weights(self: Any, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        net = torchvision.models.get_model(arch, weights=None, aux_logits=True, init_weights=False)
        return net.state_dict()

    monkeypatch.setattr(WeightsEnum, "get_state_dict", local_weights)
    model = create(f"torchvision:{arch}", pretrained=True, num_classes=num_classes).eval()
    path = save_checkpoint(model, tmp_path / "m.pt")
    again = create(path).eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    heads = [m.out_features for m in again.modules() if isinstance(m, nn.Linear)]
    assert set(heads) == {num_classes or 1000}  # auxiliary heads resized too


def test_unknown_pretrained_tag_suggests_real_ones() -> None:
    with pytest.raises(
        ViscopeError, match=r"'resnet18\.a1_in1kk'.*Did you mean.*'resnet18\.a1_in1k'"
    ):
        create("resnet18.a1_in1kk")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No network, as a user without one has it: the Hub in offline mode with an empty
    cache, torch.hub's URL downloads failing as urllib fails without DNS."""
    import urllib.error

    import huggingface_hub.constants
    import timm.models._builder
    import torchvision.models._api

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def no_network(url: str, *args: Any, **kwargs: Any) -> Any:
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(timm.models._builder, "download_cached_file", no_network)


@pytest.mark.parametrize("name", ["resnet18", "torchvision:resnet18"])
def test_pretrained_weights_offline_say_so_and_name_a_local_checkpoint(
    offline: None, name: str
) -> None:
    # resnet18: timm via the Hugging Face Hub; torchvision: torch.hub
    with pytest.raises(ViscopeError) as err:
        create(name, num_classes=3, pretrained=True)
    message = str(err.value)
    assert "\n" not in message and err.value.__cause__ is None
    assert f"weights of {name!r} could not be fetched" in message and "offline" in message
    assert f"--model {name} --model-arg checkpoint=PATH" in message
    assert f"create({name!r}, pretrained=True, checkpoint=PATH)" in message
    assert "Check the path" not in message


@pytest.mark.parametrize("name", ["resnet18", "torchvision:resnet18", "test_vit"])
def test_local_published_weights_fine_tune_to_other_classes(name: str, tmp_path) -> None:
    """pretrained=True with a local checkpoint of the published 1000-class weights and
    num_classes=5: every weight but the classifier comes from the file, the classifier is
    freshly made for 5 classes (timm's behaviour); without pretrained it stays strict."""
    import torch

    from viscope.errors import ViscopeError
    from viscope.models import unwrap

    torch.manual_seed(1)
    published = unwrap(create(name))  # stands for the downloaded weights
    path = tmp_path / "published.pth"
    torch.save(published.state_dict(), path)
    torch.manual_seed(2)
    tuned = unwrap(create(name, pretrained=True, checkpoint=path, num_classes=5))
    fresh, old = tuned.state_dict(), published.state_dict()
    differ = sorted(k for k in fresh if fresh[k].shape != old[k].shape)
    assert differ and all(fresh[k].shape[0] == 5 for k in differ)
    for k in fresh:
        if k not in differ:
            assert torch.equal(fresh[k], old[k]), k
    with pytest.raises(ViscopeError, match="of another shape"):
        create(name, checkpoint=path, num_classes=5)
