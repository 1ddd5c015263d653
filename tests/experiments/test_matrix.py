"""The matrix study end to end on tiny data: tables, labels, values, resume (also after
changed inputs), overrides, LaTeX escaping and the heatmap's boxes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from viscope.errors import ViscopeError
from viscope.experiments import load_config, run_matrix
from viscope.report import heatmap, to_latex, to_markdown


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


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochz": 2}, "Config error at 'epochz': the config has no key 'epochz'. Did you mean "
                        "'epochs'? Known keys: name, models, "),
        ({"batchsize": 8}, "Did you mean 'batch_size' or "),
        ({"models.0.lrr": 0.1}, "Config error at 'models.0.lrr': a model entry has no key "
                                "'lrr'. Did you mean 'lr'? Known keys: name, args, label, "
                                "epochs, lr, pretrained. Fix the YAML or the override."),
        ({"models.1.epoch": 3}, "Did you mean 'epochs'?"),
    ],
)
def test_unknown_keys_suggest_the_key_meant(overrides, message):
    with pytest.raises(ViscopeError) as err:
        load_config(_demo(), overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_shipped_configs_load():
    from pathlib import Path

    import viscope

    folder = Path(viscope.__file__).parent / "configs"
    demo = load_config(folder / "matrix-demo.yaml")
    assert len(demo.train_families) == 11 and len(demo.eval_families) == 10
    full = load_config(folder / "matrix-fastervit.yaml")
    assert full.models[0].name == "fastervit_0" and full.image_size == 224


def test_every_evaluation_family_of_the_demo_changes_its_images():
    """No column of the demo's matrix is 0 by construction: each evaluation family moves
    the demo's images (grayscale left the grey `digits` unchanged)."""
    import torch

    from viscope import data, transforms

    cfg = load_config(_demo())
    images = torch.stack([data.create(cfg.dataset, size=cfg.image_size)[i][0]
                          for i in range(16)])
    for name in cfg.eval_families:
        fam = transforms.create(name)
        grid = fam.grid(cfg.params)
        moved = fam.apply(images.repeat_interleave(len(grid), 0),
                          grid.repeat(len(images), *[1] * (grid.ndim - 1)))
        change = (moved.reshape(len(images), len(grid), -1) - images.flatten(1)[:, None])
        assert change.abs().amax(dim=(0, 2)).max() > 0.05, name
    grey = transforms.create("grayscale")
    digits = torch.stack([data.create("digits")[i][0] for i in range(16)])
    g = grey.grid(cfg.params)[-1:].repeat(16, *[1] * (grey.grid(2).ndim - 1))
    assert (grey.apply(digits, g) - digits).abs().max() < 1e-3  # luma weights sum to 0.9999


def test_tables_render_mean_and_std():
    m = pd.DataFrame([[0.5, 0.25]], index=["invert"], columns=["rotation", "average"])
    s = pd.DataFrame([[0.01, 0.02]], index=["invert"], columns=["rotation", "average"])
    md = to_markdown(m, s)
    assert "| color inversion (invert) | 0.50 ± 0.01 | 0.25 ± 0.02 |" in md and "rotate" in md
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


def _mtimes(folder, pattern):
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob(pattern)}


def test_resume_recomputes_cells_whose_inputs_changed(tmp_path):
    """A re-run with other measurement or training settings never reuses stale cells;
    one that only changes a hardware setting (batch size of the measurement) reuses all."""
    out = tmp_path / "m"
    first = run_matrix(tiny_config(), out, log=None, progress=False)["vit"]
    assert first.trained == 2 and first.measured == 6
    ckpts = _mtimes(out, "best.pt")

    # measurement settings: every measured cell is measured again, no model is retrained
    # (clean accuracy does not depend on them and stays)
    clean = _mtimes(out, "clean.json")
    fewer = run_matrix(tiny_config(samples=6, params=2), out, log=None, progress=False)["vit"]
    assert fewer.trained == 0 and fewer.measured == 4
    assert _mtimes(out, "best.pt") == ckpts and _mtimes(out, "clean.json") == clean
    cell = json.loads((out / "vit/cells/rotation/seed0/rotation.json").read_text())
    assert cell["inputs"]["measure"]["samples"] == 6
    assert cell["inputs"]["measure"]["params"] == 2

    # hardware only: nothing is recomputed
    before = files(out)
    same = run_matrix(tiny_config(samples=6, params=2, measure_batch_size=12), out, log=None,
                      progress=False)["vit"]
    assert same.trained == 0 and same.measured == 0 and files(out) == before

    # training settings (per-model epochs and lr): both models are trained again with
    # them, and every cell is measured again on the new weights
    models = [{"name": "test_vit", "args": {"img_size": 32}, "label": "vit", "epochs": 2,
               "lr": 5e-4}]
    longer = run_matrix(tiny_config(samples=6, params=2, models=models), out, log=None,
                        progress=False)["vit"]
    assert longer.trained == 2 and longer.measured == 6
    for fam in ("rotation", "identity"):
        rec = json.loads((out / f"vit/train/{fam}/seed0/train.json").read_text())
        assert rec["config"]["epochs"] == 2 and rec["config"]["lr"] == pytest.approx(5e-4)
        assert rec["status"] == "finished"


def test_set_overrides_reach_model_entries_with_types():
    from viscope.cli_common import parse_kv as _parse_kv

    over = _parse_kv(["epochs=2", "lr=1e-3", "models.0.epochs=3", "models.1.lr=0.01",
                      "models.0.args.img_size=64"], "--set")
    cfg = load_config(_demo(), over)
    assert cfg.epochs == 2 and isinstance(cfg.epochs, int)
    assert cfg.lr == pytest.approx(1e-3) and isinstance(cfg.lr, float)
    assert cfg.models[0].epochs == 3 and isinstance(cfg.models[0].epochs, int)
    assert cfg.models[1].lr == pytest.approx(0.01)
    assert cfg.models[0].args["img_size"] == 64 and cfg.models[0].args["patch_size"] == 8
    for bad in ({"models.5.epochs": 1}, {"models.x.epochs": 1}, {"epochs.x": 1}):
        with pytest.raises(ViscopeError, match="override"):
            load_config(_demo(), bad)


def _demo():
    from pathlib import Path

    import viscope

    return Path(viscope.__file__).parent / "configs" / "matrix-demo.yaml"


def test_latex_escapes_names_and_caption():
    m = pd.DataFrame([[0.5, 0.25]], index=["my_family"], columns=["rotation", "average"])
    tex = to_latex(m, caption="Average NV · test_vit on /data/my_set (32 px), 50% & more")
    assert r"test\_vit" in tex and r"my\_set" in tex and r"50\% \& more" in tex
    assert r"my\_family" in tex
    assert "test_vit" not in tex.replace(r"test\_vit", "")
    # the numbers themselves are untouched
    assert "0.50 & 0.25" in tex


def test_tabulated_latex_of_unlabelled_model_compiles_underscores(tmp_path):
    from viscope.experiments.matrix import _tabulate

    cfg = tiny_config(models=[{"name": "test_vit", "args": {"img_size": 32}}])
    folder = tmp_path / "test_vit"
    for tr in cfg.train_families:
        d = folder / "cells" / tr / "seed0"
        d.mkdir(parents=True)
        (d / "clean.json").write_text(json.dumps({"accuracy": 0.9}))
        for ev in cfg.eval_families:
            (d / f"{ev}.json").write_text(json.dumps({"nv": 0.5, "accuracy": 0.5}))
    _tabulate(cfg, cfg.models[0], folder, 0, 0)
    for stem in ("invariance", "accuracy"):
        tex = (folder / f"{stem}.tex").read_text()
        assert r"test\_vit" in tex and "test_vit" not in tex.replace(r"test\_vit", "")


def _boxes(monkeypatch, mean, lower_is_better, tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    figs = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    heatmap(mean, tmp_path / "h.png", title="t", colorbar="c",
            lower_is_better=lower_is_better)
    ax = figs[0].axes[0]
    boxes = {(round(p.get_x() + 0.5), round(p.get_y() + 0.5)) for p in ax.patches
             if isinstance(p, Rectangle) and not p.get_fill()}
    real_close(figs[0])
    return boxes  # (column, row)


def test_heatmap_boxes_best_row_per_column(monkeypatch, tmp_path):
    """NV: the lowest value of each column; accuracy: the highest; NaN and inf never win
    and a column without finite values has no box."""
    m = pd.DataFrame([[0.9, np.nan, 0.2, np.nan],
                      [0.1, 0.5, np.inf, np.nan],
                      [0.4, 0.3, 0.6, np.nan]],
                     index=["rotation", "scale", "identity"],
                     columns=["rotation", "scale", "invert", "contrast"])
    assert _boxes(monkeypatch, m, True, tmp_path) == {(0, 1), (1, 2), (2, 0)}
    acc = m.replace(np.inf, np.nan)
    assert _boxes(monkeypatch, acc, False, tmp_path) == {(0, 0), (1, 1), (2, 2)}


def test_tables_show_missing_values_as_a_dash():
    m = pd.DataFrame([[np.nan, np.inf, 0.125]], index=["identity"],
                     columns=["rotation", "scale", "average"])
    md = to_markdown(m)
    assert "| identity | — | — | 0.12 |" in md
    assert "nan" not in md.lower() and "inf" not in md.lower()
    assert "nan" not in to_latex(m).lower()


def test_heatmap_boxes_ties_at_the_shown_precision(monkeypatch, tmp_path):
    """Two rows tied at 2 decimals are both boxed; a column where every row ties (grayscale
    on grey images: 0.00 everywhere) has no box, since no row is better there."""
    m = pd.DataFrame([[0.301, 1e-7, 0.5],
                      [0.304, 2e-7, 0.2],
                      [0.7, 0.0, 0.9]],
                     index=["rotation", "scale", "identity"],
                     columns=["rotation", "grayscale", "invert"])
    assert _boxes(monkeypatch, m, True, tmp_path) == {(0, 0), (0, 1), (2, 1)}


def test_training_folders_without_recorded_inputs_are_reused_or_replaced(tmp_path):
    """Folders of an older viscope (no inputs.json, cells without inputs): a training made
    with the same settings is kept, one made with other settings is trained again instead
    of stopping the whole run."""
    out = tmp_path / "m"
    run_matrix(tiny_config(), out, log=None, progress=False)

    def make_legacy():
        for p in out.rglob("inputs.json"):
            p.unlink()
        for p in (out / "vit" / "cells").rglob("*.json"):
            cell = json.loads(p.read_text())
            cell.pop("inputs")
            p.write_text(json.dumps(cell))

    make_legacy()
    ckpts = _mtimes(out, "best.pt")
    same = run_matrix(tiny_config(), out, log=None, progress=False)["vit"]
    assert same.trained == 0 and same.measured == 6  # cells of unknown inputs: measured
    assert _mtimes(out, "best.pt") == ckpts

    make_legacy()
    logs = []
    models = [{"name": "test_vit", "args": {"img_size": 32}, "label": "vit", "epochs": 2}]
    longer = run_matrix(tiny_config(models=models), out, log=logs.append, progress=False)["vit"]
    assert longer.trained == 2 and longer.measured == 6
    assert sum("other settings" in s and "epochs: 1 -> 2" in s for s in logs) == 2
    for fam in ("rotation", "identity"):
        rec = json.loads((out / f"vit/train/{fam}/seed0/train.json").read_text())
        assert rec["config"]["epochs"] == 2 and rec["status"] == "finished"


def test_summary_names_the_rows_the_heatmap_boxes_as_ties():
    from viscope.experiments.matrix import summary

    inv = pd.DataFrame({"scale": [0.9879, 0.9928, 1.05], "rotation": [1.2, 1.1, 1.3]},
                       index=["brightness", "contrast", "identity"])
    inv["average"] = inv.mean(axis=1)
    acc = pd.DataFrame({"clean": [0.9] * 3, "scale": [0.8] * 3, "rotation": [0.7] * 3},
                       index=inv.index)
    text = summary(inv, acc, "m", tiny_config(), classes=5)
    assert "scale → brightness (tied at 2 decimals: contrast)" in text  # 0.99 and 0.99
    assert "rotation → contrast," in text or "rotation → contrast." in text  # no tie
