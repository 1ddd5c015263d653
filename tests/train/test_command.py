"""``viscope train``: settings from defaults, a --config file, options and --set, in that
order; timm's option names; the run folder's config.yaml runs again."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from viscope.cli import main
from viscope.train.command import train as train_command
from viscope.train.config import TrainConfig

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:lightning.*")


def run(args: list[str], capsys: Any) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def fit_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, dict[str, Any]]]:
    """Replace ``fit`` by a recorder (nothing trains) and return the calls it got."""
    import viscope.train

    calls: list[tuple[Any, dict[str, Any]]] = []

    class Result:
        monitor, best_score, test_acc, checkpoint = "val_acc", 0.5, 0.5, "best.pt"

    def recording(model: Any, dataset: Any, **kwargs: Any) -> Result:
        calls.append((model, {"dataset": dataset, **kwargs}))
        return Result()

    monkeypatch.setattr(viscope.train, "fit", recording)
    return calls


def test_config_file_then_options_then_set(
    tmp_path: Path, capsys: Any, fit_calls: list[Any]
) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "model": "test_vit", "model_args": {"img_size": 32, "depth": 2}, "epochs": 2,
        "lr": 0.01, "optimizer": "sgd", "batch_size": 16, "objectives": ["ce:0.5"],
    }))
    code, _, err = run(["train", "--config", str(config), "--out", str(tmp_path / "o"),
                        "--lr", "0.002", "--model-arg", "depth=3", "--set", "seed=7",
                        "--set", "trainer.accumulate_grad_batches=2"], capsys)
    assert code == 0, err
    model, kwargs = fit_calls[0]
    assert model == "test_vit"
    assert kwargs["lr"] == 0.002  # option given: wins over the file
    assert kwargs["epochs"] == 2 and kwargs["optimizer"] == "sgd"  # file: wins over defaults
    assert kwargs["batch_size"] == 16 and kwargs["objectives"] == ["ce:0.5"]
    assert kwargs["model_kwargs"] == {"img_size": 32, "depth": 3}  # merged key by key
    assert kwargs["seed"] == 7 and kwargs["accumulate_grad_batches"] == 2
    assert kwargs["weight_decay"] == 0.05 and kwargs["data_seed"] == 0  # defaults


def test_timm_option_names_reach_fit(tmp_path: Path, capsys: Any, fit_calls: list[Any]) -> None:
    code, _, err = run(["train", "--model", "resnet18", "--pretrained", "--out", str(tmp_path),
                        "--opt", "momentum", "--momentum", "0.8", "--sched", "step",
                        "--decay-epochs", "2", "--decay-rate", "0.5", "--warmup-epochs", "1",
                        "--warmup-lr", "1e-5", "--min-lr", "1e-6", "--smoothing", "0.1",
                        "--clip-grad", "1.0", "--weight-decay", "0.01", "--objective", "ce",
                        "--patience", "3", "--monitor", "val_loss"], capsys)
    assert code == 0, err
    _, kwargs = fit_calls[0]
    expected = {"optimizer": "momentum", "momentum": 0.8, "schedule": "step",
                "decay_epochs": 2.0, "decay_rate": 0.5, "warmup_epochs": 1.0,
                "warmup_lr": 1e-5, "min_lr": 1e-6, "label_smoothing": 0.1,
                "gradient_clip_val": 1.0, "weight_decay": 0.01, "objectives": ["ce"],
                "early_stop_patience": 3, "monitor": "val_loss",
                "model_kwargs": {"pretrained": True}}
    assert {k: kwargs[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"model": "test_vit", "epochz": 2}, "the config has no key 'epochz'. Did you mean "
                                             "'epochs'"),
        ({"model": "test_vit", "sched": "step"}, "Did you mean 'schedule'"),
        ({"model": "test_vit", "lr": "fast"}, "Config error at 'lr'"),
        ({"model": "test_vit", "model_args": {"num_classes": 3}}, "num_classes comes from"),
        ({"epochs": 1}, "Expected a model"),
    ],
)
def test_bad_config_files_are_one_line_errors(
    tmp_path: Path, capsys: Any, fit_calls: list[Any], content: dict[str, Any], message: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(content))
    code, _, err = run(["train", "--config", str(config), "--out", str(tmp_path / "o")],
                       capsys)
    assert code == 2 and message in err and err.count("\n") == 1
    assert fit_calls == []


def test_missing_config_file_says_so(tmp_path: Path, capsys: Any) -> None:
    code, _, err = run(["train", "--config", str(tmp_path / "none.yaml"), "--out",
                        str(tmp_path / "o")], capsys)
    assert code == 2 and "does not exist" in err


def test_option_defaults_are_the_config_defaults() -> None:
    """An option left at its default must not differ from the config's default (the
    file's value wins then, and --help must say what a run without it does)."""
    fields = TrainConfig.model_fields
    checked = 0
    for name, param in inspect.signature(train_command).parameters.items():
        if name in fields:
            assert param.default == fields[name].get_default(call_default_factory=True), name
            checked += 1
    assert checked >= 30


def test_run_folder_config_yaml_trains_the_same_run_again(tmp_path: Path, capsys: Any) -> None:
    base = ["--n", "60", "--batch-size", "20", "--epochs", "1", "--seed", "2"]
    code, _, err = run(["train", "--model", "test_vit", "--model-arg", "img_size=32",
                        "--model-arg", "depth=1", "--sched", "constant", "--smoothing", "0.1",
                        *base, "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    code, _, err = run(["train", "--config", str(tmp_path / "a" / "config.yaml"), "--out",
                        str(tmp_path / "b")], capsys)
    assert code == 0, err
    first, second = (json.loads((tmp_path / d / "train.json").read_text()) for d in "ab")
    assert first["config"] == second["config"]
    assert first["config"]["schedule"] == "constant"
    assert first["init_sha256"] == second["init_sha256"]  # the same seeded initial weights
    assert len(first["history"]) == len(second["history"])
    for a, b in zip(first["history"], second["history"], strict=True):  # pytest 9: no nesting
        assert a == pytest.approx(b)


def test_pretrained_offline_names_a_local_checkpoint_which_then_trains(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    import huggingface_hub.constants
    import torch

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    base = ["train", "--model", "test_resnet", "--pretrained", "--n", "60", "--batch-size",
            "20", "--epochs", "1"]
    code, _, err = run([*base, "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "The weights of 'test_resnet' could not be fetched (offline?)" in err
    assert "--model test_resnet --model-arg checkpoint=PATH" in err
    assert "Check the path" not in err
    # what the message says works: the local weights are the run's initial weights
    import timm

    local = timm.create_model("test_resnet", num_classes=5)
    torch.save(local.state_dict(), tmp_path / "w.pth")
    code, _, err = run([*base, "--model-arg", f"checkpoint={tmp_path / 'w.pth'}", "--out",
                        str(tmp_path / "b")], capsys)
    assert code == 0, err
    digest = hashlib.sha256()
    for name, tensor in local.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    record = json.loads((tmp_path / "b" / "train.json").read_text())
    assert record["init_sha256"] == digest.hexdigest()
    assert record["config"]["model"]["pretrained"] is True


def test_fit_and_optimiser_defaults_are_the_config_defaults() -> None:
    """The same default lives in three signatures (TrainConfig, fit, OptimSettings): a run
    from Python and one from the command line must train alike (fit's None means "the
    usual": ce, the seed as data seed, ...)."""
    import dataclasses

    from viscope.train import fit
    from viscope.train.optim import OptimSettings

    fields = TrainConfig.model_fields
    checked = 0
    for name, param in inspect.signature(fit).parameters.items():
        if name in fields and param.default not in (inspect.Parameter.empty, None):
            assert param.default == fields[name].get_default(call_default_factory=True), name
            checked += 1
    for f in dataclasses.fields(OptimSettings):
        assert f.default == fields[f.name].get_default(call_default_factory=True), f.name
        checked += 1
    assert checked >= 25
