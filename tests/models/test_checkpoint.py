"""Checkpoints: save_checkpoint -> create(path) rebuilds the same function; errors are clear."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from viscope.errors import ViscopeError
from viscope.models import create, save_checkpoint, unwrap

CASES: list[tuple[str, dict[str, Any]]] = [
    ("test_vit", {"img_size": 32}),
    ("fastervit_tiny", {}),
    ("torchvision:resnet18", {}),
]


def _randomise_buffers(model: nn.Module) -> None:
    # Fresh BatchNorm statistics are 0/1; random ones make a lost buffer visible.
    for name, buf in unwrap(model).named_buffers():
        if name.endswith(("running_mean", "running_var")):
            buf.uniform_(0.5, 1.5)


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=[n for n, _ in CASES])
def test_round_trip_gives_identical_outputs(
    name: str, kwargs: dict[str, Any], tmp_path: Path, device: torch.device
) -> None:
    model = create(name, num_classes=5, normalize=([0.4] * 3, [0.3] * 3), **kwargs)
    _randomise_buffers(model)
    path = save_checkpoint(model, tmp_path / "sub" / "model.pt", epoch=3, note="random")
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["model.pt"]

    torch.manual_seed(1)  # the rebuilt model's fresh weights differ from the saved ones
    again = create(str(path))
    assert again.viscope_spec == model.viscope_spec
    x = torch.rand(2, 3, 32, 32, device=device)
    model.to(device).eval()
    again.to(device).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)

    saved = torch.load(path, weights_only=True)
    assert saved["viscope_model"] == name
    assert saved["kwargs"] == {**kwargs, "num_classes": 5}
    assert saved["meta"] == {"epoch": 3, "note": "random"}
    assert saved["normalize"] == ((0.4,) * 3, (0.3,) * 3)
    assert not any(k.startswith("net.") for k in saved["state_dict"])


def test_create_path_accepts_overrides(tmp_path: Path) -> None:
    path = save_checkpoint(create("test_vit", img_size=32, num_classes=2), tmp_path / "m.pt")
    model = create(path, normalize=None, drop_path_rate=0.1)
    assert model.mean is None
    assert model.viscope_spec.kwargs["drop_path_rate"] == 0.1
    with pytest.raises(ViscopeError, match="num_classes"):
        create(path, num_classes=3)  # the head no longer fits the saved weights
    with pytest.raises(ViscopeError, match="the file holds the weights"):
        create(path, pretrained=True)


def test_missing_checkpoint_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(ViscopeError, match="nope.pt.*does not exist"):
        create(str(missing))
    with pytest.raises(ViscopeError, match="nope.pt.*does not exist"):
        create("resnet18", checkpoint=missing)


def test_corrupt_checkpoint_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ViscopeError, match="could not read.*bad.pt"):
        create(bad)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ViscopeError, match="holding a dict"):
        create(tensor)


def test_unsafe_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save({"viscope_model": "resnet18", "kwargs": {}, "state_dict": {}, "x": Path(".")}, path)
    with pytest.raises(ViscopeError, match="weights_only=True"):
        create(path)


def test_plain_state_dict_via_checkpoint(tmp_path: Path, device: torch.device) -> None:
    source = create("resnet18", num_classes=4)
    _randomise_buffers(source)
    plain = tmp_path / "plain.pth"
    torch.save(unwrap(source).state_dict(), plain)
    wrapped = tmp_path / "wrapped.pth"  # keys "net.*" from the wrapper's own state_dict
    torch.save({"state_dict": source.state_dict()}, wrapped)
    x = torch.rand(2, 3, 32, 32, device=device)
    with torch.no_grad():
        expected = source.to(device).eval()(x)
        for file in (plain, wrapped):
            loaded = create("resnet18", num_classes=4, checkpoint=file).to(device).eval()
            torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)


def test_plain_state_dict_as_a_model_name_says_what_to_do(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pth"
    torch.save(unwrap(create("resnet18", num_classes=4)).state_dict(), plain)
    with pytest.raises(ViscopeError, match=r"create\('resnet18', checkpoint="):
        create(plain)


def test_mismatched_keys_are_listed(tmp_path: Path) -> None:
    state = unwrap(create("resnet18", num_classes=4)).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["layer1.0.conv1.weight"]
    path = tmp_path / "changed.pth"
    torch.save(state, path)
    with pytest.raises(ViscopeError) as err:
        create("resnet18", num_classes=4, checkpoint=path)
    message = str(err.value)
    assert "layer1.0.conv1.weight" in message and "extra.weight" in message
    fits = tmp_path / "fits.pth"
    torch.save(unwrap(create("resnet18", num_classes=4)).state_dict(), fits)
    with pytest.raises(ViscopeError, match=r"fc.weight \(4, 512\) vs \(7, 512\)"):
        create("resnet18", num_classes=7, checkpoint=fits)


def test_save_refuses_models_it_cannot_rebuild(tmp_path: Path) -> None:
    with pytest.raises(ViscopeError, match="made by viscope.models.create"):
        save_checkpoint(nn.Linear(2, 2), tmp_path / "linear.pt")
    model = create("test_vit", img_size=32, act_layer=nn.GELU)
    with pytest.raises(ViscopeError, match="plain data"):
        save_checkpoint(model, tmp_path / "vit.pt")
    with pytest.raises(ViscopeError, match="plain data"):
        save_checkpoint(create("test_vit", img_size=32), tmp_path / "vit.pt", when=object())
    assert list(tmp_path.iterdir()) == []


def test_safetensors_with_shared_tensors_loads(tmp_path: Path, device: torch.device) -> None:
    from safetensors.torch import save_model

    # FasterViT's global tokenizer registers one module under two names; safetensors'
    # save_model keeps one name of each shared tensor.
    source = create("fastervit_tiny", num_classes=3)
    _randomise_buffers(source)
    path = tmp_path / "tiny.safetensors"
    save_model(unwrap(source), str(path))
    loaded = create("fastervit_tiny", num_classes=3, checkpoint=path)
    x = torch.rand(2, 3, 32, 32, device=device)
    with torch.no_grad():
        expected = source.to(device).eval()(x)
        torch.testing.assert_close(loaded.to(device).eval()(x), expected, rtol=0, atol=0)


def test_safetensors_plain_file_loads(tmp_path: Path, device: torch.device) -> None:
    from safetensors.torch import save_file

    source = create("resnet18", num_classes=3)
    _randomise_buffers(source)
    path = tmp_path / "r.safetensors"
    save_file({k: v.contiguous() for k, v in unwrap(source).state_dict().items()}, str(path))
    loaded = create("resnet18", num_classes=3, checkpoint=path)
    x = torch.rand(2, 3, 32, 40, device=device)
    with torch.no_grad():
        expected = source.to(device).eval()(x)
        torch.testing.assert_close(loaded.to(device).eval()(x), expected, rtol=0, atol=0)


def _lightning_checkpoint(model: nn.Module, extra: dict[str, torch.Tensor]) -> dict[str, Any]:
    # What Trainer.save_checkpoint writes for a LightningModule holding ``self.model`` (the
    # viscope wrapper) and, e.g., a class-weighted loss ``self.crit``.
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    return {
        "epoch": 1,
        "global_step": 10,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": {**state, **extra},
        "optimizer_states": [],
        "hyper_parameters": {"lr": 0.1},
    }


def test_lightning_checkpoint_with_other_module_state(tmp_path: Path, device: torch.device) -> None:
    source = create("resnet18", num_classes=3)
    _randomise_buffers(source)
    path = tmp_path / "last.ckpt"
    torch.save(_lightning_checkpoint(source, {"crit.weight": torch.ones(3)}), path)
    loaded = create("resnet18", num_classes=3, checkpoint=path)
    x = torch.rand(2, 3, 32, 32, device=device)
    with torch.no_grad():
        expected = source.to(device).eval()(x)
        torch.testing.assert_close(loaded.to(device).eval()(x), expected, rtol=0, atol=0)
    # Keys under the model's prefix must still match exactly.
    broken = _lightning_checkpoint(source, {"crit.weight": torch.ones(3)})
    del broken["state_dict"]["model.net.layer1.0.conv1.weight"]
    torch.save(broken, path)
    with pytest.raises(ViscopeError, match=r"layer1\.0\.conv1\.weight"):
        create("resnet18", num_classes=3, checkpoint=path)


def test_pretrained_with_a_local_checkpoint_does_not_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import timm
    import torchvision
    from torchvision.models._api import WeightsEnum

    source = create("resnet18", num_classes=3)
    _randomise_buffers(source)
    path = tmp_path / "r.pth"
    torch.save(unwrap(source).state_dict(), path)
    original = timm.create_model
    seen: list[bool] = []

    def recording(name: str, **kwargs: Any) -> nn.Module:
        seen.append(kwargs["pretrained"])
        return original(name, **{**kwargs, "pretrained": False})

    def no_download(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(timm, "create_model", recording)
    monkeypatch.setattr(WeightsEnum, "get_state_dict", no_download)
    loaded = create("resnet18", num_classes=3, pretrained=True, checkpoint=path).eval()
    assert seen == [False]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source.eval()(x), rtol=0, atol=0)
    tv = tmp_path / "tv.pth"
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tv)
    create("torchvision:resnet18", num_classes=3, pretrained=True, checkpoint=tv)
