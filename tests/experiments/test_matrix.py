"""The matrix study end to end on tiny data: tables, labels, values, and resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from viscope.errors import ViscopeError
from viscope.experiments import load_config, run_matrix
from viscope.report import to_latex, to_markdown


def tiny_config(**kw):
    base = dict(
        name="tiny", models=[{"name": "test_vit", "args": {"img_size": 32}, "label": "vit"}],
        dataset="shapes", n=150, train_families=["rotation", "identity"],
        eval_families=["rotation", "brightness"], epochs=1, batch_size=32, samples=8,
        params=3, measure_batch_size=48,
    )
    base.update(kw)
    return load_config(overrides=base)


def files(folder):
    """Checkpoints, training records and cells (config/environment record the last call)."""
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*")
            if p.is_file() and p.suffix in (".json", ".pt") and p.parent != folder}


def test_two_by_two_matrix_runs_and_resumes(tmp_path):
    cfg = tiny_config()
    out = tmp_path / "m"
    res = run_matrix(cfg, out, log=None, progress=False)["vit"]
    assert res.trained == 2 and res.measured == 2 * 3
    inv = pd.read_csv(out / "vit" / "invariance.csv", index_col=0)
    assert list(inv.index) == ["rotation", "identity"]
    assert list(inv.columns) == ["rotation", "brightness", "average"]
    vals = inv.to_numpy()
    assert np.isfinite(vals).all() and (vals >= 0).all()
    np.testing.assert_allclose(inv["average"], inv[["rotation", "brightness"]].mean(axis=1),
                               rtol=1e-5)  # the CSV keeps 6 significant digits
    acc = pd.read_csv(out / "vit" / "accuracy.csv", index_col=0)
    assert list(acc.columns) == ["clean", "rotation", "brightness"]
    assert ((acc.to_numpy() >= 0) & (acc.to_numpy() <= 1)).all()
    for f in ("invariance.md", "invariance.tex", "invariance.png", "accuracy.png",
              "summary.md"):
        assert (out / "vit" / f).exists(), f
    assert "of 1** columns" in (out / "vit" / "summary.md").read_text()
    assert (out / "config.yaml").exists() and (out / "environment.json").exists()

    # resume: nothing is retrained or re-measured (file timestamps, not logs)
    before = files(out)
    again = run_matrix(cfg, out, log=None, progress=False)["vit"]
    assert again.trained == 0 and again.measured == 0
    assert files(out) == before
    pd.testing.assert_frame_equal(again.invariance, res.invariance)

    # an interruption loses one cell: delete it, and only it is recomputed
    (out / "vit" / "cells" / "identity" / "seed0" / "brightness.json").unlink()
    third = run_matrix(cfg, out, log=None, progress=False)["vit"]
    assert third.trained == 0 and third.measured == 1
    after = files(out)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {(out / "vit/cells/identity/seed0/brightness.json").relative_to(out)}


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ViscopeError, match="train_families"):
        tiny_config(train_families=["rotate"])
    with pytest.raises(ViscopeError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ViscopeError, match="epoch"):
        tiny_config(epoch=3)


def test_shipped_configs_load():
    from pathlib import Path

    import viscope

    folder = Path(viscope.__file__).parent / "configs"
    demo = load_config(folder / "matrix-demo.yaml")
    assert len(demo.train_families) == 11 and len(demo.eval_families) == 10
    full = load_config(folder / "matrix-fastervit.yaml")
    assert full.models[0].name == "fastervit_0" and full.image_size == 224


def test_tables_render_mean_and_std():
    m = pd.DataFrame([[0.5, 0.25]], index=["invert"], columns=["rotation", "average"])
    s = pd.DataFrame([[0.01, 0.02]], index=["invert"], columns=["rotation", "average"])
    md = to_markdown(m, s)
    assert "| color inversion | 0.50 ± 0.01 | 0.25 ± 0.02 |" in md and "rotate" in md
    assert r"0.50 $\pm$ 0.01" in to_latex(m, s)


def test_several_seeds_give_mean_and_std(tmp_path):
    """Cells of two seeds are averaged, with the sample std (ddof 1) beside them."""
    import json

    from viscope.experiments.matrix import _tabulate

    cfg = tiny_config(seeds=[0, 1])
    folder = tmp_path / "vit"
    nv = {(0, "rotation", "rotation"): 0.2, (1, "rotation", "rotation"): 0.4,
          (0, "rotation", "brightness"): 0.6, (1, "rotation", "brightness"): 0.6,
          (0, "identity", "rotation"): 0.9, (1, "identity", "rotation"): 0.7,
          (0, "identity", "brightness"): 0.5, (1, "identity", "brightness"): 0.3}
    for (seed, tr, ev), v in nv.items():
        p = folder / "cells" / tr / f"seed{seed}" / f"{ev}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"nv": v, "accuracy": 0.5 + seed / 10}))
        (p.parent / "clean.json").write_text(json.dumps({"accuracy": 0.9 - seed / 10}))
    res = _tabulate(cfg, cfg.models[0], folder, 0, 0)
    assert res.invariance.loc["rotation", "rotation"] == pytest.approx(0.3)
    assert res.invariance_std.loc["rotation", "rotation"] == pytest.approx(np.std([.2, .4],
                                                                                  ddof=1))
    assert res.invariance_std.loc["rotation", "brightness"] == pytest.approx(0.0)
    # average: per seed over eval families, then mean and std over seeds
    assert res.invariance.loc["identity", "average"] == pytest.approx(0.6)
    assert res.invariance_std.loc["identity", "average"] == pytest.approx(np.std([.7, .5],
                                                                                 ddof=1))
    assert res.accuracy.loc["identity", "clean"] == pytest.approx(0.85)
    assert "±" in (folder / "invariance.md").read_text()
    summary = (folder / "summary.md").read_text()
    assert "in **1 of 1** columns: rotation." in summary
