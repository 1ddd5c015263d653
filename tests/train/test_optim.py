"""Optimizer and schedule as timm's train.py sets them: the learning rate of every step
against its closed form, parameter groups, the recorded settings."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from viscope.errors import ViscopeError
from viscope.train import fit
from viscope.train.optim import OptimSettings, lr_at, make_optimizer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:lightning.*")

Splits = dict[str, Any]
ModelFactory = Callable[..., torch.nn.Module]


class StepLRs(pl.Callback):
    """The learning rate each optimizer step used (read before the step)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, i: int) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[1]["lr"])


def _warmup_then_cosine(t: int, lr: float, warmup: int, total: int, start: float = 0.0,
                        floor: float = 0.0) -> float:
    """Linear warmup from ``start`` to ``lr`` over ``warmup`` steps, then a half cosine
    from ``lr`` to ``floor`` over the remaining steps."""
    if t < warmup:
        return start + (lr - start) * t / warmup
    return floor + 0.5 * (lr - floor) * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))


def test_lr_of_every_step_is_linear_warmup_then_cosine(
    tiny_vit: ModelFactory, separable: Splits, tmp_path: Path
) -> None:
    recorder = StepLRs()
    fit(tiny_vit(2), separable, out=tmp_path, epochs=3, batch_size=32, lr=1e-2,
        warmup_epochs=1, min_lr=1e-4, progress=False, callbacks=[recorder])
    # 128 images / 32 = 4 steps per epoch: 4 warmup steps, then 8 of cosine
    expected = [_warmup_then_cosine(t, 1e-2, 4, 12, floor=1e-4) for t in range(12)]
    assert recorder.lrs == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert recorder.lrs[0] == 0.0 and recorder.lrs[4] == pytest.approx(1e-2)


def test_warmup_steps_and_warmup_lr(tiny_vit: ModelFactory, separable: Splits,
                                    tmp_path: Path) -> None:
    recorder = StepLRs()
    fit(tiny_vit(2), separable, out=tmp_path, epochs=2, batch_size=32, lr=1e-2,
        warmup_steps=3, warmup_lr=1e-3, progress=False, callbacks=[recorder])
    expected = [_warmup_then_cosine(t, 1e-2, 3, 8, start=1e-3) for t in range(8)]
    assert recorder.lrs == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        # step: x0.5 every 2 epochs of 3 steps, after a 2-step warmup
        (OptimSettings(lr=1.0, schedule="step", decay_epochs=2, decay_rate=0.5, warmup_steps=2),
         [0.0, 0.5] + [1.0] * 6 + [0.5] * 6 + [0.25] * 2),
        (OptimSettings(lr=1.0, schedule="constant", warmup_steps=4), [0, .25, .5, .75] + [1] * 12),
        (OptimSettings(lr=1.0, schedule="constant"), [1.0] * 16),
    ],
    ids=["step", "constant-warmup", "constant"],
)
def test_step_and_constant_schedules(settings: OptimSettings, expected: list[float]) -> None:
    assert [lr_at(settings, t, total=16, per_epoch=3) for t in range(16)] == pytest.approx(
        expected
    )


def _groups(optimizer: torch.optim.Optimizer, named: dict[int, str]) -> dict[float, set[str]]:
    return {g["weight_decay"]: {named[id(p)] for p in g["params"]} for g in optimizer.param_groups}


@pytest.mark.parametrize(
    ("name", "kind", "nesterov"),
    [("sgd", torch.optim.SGD, True), ("momentum", torch.optim.SGD, False),
     ("adamw", torch.optim.AdamW, None), ("adam", torch.optim.Adam, None)],
)
def test_optimizers_keep_no_decay_on_biases_norms_tokens_and_heads(
    tiny_vit: ModelFactory, name: str, kind: type, nesterov: bool | None
) -> None:
    model = tiny_vit(2)
    decoder = nn.Sequential(nn.Conv2d(64, 3, 1), nn.BatchNorm2d(3))
    settings = OptimSettings(optimizer=name, weight_decay=0.1, momentum=0.8, lr=0.5)
    optimizer = make_optimizer(model, settings=settings, extra=[decoder])
    assert isinstance(optimizer, kind)
    if nesterov is not None:
        assert optimizer.defaults["nesterov"] is nesterov and optimizer.defaults["momentum"] == 0.8
    named = {id(p): f"net.{n}" for n, p in model.net.named_parameters()}
    named.update({id(p): f"decoder.{n}" for n, p in decoder.named_parameters()})
    groups = _groups(optimizer, named)
    assert set(groups) == {0.0, 0.1} and sum(map(len, groups.values())) == len(named)
    no_decay, decay = groups[0.0], groups[0.1]
    assert {"net.pos_embed", "net.cls_token", "net.head.bias", "decoder.0.bias",
            "decoder.1.weight", "decoder.1.bias"} <= no_decay
    assert all(n.endswith(".weight") and "norm" not in n for n in decay)
    assert {"net.head.weight", "decoder.0.weight"} <= decay
    assert all(g["lr"] == 0.5 for g in optimizer.param_groups)


def test_training_with_sgd_and_gradient_clipping_learns(
    tiny_vit: ModelFactory, separable: Splits, tmp_path: Path
) -> None:
    result = fit(tiny_vit(2), separable, out=tmp_path, epochs=3, batch_size=32, lr=0.05,
                 optimizer="sgd", schedule="step", decay_epochs=2, label_smoothing=0.1,
                 gradient_clip_val=1.0, progress=False)
    assert result.test_acc is not None and result.test_acc >= 0.9
    config = json.loads((tmp_path / "train.json").read_text())["config"]
    assert config["optimizer"].startswith("sgd") and config["decay_epochs"] == 2
    assert config["objectives"] == [{"name": "ce", "weight": 1.0, "label_smoothing": 0.1}]
    assert config["trainer"] == {"gradient_clip_val": 1.0}


@pytest.mark.parametrize(
    ("change", "key"),
    [({"optimizer": "sgd"}, "optimizer"), ({"warmup_epochs": 1}, "warmup_epochs"),
     ({"label_smoothing": 0.1}, "objectives"), ({"min_lr": 1e-5}, "min_lr")],
)
def test_changed_optimisation_settings_are_another_run(
    run_config: dict[str, Any], finished_run: Any, tmp_path: Path, change: dict[str, Any],
    key: str,
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(finished_run.result.out, out)
    with pytest.raises(ViscopeError, match=rf"{key}: .*overwrite=True"):
        fit("test_vit", out=out, **{**run_config, **change})
    # the defaults spelled out are the same run as the recorded one
    again = fit("test_vit", out=out, optimizer="adamw", warmup_epochs=0, label_smoothing=0.0,
                min_lr=0.0, **run_config)
    assert again.skipped


def test_run_folder_holds_every_setting_in_config_yaml(finished_run: Any) -> None:
    import yaml

    settings = yaml.safe_load((finished_run.result.out / "config.yaml").read_text())
    assert settings["model"] == "test_vit" and settings["objectives"] == ["ce:1"]
    assert settings["model_args"] == {"img_size": 32, "patch_size": 8, "depth": 2}
    assert settings["optimizer"] == "adamw" and settings["warmup_epochs"] == 0.0
    assert settings["augment"] == "rotation" and settings["seed"] == 3
    assert settings["monitor"] == "val_acc" and settings["lr"] == 2e-3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"optimizer": "adamww"}, r"Unknown optimizer 'adamww'.*Did you mean 'adamw'"),
        ({"schedule": "cosin"}, r"schedule.*Did you mean 'cosine'"),
        ({"schedule": "step"}, r"decay_epochs"),
        ({"warmup_epochs": 1, "warmup_steps": 2}, r"not both"),
        ({"momentum": 1.5}, r"momentum"),
        ({"label_smoothing": 1.0}, r"label_smoothing"),
        ({"warmup_steps": -1}, r"warmup_steps"),
    ],
)
def test_bad_optimisation_settings_are_refused_up_front(
    tiny_vit: ModelFactory, separable: Splits, tmp_path: Path, kwargs: dict[str, Any],
    match: str,
) -> None:
    out = tmp_path / "run"
    with pytest.raises(ViscopeError, match=match):
        fit(tiny_vit(2), separable, out=out, progress=False, **kwargs)
    assert not out.exists()
