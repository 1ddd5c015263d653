"""``fit``: the run folder, selection on validation, learning, resume and errors."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch

from viscope import data, models, transforms
from viscope.errors import ViscopeError
from viscope.train import evaluate, fit

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:lightning.*")

Splits = dict[str, Any]
ModelFactory = Callable[..., torch.nn.Module]


def test_run_folder_holds_checkpoint_logs_and_record(
    run_config: dict[str, Any], finished_run: Any
) -> None:
    result = finished_run.result
    out = result.out
    assert result.checkpoint == out / "best.pt" and result.checkpoint.is_file()
    assert (out / "metrics.csv").is_file() and (out / "train.json").is_file()
    assert not (out / "checkpoints").exists()  # Lightning checkpoints removed when finished
    metrics = pd.read_csv(out / "metrics.csv")
    assert {"epoch", "train_loss", "val_loss", "val_acc"} <= set(metrics.columns)
    assert sorted(metrics["epoch"].unique()) == [0, 1]

    record = json.loads((out / "train.json").read_text())
    assert record["status"] == "finished" and record["epochs_run"] == 2 == result.epochs
    config = record["config"]
    assert config["seed"] == 3 and config["augment"]["name"] == "rotation"
    assert config["batch_size"] == 32 and config["lr"] == 2e-3 and config["epochs"] == 2
    assert config["model"] == {
        "name": "test_vit",
        "kwargs": {**run_config["model_kwargs"], "num_classes": 5},
    }
    sizes = {s: config["splits"][s]["size"] for s in ("train", "val", "test")}
    assert sizes == {"train": 140, "val": 30, "test": 30}
    assert record["best_val_acc"] == result.best_val_acc
    assert record["test_acc"] == result.test_acc
    assert record["images_per_second"] > 0 and record["seconds"] > 0
    assert list(result.history.columns) == ["epoch", "train_loss", "val_loss", "val_acc"]
    assert result.history["epoch"].tolist() == [0, 1]
    assert result.history["train_loss"].notna().all() and result.history["val_acc"].notna().all()


def test_split_hash_is_the_hash_of_the_split_indices(finished_run: Any) -> None:
    import hashlib

    record = json.loads((finished_run.result.out / "train.json").read_text())
    test = data.create("shapes", split="test", n=200, seed=3)
    digest = hashlib.sha256(np.asarray(test.indices, dtype=np.int64).tobytes()).hexdigest()
    assert record["config"]["splits"]["test"]["sha256"] == digest


def test_best_pt_rebuilds_the_trained_model_exactly(finished_run: Any) -> None:
    trained = finished_run.result.model
    rebuilt = models.create(finished_run.result.checkpoint)
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(trained.eval()(x), rebuilt.eval()(x))
    meta = torch.load(finished_run.result.checkpoint, weights_only=True)["meta"]
    assert meta["epoch"] == finished_run.result.best_epoch
    assert meta["classes"] == ["circle", "square", "triangle", "cross", "star"]


def test_reported_accuracies_recompute(finished_run: Any) -> None:
    result = finished_run.result
    test = data.create("shapes", split="test", n=200, seed=3)
    val = data.create("shapes", split="val", n=200, seed=3)
    assert result.test_acc == evaluate(models.create(result.checkpoint), test)
    # The saved model is the best-val epoch: its val accuracy is the one selected on.
    assert evaluate(result.model, val) == pytest.approx(result.best_val_acc, abs=1e-6)
    history = result.history
    assert result.best_val_acc == pytest.approx(history["val_acc"].max(), abs=1e-6)
    assert result.best_epoch == int(history["epoch"][history["val_acc"].idxmax()])


def test_selection_monitors_val_and_test_never_reaches_trainer(finished_run: Any) -> None:
    recorder = finished_run.recorder
    assert (recorder.monitor, recorder.mode) == ("val_acc", "max")
    assert finished_run.calls == {"fit": 1, "validate": 0, "test": 0}
    test = data.create("shapes", split="test", n=200, seed=3)
    seen = {s: recorder.datasets[s] for s in ("train", "val")}
    assert seen["val"].split == "val" and seen["train"].split == "train"
    for part in seen.values():
        assert not set(part.indices) & set(test.indices)


def test_second_call_returns_stored_result_without_training(
    same_state: Callable[..., bool],
    tiny_vit: ModelFactory,
    run_config: dict[str, Any],
    finished_run: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(finished_run.result.out, out)
    before = (out / "best.pt").stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(pl.Trainer, "fit", lambda *a, **k: calls.append(a))
    model = tiny_vit()
    again = fit(model, out=out, **{k: v for k, v in run_config.items() if k != "model_kwargs"})
    assert calls == [] and again.skipped
    assert (out / "best.pt").stat().st_mtime_ns == before
    assert again.test_acc == finished_run.result.test_acc
    assert again.best_val_acc == finished_run.result.best_val_acc
    pd.testing.assert_frame_equal(again.history, finished_run.result.history)
    assert same_state(model, finished_run.result.model)  # the given model got best.pt


def test_returned_model_is_in_eval_mode(
    tiny_vit: ModelFactory, run_config: dict[str, Any], finished_run: Any, tmp_path: Path
) -> None:
    # The model fit hands back is for inference: dropout / drop-path off, BatchNorm frozen,
    # whether it was trained now or the stored run was loaded into it.
    assert not any(m.training for m in finished_run.result.model.modules())
    out = tmp_path / "copy"
    shutil.copytree(finished_run.result.out, out)
    model = tiny_vit().train()
    again = fit(model, out=out, **{k: v for k, v in run_config.items() if k != "model_kwargs"})
    assert again.skipped and again.model is model
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize(
    ("change", "key"),
    [({"seed": 4}, "seed"), ({"augment": "brightness"}, "augment.name"), ({"lr": 1e-2}, "lr")],
)
def test_changed_config_is_refused(
    run_config: dict[str, Any], finished_run: Any, tmp_path: Path, change: dict[str, Any], key: str
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(finished_run.result.out, out)
    with pytest.raises(ViscopeError, match=rf"{key}: .*overwrite=True") as err:
        fit("test_vit", out=out, **{**run_config, **change})
    assert "another out=" in str(err.value)
    assert json.loads((out / "train.json").read_text())["config"]["seed"] == 3  # untouched


@pytest.mark.parametrize(
    ("family", "key"),
    [
        (transforms.create("rotation", mode="nearest"), "augment.options"),
        (transforms.create("rotation", low=-10, high=10), "augment.high"),
    ],
)
def test_changed_family_options_are_refused(
    run_config: dict[str, Any], finished_run: Any, tmp_path: Path, family: Any, key: str
) -> None:
    # Interpolation (and perspective's direction seed) change what the model is trained
    # on, as the range does: a finished run must not be returned for them.
    out = tmp_path / "copy"
    shutil.copytree(finished_run.result.out, out)
    with pytest.raises(ViscopeError, match=rf"{key}: .*overwrite=True"):
        fit("test_vit", out=out, **{**run_config, "augment": family})


def test_family_description_records_non_default_options_only() -> None:
    from viscope.train import describe_family

    default = describe_family(transforms.create("rotation"))
    assert default == describe_family(transforms.create("rotation", mode="bilinear"))
    assert "options" not in default  # records of default families are unchanged
    assert describe_family(transforms.create("rotation", mode="nearest"))["options"] == {
        "mode": "nearest"
    }
    assert describe_family(transforms.create("perspective", seed=2))["options"] == {"seed": 2}


def test_dict_of_datasets_at_another_image_size_is_refused(
    make_separable: Callable[..., Any], tiny_vit: ModelFactory, tmp_path: Path
) -> None:
    # A dict of datasets records no image_size; the same items at another resolution
    # (same indices and labels) are another run, not the finished one.
    def splits(size: int) -> Splits:
        return {s: make_separable(32, i, size=size) for i, s in enumerate(("train", "val"))}

    fit(tiny_vit(2), splits(32), out=tmp_path, epochs=1, batch_size=32, progress=False)
    with pytest.raises(ViscopeError, match=r"splits\.train\.image_shape: .*overwrite=True"):
        fit(tiny_vit(2), splits(24), out=tmp_path, epochs=1, batch_size=32, progress=False)
    again = fit(tiny_vit(2), splits(32), out=tmp_path, epochs=1, batch_size=32, progress=False)
    assert again.skipped


def test_overwrite_retrains_with_new_config(
    run_config: dict[str, Any], finished_run: Any, tmp_path: Path
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(finished_run.result.out, out)
    result = fit(
        "test_vit", out=out, overwrite=True, **{**run_config, "augment": None, "epochs": 1}
    )
    assert not result.skipped and result.epochs == 1
    record = json.loads((out / "train.json").read_text())
    assert record["config"]["augment"] is None and record["status"] == "finished"


class Interrupt(pl.Callback):
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def test_interrupted_run_resumes_to_the_same_result(
    same_state: Callable[..., bool], run_config: dict[str, Any], finished_run: Any, tmp_path: Path
) -> None:
    out = tmp_path / "b"
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit("test_vit", out=out, callbacks=[Interrupt()], keep_checkpoints=True, **run_config)
    record = json.loads((out / "train.json").read_text())
    assert record["status"] == "running" and (out / "checkpoints" / "last.ckpt").is_file()
    assert not (out / "best.pt").exists()

    resumed = fit("test_vit", out=out, **run_config)
    record = json.loads((out / "train.json").read_text())
    assert record["resumed_from"].endswith("last.ckpt") and record["status"] == "finished"
    # Same weights, history and accuracies as the uninterrupted run of the fixture.
    assert same_state(resumed.checkpoint, finished_run.result.checkpoint)
    pd.testing.assert_frame_equal(resumed.history, finished_run.result.history)
    assert resumed.test_acc == finished_run.result.test_acc


def test_model_learns_a_separable_task(
    tiny_vit: ModelFactory, separable: Splits, tmp_path: Path
) -> None:
    result = fit(
        tiny_vit(2), separable, out=tmp_path, epochs=3, batch_size=32, lr=3e-3, progress=False
    )
    assert result.test_acc is not None and result.test_acc >= 0.9
    assert result.history["train_loss"].iloc[-1] < result.history["train_loss"].iloc[0]
    record = json.loads((tmp_path / "train.json").read_text())
    assert record["config"]["splits"]["train"] == {
        "size": 128,
        "sha256_of": "labels",
        "sha256": record["config"]["splits"]["train"]["sha256"],
        "image_shape": [3, 32, 32],
    }
    assert record["config"]["image_size"] is None


def test_model_learns_shapes(tmp_path: Path) -> None:
    model = models.create("test_resnet", num_classes=5)
    result = fit(
        model, "shapes", out=tmp_path, n=1000, epochs=8, batch_size=32, lr=3e-3, progress=False
    )
    assert result.test_acc is not None and result.test_acc > 0.45  # chance: 0.2


def test_true_precision_run_finishes_and_reports_its_test_accuracy(
    tiny_vit: ModelFactory, separable: Splits, tmp_path: Path
) -> None:
    # "bf16-true" trains the model itself in bfloat16 (CPU too); the final test evaluation
    # must feed it bfloat16 images instead of failing after the whole training.
    model = tiny_vit(2)
    result = fit(
        model, separable, out=tmp_path, epochs=1, batch_size=64, precision="bf16-true",
        augment="rotation", progress=False,
    )
    assert next(model.parameters()).dtype == torch.bfloat16
    assert result.test_acc is not None
    assert result.test_acc == evaluate(model, separable["test"])


def test_argument_errors(tiny_vit: ModelFactory, separable: Splits, tmp_path: Path) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"lr": -1.0}, "lr"),
        ({"schedule": "step"}, "schedule"),
        ({"augment": "rotatoin"}, "rotation"),
        ({"augment": "rotation", "augment_p": 1.5}, "augment_p"),
        ({"early_stop_patience": 0}, "early_stop_patience"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ViscopeError, match=match):
            fit(tiny_vit(2), separable, out=tmp_path, progress=False, **kwargs)
    with pytest.raises(ViscopeError, match="num_classes=2"):
        fit(tiny_vit(5), separable, out=tmp_path, progress=False)
    with pytest.raises(ViscopeError, match="'val'"):
        fit(tiny_vit(2), {"train": separable["train"]}, out=tmp_path, progress=False)
    with pytest.raises(ViscopeError, match="viscope.models.create"):
        fit(torch.nn.Linear(3, 2), separable, out=tmp_path, progress=False)
    assert not (tmp_path / "train.json").exists()


@pytest.mark.parametrize("accelerator", ["gpu", "cuda", "GPU"])
def test_gpu_without_cuda_is_refused_before_the_run_folder(
    tiny_vit: ModelFactory,
    separable: Splits,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    accelerator: str,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    with pytest.raises(ViscopeError, match=r"no GPU is available.*--accelerator cpu") as err:
        fit(tiny_vit(2), separable, out=out, accelerator=accelerator, progress=False)
    assert f"accelerator={accelerator!r}" in str(err.value)
    assert not out.exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"devices": 0}, r"devices=0.*not a valid input"),
        ({"strategy": "nonsense"}, r"invalid strategy name.*nonsense"),
        ({"accelerator": "gpus"}, r"invalid accelerator name.*gpus"),
    ],
)
def test_trainer_settings_lightning_rejects_become_one_line_errors(
    tiny_vit: ModelFactory, separable: Splits, tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ViscopeError, match=match) as err:
        fit(tiny_vit(2), separable, out=tmp_path, progress=False, **kwargs)
    assert "\n" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_early_stopping_and_max_steps(
    make_separable: Callable[..., Any], tiny_vit: ModelFactory, separable: Splits, tmp_path: Path
) -> None:
    result = fit(
        tiny_vit(2),
        separable,
        out=tmp_path / "steps",
        epochs=5,
        max_steps=3,
        batch_size=32,
        progress=False,
    )
    assert result.epochs == 1 and len(result.history) == 1  # 3 steps < one epoch of 4
    assert 0.0 <= result.best_val_acc <= 1.0
    # Validation labels are the opposite of training's: val_loss rises as training learns.
    flipped = make_separable(32, 1)
    flipped.targets = [1 - t for t in flipped.targets]
    splits = {"train": separable["train"], "val": flipped}
    stopped = fit(
        tiny_vit(2),
        splits,
        out=tmp_path / "early",
        epochs=10,
        lr=3e-3,
        early_stop_patience=1,
        batch_size=32,
        progress=False,
    )
    assert stopped.epochs < 10 and stopped.test_acc is None
    losses = stopped.history["val_loss"].tolist()
    assert losses[-1] >= min(losses[:-1])  # stopped because the last epoch did not improve


@pytest.mark.parametrize("alias", ["32", 32])
def test_precision_alias_is_the_same_run(
    run_config: dict[str, Any], finished_run: Any, tmp_path: Path, alias: Any
) -> None:
    # Lightning reads 32 and "32" as "32-true" (the default): the finished run is returned,
    # not refused as a different configuration.
    out = tmp_path / "copy"
    shutil.copytree(finished_run.result.out, out)
    again = fit("test_vit", out=out, precision=alias, **run_config)
    assert again.skipped
    with pytest.raises(ViscopeError, match=r"precision: .*overwrite=True"):
        fit("test_vit", out=out, precision="bf16", **run_config)


def test_progress_shows_no_lightning_chatter(
    tiny_vit: ModelFactory, separable: Splits, tmp_path: Path, capfd: Any, caplog: Any
) -> None:
    # The CLI trains with progress=True: a progress bar, but not Lightning's hardware
    # report, tips, model summary or "max_epochs reached" notes.
    before = logging.getLogger("lightning.pytorch").level
    with caplog.at_level(logging.INFO):
        fit(tiny_vit(2), separable, out=tmp_path, epochs=1, batch_size=64, progress=True)
    out = capfd.readouterr()
    text = out.out + out.err + caplog.text
    for chatter in ("GPU available", "Tip", "Total params", "max_epochs"):
        assert chatter not in text
    assert logging.getLogger("lightning.pytorch").level == before  # restored
