"""Objectives plug into ``fit``: a loss term with its own trained module, a monitored
metric other than accuracy, masks, and the features helper against plain hooks."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import BinaryJaccardIndex

from viscope import data, models
from viscope.errors import ViscopeError
from viscope.train import fit
from viscope.train.features import forward_with_features
from viscope.train.module import TrainModule
from viscope.train.objectives import (
    OBJECTIVES,
    CrossEntropy,
    Objective,
    Step,
    resolve_objectives,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:lightning.*")

Splits = dict[str, Any]
ModelFactory = Callable[..., torch.nn.Module]


class Reconstruction(Objective):
    """A toy auxiliary objective: a 1x1 convolution decodes the backbone's features
    into the image (upsampled), mean squared error against the model's input."""

    name = "recon"
    uses_features = True

    def setup(self, model: nn.Module, num_classes: int, example: Step) -> None:
        assert example.features is not None
        self.decoder = nn.Conv2d(example.features.shape[1], 3, kernel_size=1)

    def loss(self, step: Step) -> Tensor:
        decoded = F.interpolate(
            self.decoder(step.features), size=step.images.shape[-2:], mode="bilinear"
        )
        return F.mse_loss(decoded.float(), step.images.float())


class MaskIoU(Objective):
    """A toy segmentation objective: a 1x1 convolution on the features predicts the
    mask (upsampled); binary cross-entropy; validation metric IoU (torchmetrics)."""

    name = "seg"
    uses_features = True
    uses_masks = True

    def setup(self, model: nn.Module, num_classes: int, example: Step) -> None:
        assert example.masks is not None and example.features is not None
        self.head = nn.Conv2d(example.features.shape[1], 1, kernel_size=1)

    def logits(self, step: Step) -> Tensor:
        size = step.masks.shape[-2:]  # type: ignore[union-attr]
        return F.interpolate(self.head(step.features), size=size, mode="bilinear").float()

    def loss(self, step: Step) -> Tensor:
        return F.binary_cross_entropy_with_logits(self.logits(step), step.masks.float())  # type: ignore[union-attr]

    def metrics(self, num_classes: int) -> dict[str, Metric]:
        return {"iou": BinaryJaccardIndex()}

    def update(self, metrics: Mapping[str, Metric], step: Step) -> None:
        metrics["iou"].update(self.logits(step).sigmoid(), step.masks.long())  # type: ignore[union-attr]


def test_auxiliary_objective_trains_its_decoder_and_saves_it(
    tiny_vit: ModelFactory, separable: Splits, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    recon = Reconstruction(weight=0.5)
    result = fit(
        tiny_vit(2), separable, out=tmp_path, objectives=["ce", recon], monitor="val_recon_loss",
        epochs=3, batch_size=32, lr=3e-3, progress=False,
    )
    history = result.history
    # each term is logged; the training loss is their weighted sum (epoch means)
    assert {"train_ce_loss", "train_recon_loss", "val_ce_loss", "val_recon_loss"} <= set(history)
    np.testing.assert_allclose(
        history["train_loss"], history["train_ce_loss"] + 0.5 * history["train_recon_loss"],
        rtol=1e-5,
    )
    assert history["train_recon_loss"].iloc[-1] < history["train_recon_loss"].iloc[0]
    # the best epoch is the one with the lowest monitored value (min: it is a loss)
    assert result.monitor == "val_recon_loss"
    assert result.best_epoch == int(history["epoch"][history["val_recon_loss"].idxmin()])
    assert result.best_score == pytest.approx(history["val_recon_loss"].min(), rel=1e-6)
    assert result.best_val_acc == pytest.approx(
        float(history.loc[history["epoch"] == result.best_epoch, "val_acc"].iloc[0]), rel=1e-6
    )
    # the decoder's trained weights are in best.pt, and match the returned objective's
    saved = torch.load(result.checkpoint, weights_only=True)["objectives"]["recon"]
    assert set(saved) == {"decoder.weight", "decoder.bias"}
    assert torch.equal(saved["decoder.weight"], recon.decoder.weight.detach())
    # the test split reports every term (test_acc by evaluate, as for plain CE)
    assert set(result.test_metrics or {}) == {"test_loss", "test_ce_loss", "test_recon_loss",
                                              "test_acc"}
    assert result.test_metrics["test_acc"] == pytest.approx(result.test_acc, abs=1e-6)
    record = json.loads((tmp_path / "train.json").read_text())
    assert record["config"]["objectives"] == [{"name": "ce", "weight": 1.0},
                                              {"name": "recon", "weight": 0.5}]
    assert record["config"]["monitor"] == "val_recon_loss"

    # a finished run loads best.pt's decoder into the objective it is given
    again_recon = Reconstruction(weight=0.5)
    again = fit(
        tiny_vit(2), separable, out=tmp_path, objectives=["ce", again_recon],
        monitor="val_recon_loss", epochs=3, batch_size=32, lr=3e-3, progress=False,
    )
    assert again.skipped
    assert torch.equal(again_recon.decoder.weight, recon.decoder.weight)
    # another weight is another run
    with pytest.raises(ViscopeError, match=r"objectives: .*overwrite=True"):
        fit(tiny_vit(2), separable, out=tmp_path, objectives=["ce", Reconstruction(1.0)],
            monitor="val_recon_loss", epochs=3, batch_size=32, lr=3e-3, progress=False)


def test_interrupted_run_with_a_decoder_resumes_to_the_same_weights(
    tiny_vit: ModelFactory, separable: Splits, tmp_path: Path
) -> None:
    import lightning.pytorch as pl

    class Interrupt(pl.Callback):
        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            if trainer.current_epoch == 1:
                raise RuntimeError("simulated crash")

    def run(out: Path, **kwargs: Any) -> tuple[Any, Reconstruction]:
        recon = Reconstruction(0.5)  # its decoder is made after fit seeds, as the model
        result = fit("test_vit", separable, out=out, objectives=["ce", recon], epochs=2,
                     batch_size=32, seed=1, progress=False,
                     model_kwargs={"img_size": 32, "patch_size": 8, "depth": 2}, **kwargs)
        return result, recon

    whole, whole_recon = run(tmp_path / "whole")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "cut", callbacks=[Interrupt()], keep_checkpoints=True)
    resumed, resumed_recon = run(tmp_path / "cut")
    assert json.loads((tmp_path / "cut" / "train.json").read_text())["resumed_from"]
    assert torch.equal(resumed_recon.decoder.weight, whole_recon.decoder.weight)
    pd.testing.assert_frame_equal(resumed.history, whole.history)


def test_reconstruction_alone_monitors_val_loss_and_reports_no_accuracy(
    tiny_vit: ModelFactory, separable: Splits, tmp_path: Path
) -> None:
    result = fit(tiny_vit(2), separable, out=tmp_path, objectives=[Reconstruction()],
                 epochs=2, batch_size=64, progress=False)
    assert result.monitor == "val_loss"
    assert result.best_val_acc is None and result.test_acc is None
    assert list(result.history.columns)[:4] == ["epoch", "train_loss", "val_loss", "val_acc"]
    assert result.history["val_acc"].isna().all()
    assert set(result.test_metrics or {}) == {"test_loss"}


def test_segmentation_objective_reads_masks_and_selects_on_iou(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = models.create("test_vit", num_classes=5, img_size=32, patch_size=4, depth=2)
    seg = MaskIoU()
    result = fit(model, "shapes", out=tmp_path, n=200, objectives=["ce:0.1", seg],
                 monitor="val_iou", epochs=2, batch_size=32, lr=3e-3, progress=False)
    history = result.history
    assert result.best_epoch == int(history["epoch"][history["val_iou"].idxmax()])
    # the selected score is the IoU of the returned model and head on val, pooled over all
    # pixels, recomputed here with NumPy
    val = data.create("shapes", split="val", n=200, seed=0)
    images = torch.stack([val[i][0] for i in range(len(val))])
    masks = torch.stack([val[i][2] for i in range(len(val))]).numpy() > 0.5
    with torch.no_grad():
        _, features = forward_with_features(result.model, images)
        logits = F.interpolate(seg.head(features), size=masks.shape[-2:], mode="bilinear")
    predicted = logits.sigmoid().numpy() > 0.5
    iou = (predicted & masks).sum() / (predicted | masks).sum()
    assert result.best_score == pytest.approx(float(iou), abs=1e-5)
    assert "test_iou" in (result.test_metrics or {})


def test_cross_entropy_with_label_smoothing_is_torch_s(tiny_vit: ModelFactory) -> None:
    model = tiny_vit(5)
    module = TrainModule(model, 5, objectives=resolve_objectives(None, label_smoothing=0.2))
    module.on_train_epoch_start()
    x, y = torch.rand(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 0])
    torch.manual_seed(1)
    loss = module.training_step((x, y), 0)
    model.eval()  # test_vit has no dropout: train and eval forward agree
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y, label_smoothing=0.2))
    # validation measures plain cross-entropy, as timm's train.py
    val = module._eval_step((x, y), "val")
    torch.testing.assert_close(val, F.cross_entropy(logits, y))
    assert not torch.allclose(val, loss)


def test_resolve_objectives_forms_and_errors() -> None:
    ce = CrossEntropy(weight=2.0)
    assert resolve_objectives([ce]) == [ce]
    by_map = resolve_objectives({"ce": 0.25})
    assert [(o.name, o.weight) for o in by_map] == [("ce", 0.25)]
    assert "ce" in OBJECTIVES
    with pytest.raises(ViscopeError, match="Did you mean 'ce'"):
        resolve_objectives(["cee"])
    with pytest.raises(ViscopeError, match="distinct"):
        resolve_objectives(["ce", "ce:0.5"])
    with pytest.raises(ViscopeError, match="label_smoothing"):
        resolve_objectives([Reconstruction()], label_smoothing=0.1)
    with pytest.raises(ViscopeError, match="weight"):
        resolve_objectives(["ce:-1"])
    with pytest.raises(ViscopeError, match="'name:weight'"):
        resolve_objectives(["ce:half"])


def test_unknown_monitor_is_refused_before_the_run_folder(
    tiny_vit: ModelFactory, separable: Splits, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    with pytest.raises(ViscopeError, match=r"'val_ac'.*Did you mean 'val_acc'.*val_loss"):
        fit(tiny_vit(2), separable, out=out, monitor="val_ac", progress=False)
    assert not out.exists()


class _Features(nn.Module):
    """Records a module's output with a plain forward hook (the reference)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.out: list[Tensor] = []
        self.handle = module.register_forward_hook(lambda m, a, o: self.out.append(o))


@pytest.mark.parametrize(
    ("name", "kwargs", "layer", "layout"),
    [
        ("test_vit", {"img_size": 32}, "norm", "tokens"),
        ("test_resnet", {}, "layer4", "nchw"),
        ("torchvision:resnet18", {}, "layer4", "nchw"),
        ("swin_tiny_patch4_window7_224", {"img_size": (32, 48), "window_size": 2, "embed_dim": 24,
                                          "depths": (1, 1), "num_heads": (1, 1)}, "norm", "nhwc"),
    ],
)
def test_features_are_the_backbone_output_before_pooling(
    name: str, kwargs: dict[str, Any], layer: str, layout: str
) -> None:
    torch.manual_seed(0)
    model = models.create(name, num_classes=3, **kwargs).eval()
    x = torch.rand(2, 3, 32, 48)
    hook = _Features(models.unwrap(model).get_submodule(layer))
    try:
        with torch.no_grad():
            expected_logits = model(x)
            reference = hook.out[-1]
            logits, features = forward_with_features(model, x)
    finally:
        hook.handle.remove()
    if layout == "tokens":  # drop the class token, place the rest on the 2 x 3 patch grid
        reference = reference[:, 1:].reshape(2, 2, 3, -1).permute(0, 3, 1, 2)
    elif layout == "nhwc":
        reference = reference.permute(0, 3, 1, 2)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(features, reference)
    assert features.ndim == 4 and features.shape[0] == 2


class _ZeroHead:
    """An initialiser that zeroes the classifier and records its calls."""

    calls: ClassVar[list[int]] = []

    def __call__(self, model: nn.Module, train_split: Any) -> None:
        type(self).calls.append(len(train_split))
        with torch.no_grad():
            models.unwrap(model).get_classifier().weight.zero_()

    def describe(self) -> dict[str, Any]:
        return {"name": "zero_head"}


def _sha256_of(model: nn.Module) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in models.unwrap(model).state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_initialiser_runs_once_before_the_initial_weights_are_hashed(
    tiny_vit: ModelFactory, separable: Splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import copy

    from viscope.train.initialisers import INITIALISERS

    _ZeroHead.calls.clear()
    model = tiny_vit(2)
    by_hand = copy.deepcopy(model)
    plain_hash = _sha256_of(by_hand)
    _ZeroHead()(by_hand, separable["train"])
    _ZeroHead.calls.clear()
    fit(model, separable, out=tmp_path, init=_ZeroHead(), epochs=1, batch_size=64,
        progress=False)
    assert _ZeroHead.calls == [len(separable["train"])]  # once, with the train split
    record = json.loads((tmp_path / "train.json").read_text())
    assert record["config"]["init"] == {"name": "zero_head"}
    # the recorded hash is of the weights after the initialiser
    assert record["init_sha256"] == _sha256_of(by_hand) != plain_hash
    # a finished run is returned without calling the initialiser again
    again = fit(tiny_vit(2), separable, out=tmp_path, init=_ZeroHead(), epochs=1,
                batch_size=64, progress=False)
    assert again.skipped and len(_ZeroHead.calls) == 1
    # another initialiser is another run
    with pytest.raises(ViscopeError, match=r"init: .*overwrite=True"):
        fit(tiny_vit(2), separable, out=tmp_path, epochs=1, batch_size=64, progress=False,
            init=lambda m, d: None)
    # a registered name
    monkeypatch.setitem(INITIALISERS._items, "zero_head", _ZeroHead())
    named = fit(tiny_vit(2), separable, out=tmp_path / "named", init="zero_head", epochs=1,
                batch_size=64, progress=False)
    assert not named.skipped and len(_ZeroHead.calls) == 2
    assert json.loads((tmp_path / "named" / "train.json").read_text())["config"]["init"] == (
        "zero_head"
    )
    with pytest.raises(ViscopeError, match="Unknown initialiser 'zero_hed'"):
        fit(tiny_vit(2), separable, out=tmp_path / "x", init="zero_hed", progress=False)


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_every_registered_objective_gives_a_finite_loss_with_gradients(
    name: str, tiny_vit: ModelFactory, separable: Splits
) -> None:
    objective = OBJECTIVES.get(name)()
    assert objective.name == name
    model = tiny_vit(2)
    if objective.out_channels is not None:  # e.g. segmentation: a model of that many outputs
        model = models.create("smp:unet", num_classes=objective.out_channels,
                              encoder="tu-test_resnet", encoder_depth=3,
                              decoder_channels=[8, 8, 8])
    module = TrainModule(model, 2, objectives=[objective])
    items = [separable["train"][i] for i in range(4)]
    batch = [torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])]
    if objective.uses_masks:  # items with masks: shapes'
        shapes = data.create("shapes", n=4, size=32)
        batch = [torch.stack([shapes[i][k] for i in range(4)]) if k != 1 else
                 torch.tensor([shapes[i][1] for i in range(4)]) for k in range(3)]
    with torch.no_grad():
        objective.setup(model, 2, module.make_step("train", batch[0], batch))
    loss = objective.loss(module.make_step("train", batch[0], batch))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
