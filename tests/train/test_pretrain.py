"""``pretrain``: run folder, resume, refusal, labels unused, the backbone checkpoint, k-NN."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset

from viscope import data, models
from viscope.errors import ViscopeError
from viscope.train.ssl.pretrain import pretrain
from viscope.train.ssl.probe import embed, knn_accuracy

VIT: dict[str, Any] = {"img_size": 32, "patch_size": 8, "depth": 2}
RUN: dict[str, Any] = {"dataset": "shapes", "n": 60, "epochs": 2, "batch_size": 16,
                       "seed": 1, "model_kwargs": VIT, "progress": False}


class Interrupt(pl.Callback):
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("simclr")
    return pretrain("test_vit", out=out, method="simclr", **RUN)


def test_a_run_writes_its_files_and_probes_before_and_after_each_epoch(finished: Any) -> None:
    out = finished.out
    assert {p.name for p in out.iterdir()} >= {"pretrain.json", "history.csv", "last.ckpt",
                                               "backbone.pt"}
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [0, 1, 2]
    assert history["train_loss"].isna().tolist() == [True, False, False]
    accuracies = history[["knn_acc", "probe_acc"]].to_numpy()
    assert ((accuracies >= 0) & (accuracies <= 1)).all()
    record = json.loads((out / "pretrain.json").read_text())
    assert record["status"] == "finished" and record["config"]["method"]["name"] == "simclr"
    assert record["knn_acc"] == history["knn_acc"].iloc[-1]


def test_the_backbone_checkpoint_is_the_pretrained_model_and_takes_a_new_head(
        finished: Any) -> None:
    x = torch.rand(2, 3, 32, 32)
    again = models.create(finished.backbone).eval()
    torch.testing.assert_close(again(x), finished.model.eval()(x))
    # every weight of the model pre-trained is in the file (the fine-tuning side, S2's,
    # replaces the head when it loads it with another number of classes)
    stored = _state(finished.backbone)
    own = models.unwrap(finished.model).state_dict()
    assert stored.keys() == own.keys()
    for key, value in own.items():
        torch.testing.assert_close(stored[key], value)


def test_the_knn_probe_matches_a_brute_force_vote() -> None:
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(30, 5, generator=g), torch.randn(8, 5, generator=g)
    bank_labels, labels = torch.randint(0, 3, (30,), generator=g), torch.randint(0, 3, (8,),
                                                                                 generator=g)
    # cosine similarity, the 20 nearest, votes weighted by exp(sim / 0.1)
    b = bank / bank.norm(dim=1, keepdim=True)
    q = queries / queries.norm(dim=1, keepdim=True)
    hits = 0
    for i in range(8):
        sim = b @ q[i]
        top = sim.argsort(descending=True)[:20]
        votes = torch.zeros(3)
        for j in top:
            votes[bank_labels[j]] += torch.exp(sim[j] / 0.1)
        hits += int(votes.argmax() == labels[i])
    assert knn_accuracy(bank, bank_labels, queries, labels, k=20) == pytest.approx(hits / 8)


def test_an_interrupted_run_resumes_from_last_ckpt_to_the_uninterrupted_result(
        finished: Any, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain("test_vit", out=tmp_path, method="simclr", callbacks=[Interrupt()], **RUN)
    record = json.loads((tmp_path / "pretrain.json").read_text())
    assert record["status"] == "running" and (tmp_path / "last.ckpt").is_file()
    assert not (tmp_path / "backbone.pt").exists()
    resumed = pretrain("test_vit", out=tmp_path, method="simclr", **RUN)
    record = json.loads((tmp_path / "pretrain.json").read_text())
    assert record["resumed_from"].endswith("last.ckpt") and record["status"] == "finished"
    pd.testing.assert_frame_equal(resumed.history, finished.history)
    mine, theirs = _state(resumed.backbone), _state(finished.backbone)
    assert mine.keys() == theirs.keys()
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key])


def test_a_finished_run_is_skipped_and_another_configuration_refused(finished: Any) -> None:
    again = pretrain("test_vit", out=finished.out, method="simclr", **RUN)
    assert again.skipped and again.knn_acc == finished.knn_acc
    with pytest.raises(ViscopeError, match="seed: 1 -> 2"):
        pretrain("test_vit", out=finished.out, method="simclr", **{**RUN, "seed": 2})


class _Relabelled(Dataset):
    """The same images with every label moved to the next class."""

    def __init__(self, base: Any, classes: int) -> None:
        self.base, self.n_classes = base, classes
        self.classes = base.classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        image, label, *rest = self.base[i]
        return (image, (int(label) + 1) % self.n_classes, *rest)


def test_labels_are_never_used_for_the_loss(tmp_path: Path) -> None:
    splits = {s: data.create("shapes", split=s, size=32, n=40, seed=0) for s in ("train", "val")}
    relabelled = {s: _Relabelled(d, 5) for s, d in splits.items()}
    run = {**RUN, "dataset": None, "epochs": 1, "n": None}
    del run["dataset"]
    a = pretrain("test_vit", splits, out=tmp_path / "a", method="byol", **run)
    b = pretrain("test_vit", relabelled, out=tmp_path / "b", method="byol", **run)
    pd.testing.assert_series_equal(a.history["train_loss"], b.history["train_loss"])
    for key, value in _state(a.backbone).items():
        torch.testing.assert_close(value, _state(b.backbone)[key])


def test_mae_on_a_cnn_and_an_unknown_probe_split_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ViscopeError, match="VisionTransformer"):
        pretrain("test_efficientnet", out=tmp_path, method="mae",
                 **{**RUN, "model_kwargs": None})
    with pytest.raises(ViscopeError, match="probe_split"):
        pretrain("test_vit", out=tmp_path, probe_split="holdout", **RUN)


@pytest.mark.slow
def test_simclr_pretraining_beats_a_random_backbone_on_knn(tmp_path: Path) -> None:
    # 5 classes: chance is 0.2. With the default views (hue and grayscale among them),
    # SimCLR must lift k-NN accuracy of the CNN's pooled features above its random init.
    # Measured (2 cores): this test 0.317 -> 0.373 (seed 1, 12 epochs); seed 0, 15 epochs
    # 0.317 -> 0.413. Both are scored on the same validation images, so the margin is a
    # paired one. ViTs this tiny do not gain (README, issue 14).
    run = {**RUN, "n": 2000, "epochs": 12, "batch_size": 64, "lr": 2e-3, "model_kwargs": None}
    result = pretrain("test_resnet", out=tmp_path, method="simclr", **run)
    initial, final = result.history["knn_acc"].iloc[0], result.knn_acc
    print(f"k-NN accuracy: random weights {initial:.3f}, after SimCLR {final:.3f}")
    assert final > max(initial + 0.03, 0.3)


def test_embed_restores_the_training_mode() -> None:
    model = models.create("test_vit", num_classes=5, **VIT).train()
    features, labels = embed(model, data.create("shapes", split="val", size=32, n=40, seed=0))
    assert model.training and features.shape[0] == labels.shape[0] > 0


def test_the_command_pretrains_with_the_families_and_method_settings_given(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from viscope.cli import main

    out = tmp_path / "run"
    main(["pretrain", "--model", "test_vit", "--model-arg", "img_size=32",
          "--model-arg", "patch_size=8", "--model-arg", "depth=2", "--method", "byol",
          "--epochs", "1", "--n", "40", "--batch-size", "16", "--families", "rotation",
          "--families", "invert", "--method-arg", "momentum=0.9", "--out", str(out)])
    record = json.loads((out / "pretrain.json").read_text())
    method = record["config"]["method"]
    assert method["families"] == ["rotation", "invert"] and method["momentum"] == 0.9
    assert record["config"]["model"]["kwargs"]["img_size"] == 32
    assert "k-NN accuracy" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain", "--model", "test_efficientnet", "--method", "mae", "--epochs", "1",
              "--n", "40", "--out", str(tmp_path / "mae")])
    assert exit_.value.code == 2 and "VisionTransformer" in capsys.readouterr().err
