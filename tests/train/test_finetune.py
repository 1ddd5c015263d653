"""Fine-tuning and linear probing from pre-trained checkpoints (viscope, timm, Lightning)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import timm
import torch

from viscope import models
from viscope.cli import main
from viscope.errors import ViscopeError
from viscope.train import fit
from viscope.train.finetune import checkpoint_init, head_parameters, load_backbone

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:lightning.*")

TINY_VIT: dict[str, Any] = {"img_size": 32, "patch_size": 8, "depth": 2}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test_vit trained two steps by fit on shapes (5 classes), Lightning files kept."""
    out = tmp_path_factory.mktemp("pre") / "run"
    fit("test_vit", "shapes", out=out, n=64, epochs=1, max_steps=2, batch_size=16, lr=1e-2,
        model_kwargs=TINY_VIT, progress=False, keep_checkpoints=True)
    return out


def sentinel_model(name: str = "test_vit", num_classes: int = 3, **kwargs: Any
                   ) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A fresh model whose backbone tensors all hold -7 (so any tensor not loaded shows),
    and a copy of its freshly initialised head."""
    torch.manual_seed(1)
    model = models.create(name, num_classes=num_classes, **(kwargs or TINY_VIT))
    net = models.unwrap(model)
    head = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("head.")}
    with torch.no_grad():
        for key, tensor in net.state_dict().items():
            if not key.startswith("head.") and tensor.is_floating_point():
                tensor.fill_(-7.0)
    return model, head


def assert_backbone_is(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every non-head tensor of the model equals the state's, bit for bit."""
    own = models.unwrap(model).state_dict()
    backbone = [k for k in own if not k.startswith("head.")]
    assert backbone and set(backbone) <= set(state)
    for key in backbone:
        assert torch.equal(own[key], state[key]), key


def test_a_viscope_best_pt_loads_every_backbone_weight_and_a_new_head(pretrained: Path) -> None:
    saved = torch.load(pretrained / "best.pt", weights_only=True)["state_dict"]
    model, fresh_head = sentinel_model(num_classes=3)
    report = load_backbone(model, pretrained / "best.pt")
    assert_backbone_is(model, saved)
    net = models.unwrap(model)
    assert net.head.weight.shape == (3, 64) and saved["head.weight"].shape == (5, 64)
    for key, value in fresh_head.items():  # the head keeps its fresh initialisation
        assert torch.equal(net.state_dict()[key], value)
    assert report.prefix == "" and not report.head_loaded and not report.missing
    assert report.head == ["head.bias", "head.weight"]
    assert set(report.loaded) == set(net.state_dict()) - set(report.head)


def test_lightning_last_ckpt_with_prefixed_keys_loads(pretrained: Path) -> None:
    ckpt = torch.load(pretrained / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(k.startswith(("model.net.", "objectives.", "metric_sets.", "mean_losses."))
               for k in ckpt["state_dict"])
    plain = {k[len("model.net."):]: v for k, v in ckpt["state_dict"].items()
             if k.startswith("model.net.")}
    model, _ = sentinel_model(num_classes=5)
    report = load_backbone(model, pretrained / "checkpoints" / "last.ckpt")
    assert report.prefix == "model.net."
    assert report.head_loaded  # same five classes: the head is the checkpoint's too
    assert_backbone_is(model, plain)
    assert torch.equal(models.unwrap(model).head.weight, plain["head.weight"])


def test_timm_state_dict_and_a_student_beside_its_teacher(tmp_path: Path) -> None:
    torch.manual_seed(2)
    student = timm.create_model("test_vit", num_classes=0, **TINY_VIT).state_dict()
    torch.manual_seed(3)
    teacher = timm.create_model("test_vit", num_classes=0, **TINY_VIT).state_dict()
    # BYOL/DINO layout of a Lightning module: student and momentum teacher side by side
    layout = {**{f"method.model.net.{k}": v for k, v in student.items()},
              **{f"method.teacher_model.net.{k}": v for k, v in teacher.items()},
              "method.projection.layers.0.weight": torch.zeros(8, 64)}
    torch.save({"state_dict": layout, "epoch": 3}, tmp_path / "last.ckpt")
    model, _ = sentinel_model(num_classes=4)
    report = load_backbone(model, tmp_path / "last.ckpt")
    assert report.prefix == "method.model.net." and report.head == ["head.bias", "head.weight"]
    assert_backbone_is(model, student)
    assert "method.teacher_model.net.blocks.0.attn.qkv.weight" in report.ignored

    timm_file = tmp_path / "timm.pth"  # a plain timm state dict with a 10-class head
    torch.manual_seed(4)
    torch.save(timm.create_model("test_vit", num_classes=10, **TINY_VIT).state_dict(), timm_file)
    model, _ = sentinel_model(num_classes=4)
    assert load_backbone(model, timm_file).prefix == ""
    assert_backbone_is(model, torch.load(timm_file, weights_only=True))


def test_another_architecture_or_a_missing_key_is_one_clear_error(tmp_path: Path) -> None:
    other = models.create("test_efficientnet", num_classes=3)
    torch.save(models.unwrap(other).state_dict(), tmp_path / "effnet.pth")
    with pytest.raises(ViscopeError, match="backbone") as err:
        load_backbone(models.create("test_vit", num_classes=3, **TINY_VIT), tmp_path / "effnet.pth")
    assert "\n" not in str(err.value)

    deeper = models.unwrap(models.create("test_vit", num_classes=3, **{**TINY_VIT, "depth": 3}))
    with pytest.raises(ViscopeError, match=r"the model lacks \(blocks\.2\."):
        load_backbone(models.create("test_vit", num_classes=3, **TINY_VIT), deeper.state_dict())

    state = models.unwrap(models.create("test_vit", num_classes=3, **TINY_VIT)).state_dict()
    del state["blocks.1.mlp.fc2.bias"]
    with pytest.raises(ViscopeError, match=r"1 backbone keys missing \(blocks\.1\.mlp\.fc2\.bias"):
        load_backbone(models.create("test_vit", num_classes=3, **TINY_VIT), state)

    with pytest.raises(ViscopeError, match="not a file"):
        checkpoint_init(str(tmp_path / "nowhere" / "backbone.pt"))
    assert checkpoint_init("pca") == "pca"  # a name stays a registered initialiser


class OptimizerParams(pl.Callback):
    """Records the ids of the parameters the optimizer holds."""

    ids: set[int] = set()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        OptimizerParams.ids = {id(p) for g in trainer.optimizers[0].param_groups
                               for p in g["params"]}


def test_linear_probe_from_init_path_freezes_the_backbone(tmp_path: Path) -> None:
    """A CNN with batch norm: its running statistics must not move either."""
    torch.manual_seed(5)
    source = models.create("test_efficientnet", num_classes=0)
    with torch.no_grad():  # a checkpoint unlike any fresh init, BN statistics included
        for tensor in models.unwrap(source).state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.01 * torch.randn_like(tensor))
    path = models.save_checkpoint(source, tmp_path / "backbone.pt")
    saved = torch.load(path, weights_only=True)["state_dict"]
    result = fit("test_efficientnet", "shapes", out=tmp_path / "probe", n=64, epochs=1,
                 max_steps=3, batch_size=16, lr=1e-2, init=str(path), freeze="backbone",
                 progress=False, callbacks=[OptimizerParams()])
    net = models.unwrap(result.model)
    assert OptimizerParams.ids == {id(p) for p in head_parameters(result.model)}
    own = net.state_dict()
    for key in saved:  # every backbone tensor, buffers included, bit for bit
        assert torch.equal(own[key], saved[key]), key
    torch.manual_seed(0)  # fit's seed: the fresh head before training
    fresh = models.unwrap(models.create("test_efficientnet", num_classes=5)).classifier
    assert not torch.equal(net.classifier.weight, fresh.weight)  # the head trained
    config = (tmp_path / "probe" / "config.yaml").read_text()
    assert f"init: {path}" in config and "freeze: backbone" in config


def test_viscope_train_init_linear_probe_and_ssl_reach_fit(
    tmp_path: Path, capsys: Any, pretrained: Path
) -> None:
    code = 0
    try:
        main(["train", "--model", "test_vit", "--model-arg", "img_size=32",
              "--model-arg", "patch_size=8", "--model-arg", "depth=2", "--dataset", "shapes",
              "--n", "64", "--epochs", "1", "--batch-size", "16", "--set", "max_steps=2",
              "--init", str(pretrained / "checkpoints" / "last.ckpt"), "--linear-probe",
              "--ssl", "reconstruction", "--ssl-weight", "0.5", "--out", str(tmp_path / "ft")])
    except SystemExit as e:
        code = int(e.code or 0)
    assert code == 0, capsys.readouterr().err
    import json

    record = json.loads((tmp_path / "ft" / "train.json").read_text())
    config = record.get("config", record)
    assert config["freeze"] == "backbone"
    assert [o["name"] for o in config["objectives"]] == ["ce", "recon"]
    assert config["objectives"][1]["weight"] == 0.5
    assert config["init"]["checkpoint"].endswith("last.ckpt")
