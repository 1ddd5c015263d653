"""``viscope matrix --track-invariance``: every training of the matrix tracks NV per
layer by epoch (epoch 0 equals a direct measurement of the initial weights), the model's
combined table and figure, and adding tracking to a finished matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from viscope.experiments import load_config, run_matrix

TRACK = dict(track_invariance="rotation,brightness", track_every=1, track_samples=8,
             track_params=3)
ONE = {**TRACK, "track_invariance": "rotation"}  # the fast test: one family


def tiny_config(**kw):
    base = dict(
        name="tiny", models=[{"name": "test_vit", "args": {"img_size": 32}, "label": "vit"}],
        dataset="shapes", n=150, train_families=["rotation", "identity"],
        eval_families=["rotation"], epochs=2, batch_size=32, samples=8, params=3,
        measure_batch_size=48,
    )
    base.update(kw)
    return load_config(overrides=base)


def stamps(folder, suffixes=(".json", ".pt")):
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*")
            if p.is_file() and p.suffix in suffixes and p.parent != folder}


def initial_weights_nv(family: str) -> pd.DataFrame:
    """NV per layer of the matrix's initial weights (the unit seeds torch with its seed
    before creating the model), measured directly on the same probe: the val split,
    seed 0, 8 samples, 3 values."""
    from viscope import data, models
    from viscope.invariance import measure

    val = data.create("shapes", split="val", size=32, n=150, seed=0)
    torch.manual_seed(0)
    net = models.create("test_vit", num_classes=len(val.classes), img_size=32)
    return measure(net, val, family, samples=8, params=3, batch_size=48, seed=0).per_layer()


def test_every_training_tracks_and_epoch_zero_is_the_initial_weights(tmp_path):
    out = tmp_path / "m"
    cfg = tiny_config(**ONE, epochs=1)
    res = run_matrix(cfg, out, log=None, progress=False)["vit"]
    assert res.trained == 2
    expected = {"rotation": initial_weights_nv("rotation")}
    frames = {}
    for fam in ("rotation", "identity"):
        table = pd.read_csv(out / "vit" / "train" / fam / "seed0" / "invariance_by_epoch.csv")
        assert sorted(table["epoch"].unique()) == [0, 1]
        for family, direct in expected.items():
            rows = table[(table["epoch"] == 0) & (table["family"] == family)]
            assert list(rows["layer"]) == list(direct["layer"])
            np.testing.assert_allclose(rows[["tv", "sv", "nv"]].to_numpy(),
                                       direct[["tv", "sv", "nv"]].to_numpy(), rtol=1e-6)
        frames[fam] = table
    # the combined table: each training's rows with its family and seed in front
    combined = pd.read_csv(out / "vit" / "invariance_by_epoch.csv")
    assert list(combined.columns[:2]) == ["train", "seed"]
    for fam, table in frames.items():
        mine = combined[combined["train"] == fam].drop(columns=["train", "seed"])
        pd.testing.assert_frame_equal(mine.reset_index(drop=True), table)
    assert (out / "vit" / "invariance_by_epoch.png").stat().st_size > 0
    # one figure per model; none drawn per training (~1.6 s of matplotlib each)
    assert not list((out / "vit" / "train").rglob("invariance*.png"))

    # resumed: nothing trained or measured again; tracking switched off keeps everything
    before = stamps(out, (".json", ".pt", ".csv"))
    again = run_matrix(cfg, out, log=None, progress=False)["vit"]
    off = run_matrix(tiny_config(epochs=1), out, log=None, progress=False)["vit"]
    assert (again.trained, again.measured, off.trained, off.measured) == (0, 0, 0, 0)
    after = stamps(out, (".json", ".pt", ".csv"))
    assert {k: v for k, v in after.items() if k.parts[1] == "train"} == {
        k: v for k, v in before.items() if k.parts[1] == "train"}


@pytest.mark.slow  # four trainings (~8 s on the shared cores)
def test_tracking_added_to_a_finished_matrix_retrains_to_the_same_weights(tmp_path):
    """A finished training has no epoch-by-epoch weights: asking for tracking trains it
    again with the tracker; the tracker does not change the weights (CPU), so the cells
    are kept."""
    from viscope.models.checkpoint import extract_state_dict, read_checkpoint

    out = tmp_path / "m"
    run_matrix(tiny_config(), out, log=None, progress=False)
    best = out / "vit" / "train" / "rotation" / "seed0" / "best.pt"
    old = extract_state_dict(read_checkpoint(best))
    cells = stamps(out / "vit" / "cells")
    res = run_matrix(tiny_config(**TRACK), out, log=None, progress=False)["vit"]
    assert res.trained == 2 and res.measured == 0
    new = extract_state_dict(read_checkpoint(best))
    assert all(torch.equal(old[k], new[k]) for k in old)
    assert stamps(out / "vit" / "cells") == cells
    assert (best.parent / "invariance_by_epoch.csv").is_file()
    from viscope.report.html import write_report

    assert "vit: NV of the last layer during training" in write_report([out]).read_text()
    # other tracking settings: trained again, its old table replaced (no stale epochs)
    res = run_matrix(tiny_config(**{**TRACK, "track_every": 2}), out, log=None,
                     progress=False)["vit"]
    assert res.trained == 2
    table = pd.read_csv(best.parent / "invariance_by_epoch.csv")
    assert sorted(table["epoch"].unique()) == [0, 2]
    # a table removed by hand: that training alone is tracked again
    (best.parent / "invariance_by_epoch.csv").unlink()
    res = run_matrix(tiny_config(**{**TRACK, "track_every": 2}), out, log=None,
                     progress=False)["vit"]
    assert res.trained == 1 and res.measured == 0
    pd.testing.assert_frame_equal(pd.read_csv(best.parent / "invariance_by_epoch.csv")
                                  .drop(columns="seconds"), table.drop(columns="seconds"))
