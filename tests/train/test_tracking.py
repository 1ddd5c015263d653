"""InvarianceTracker: invariance measured during training, against the engine run by hand."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch

from viscope import data, models
from viscope.errors import ViscopeError
from viscope.invariance import measure
from viscope.train import fit
from viscope.train.tracking import (
    DEPTH_FIGURE,
    LAST_LAYER_FIGURE,
    TABLE,
    InvarianceTracker,
    plot_tracking,
)

HERE = Path(__file__).parent
TINY = {"img_size": 32, "patch_size": 8, "depth": 2}
FAMILIES = ["rotation", "brightness"]
PROBE = {"samples": 12, "params": 3, "seed": 5}


def _splits() -> dict[str, Any]:
    return {s: data.create("shapes", split=s, n=100, seed=1) for s in ("train", "val", "test")}


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.create("test_vit", num_classes=5, **TINY)


def _fit(out: Path, splits: dict[str, Any], callbacks: list[pl.Callback], epochs: int = 3,
         **kwargs: Any):
    return fit(_model(), splits, out=out, epochs=epochs, batch_size=16, lr=2e-3,
               augment="rotation", progress=False, seed=3, callbacks=callbacks, **kwargs)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tracked run of 3 epochs (every epoch) and its initial weights."""
    splits = _splits()
    out = tmp_path_factory.mktemp("tracked")
    initial = _model()  # fit trains the object it is given: the same seed, a copy
    tracker = InvarianceTracker(FAMILIES, "val", every=1, **PROBE)
    final = FinalWeights()
    result = _fit(out, splits, [tracker, final])
    return {"splits": splits, "out": out, "initial": initial, "tracker": tracker,
            "result": result, "final": final.state}


class FinalWeights(pl.Callback):
    """The model's weights when training ends (``best.pt`` holds the best epoch's)."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.state = {k: v.clone() for k, v in pl_module.model.state_dict().items()}


def _values(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns="seconds").reset_index(drop=True)


def test_epoch_zero_equals_the_engine_on_the_untrained_model(tracked: dict[str, Any]) -> None:
    table = tracked["tracker"].table
    for family in FAMILIES:
        expected = measure(tracked["initial"], tracked["splits"]["val"], family,
                           **PROBE).per_layer()
        got = table[(table["epoch"] == 0) & (table["family"] == family)]
        assert list(got["layer"]) == list(expected["layer"])
        for q in ("depth", "tv", "sv", "nv"):
            np.testing.assert_array_equal(got[q].to_numpy(), expected[q].to_numpy())


def test_last_epoch_equals_the_engine_on_the_final_weights(tracked: dict[str, Any]) -> None:
    model = _model()
    model.load_state_dict(tracked["final"])
    table = tracked["tracker"].table
    for family in FAMILIES:
        expected = measure(model, tracked["splits"]["val"], family, **PROBE).per_layer()
        got = table[(table["epoch"] == 3) & (table["family"] == family)]
        np.testing.assert_allclose(got["nv"].to_numpy(), expected["nv"].to_numpy(),
                                   rtol=1e-6)


def test_table_has_a_row_per_epoch_family_and_layer_on_disk(tracked: dict[str, Any]) -> None:
    table = pd.read_csv(tracked["out"] / TABLE)
    layers = models.select_layers(_model(), None, input_size=(3, 32, 32))
    assert len(table) == 4 * len(FAMILIES) * len(layers)  # epochs 0, 1, 2, 3
    assert list(table.columns) == ["epoch", "family", "layer", "depth", "tv", "sv", "nv",
                                   "seconds"]
    assert sorted(table["epoch"].unique()) == [0, 1, 2, 3]
    assert (table["seconds"] > 0).all()
    np.testing.assert_allclose(table["nv"], table["tv"] / table["sv"], rtol=0.5)  # NV's sense
    assert [e for e, _ in tracked["tracker"].seconds] == [0, 1, 2, 3]
    metrics = pd.read_csv(tracked["out"] / "metrics.csv")
    assert metrics["tracking_seconds"].notna().sum() == 4  # the time, visible in the log


def test_figures_are_written(tracked: dict[str, Any]) -> None:
    for name in [DEPTH_FIGURE, LAST_LAYER_FIGURE]:
        path = tracked["out"] / name
        assert path.is_file() and path.stat().st_size > 5000, name


def test_training_with_and_without_the_tracker_gives_the_same_weights(
    tracked: dict[str, Any], tmp_path: Path
) -> None:
    final = FinalWeights()
    _fit(tmp_path, _splits(), [final])
    ours, theirs = tracked["final"], final.state
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k


def test_every_two_measures_at_0_2_4_and_the_last(tmp_path: Path) -> None:
    splits = {s: data.create("shapes", split=s, n=40, seed=1) for s in ("train", "val")}
    tracker = InvarianceTracker(["rotation"], splits["val"], every=2, samples=6, params=2,
                                figures=False)
    _fit(tmp_path, splits, [tracker], epochs=5)
    assert sorted(tracker.table["epoch"].unique()) == [0, 2, 4, 5]
    assert [e for e, _ in tracker.seconds] == [0, 2, 4, 5]


@pytest.mark.parametrize(("every", "epochs", "expected"), [
    (4, 5, [0, 5]),        # epoch 4 is 1 < 4/2 before the last: the last stands in for it
    (4, 6, [0, 4, 6]),     # 2 epochs before the last is not closer than half a period
    (3, 7, [0, 3, 7]),     # 7 - 6 = 1 < 1.5: epoch 6 left to the last
])
def test_a_scheduled_measurement_just_before_the_last_is_left_to_it(
    tmp_path: Path, every: int, epochs: int, expected: list[int]
) -> None:
    splits = {s: data.create("shapes", split=s, n=40, seed=1) for s in ("train", "val")}
    tracker = InvarianceTracker(["rotation"], splits["val"], every=every, samples=6,
                                params=2, figures=False)
    _fit(tmp_path, splits, [tracker], epochs=epochs)
    assert [e for e, _ in tracker.seconds] == expected


class Crash(pl.Callback):
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 2:
            raise RuntimeError("simulated crash")


def test_a_resumed_training_appends_without_duplicates(
    tracked: dict[str, Any], tmp_path: Path
) -> None:
    splits = tracked["splits"]
    first = InvarianceTracker(FAMILIES, "val", every=1, **PROBE)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(tmp_path, splits, [first, Crash()], keep_checkpoints=True)
    assert sorted(pd.read_csv(tmp_path / TABLE)["epoch"].unique()) == [0, 1, 2]
    second = InvarianceTracker(FAMILIES, "val", every=1, **PROBE)
    _fit(tmp_path, splits, [second])
    # Lightning resumes from the last improving epoch's checkpoint and trains the epochs
    # after it again: those are measured again, replacing their rows
    assert second.seconds and second.seconds[-1][0] == 3
    assert 0 not in [e for e, _ in second.seconds]
    pd.testing.assert_frame_equal(_values(pd.read_csv(tmp_path / TABLE)),
                                  _values(pd.read_csv(tracked["out"] / TABLE)))


def test_invariant_by_construction_gives_zero_at_every_epoch(tmp_path: Path) -> None:
    """digits are grey (R = G = B): grayscale changes no image, so TV ~ 0 (float rounding
    of the luma weights) while SV is not."""
    splits = {s: data.create("digits", split=s, n=60, seed=0) for s in ("train", "val")}
    tracker = InvarianceTracker("grayscale", "val", every=1, samples=8, params=3,
                                figures=False)
    torch.manual_seed(0)
    fit(models.create("test_vit", num_classes=10, **TINY), splits, out=tmp_path, epochs=2,
        batch_size=16, progress=False, callbacks=[tracker])
    table = tracker.table
    assert sorted(table["epoch"].unique()) == [0, 1, 2]
    assert (table["sv"] > 1e-3).all()
    assert (table["nv"] < 1e-3).all(), table[["epoch", "layer", "nv"]]


def test_measurement_leaves_modes_rng_and_gradients_as_they_were() -> None:
    model = _model()
    model.train()
    frozen = [m for name, m in model.named_modules() if name.endswith("blocks.0")]
    assert frozen
    frozen[0].eval()  # a frozen part stays in eval mode
    modes = [m.training for m in model.modules()]
    tracker = InvarianceTracker("rotation", data.create("shapes", n=20), samples=4, params=2)
    def draws() -> tuple[torch.Tensor, np.ndarray, float]:
        return torch.rand(3), np.random.rand(3), random.random()  # noqa: NPY002

    def seed() -> None:  # the global generators, as Lightning's seed_everything seeds them
        torch.manual_seed(11)
        np.random.seed(11)  # noqa: NPY002
        random.seed(11)

    seed()
    tracker.measure_now(model, 0)
    after = draws()
    seed()
    expected = draws()
    assert torch.equal(after[0], expected[0])
    np.testing.assert_array_equal(after[1], expected[1])
    assert after[2] == expected[2]
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())


def test_errors_say_what_was_expected() -> None:
    with pytest.raises(ViscopeError, match="at least one transformation family"):
        InvarianceTracker("", "val")
    with pytest.raises(ViscopeError, match="every >= 1"):
        InvarianceTracker("rotation", "val", every=0)
    with pytest.raises(ViscopeError):
        InvarianceTracker("rotashun", "val")
    with pytest.raises(ViscopeError, match="'nv' column"):
        plot_tracking(pd.DataFrame({"epoch": [0]}), ".")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_tracking_equals_one_process_on_the_final_weights(tmp_path: Path) -> None:
    """Lightning DDP (gloo, 2 CPU processes under torchrun): each rank measures its shard
    of the probe and the engine merges the states; rank 0 alone writes the table, whose
    last epoch equals one process's ``measure`` of the saved final weights."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(_free_port()), str(HERE / "tracking_worker.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"DDP run: {time.perf_counter() - start:.1f} s")
    sys.path.insert(0, str(HERE))
    import tracking_worker

    table = pd.read_csv(tmp_path / TABLE)
    model = tracking_worker.model()
    final = torch.load(tmp_path / "final.pt")
    assert final["world"] == 2
    model.load_state_dict(final["model"])
    last = table["epoch"].max()
    assert last == tracking_worker.EPOCHS
    for family in tracking_worker.FAMILIES:
        expected = measure(model, tracking_worker.splits()["val"], family,
                           **tracking_worker.PROBE).per_layer()
        got = table[(table["epoch"] == last) & (table["family"] == family)]
        np.testing.assert_allclose(got["nv"].to_numpy(), expected["nv"].to_numpy(),
                                   rtol=1e-5)


def test_viscope_train_track_invariance_writes_the_table(tmp_path: Path) -> None:
    from viscope.cli import main

    out = tmp_path / "run"
    try:
        main(["train", "--out", str(out), "--model", "test_vit", "--model-arg", "img_size=32",
              "--model-arg", "patch_size=8", "--model-arg", "depth=2", "--n", "60",
              "--epochs", "3", "--batch-size", "16", "--track-invariance",
              "rotation,contrast", "--track-every", "2"])
    except SystemExit as e:
        assert not e.code
    table = pd.read_csv(out / TABLE)
    assert sorted(table["epoch"].unique()) == [0, 2, 3]
    assert set(table["family"]) == {"rotation", "contrast"}
    assert (out / DEPTH_FIGURE).is_file()
    # tracking is no setting of the run: config.yaml trains the same run again
    assert "track" not in (out / "config.yaml").read_text()
