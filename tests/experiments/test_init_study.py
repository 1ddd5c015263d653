"""``viscope init-study``: epochs to target and the paired test against hand computations,
bad settings, and the study end to end on tiny settings."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student

from viscope.errors import ViscopeError
from viscope.experiments.init_study.config import load_config
from viscope.experiments.init_study.report import markdown, per_run, summarise_runs, verdict
from viscope.experiments.init_study.run import run


def _history(curves: dict[tuple[str, int], list[float]]) -> pd.DataFrame:
    rows = []
    for (method, seed), accs in curves.items():
        for e, a in enumerate(accs):
            rows.append({"condition": "c", "method": method, "seed": seed, "epoch": e,
                         "train_loss": 1.0, "val_loss": 1.0, "val_acc": a,
                         "seconds": 10.0 * (e + 1) + seed})
    return pd.DataFrame(rows)


def _paired_p(a, b):
    d = np.asarray(a, float) - np.asarray(b, float)
    tstat = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    return 2 * student.sf(abs(tstat), df=len(d) - 1)


def test_epochs_to_target_and_paired_test_by_hand():
    target = 0.5
    h = _history({
        ("default", 0): [0.1, 0.3, 0.45, 0.6],   # epoch 4
        ("default", 1): [0.2, 0.5, 0.7, 0.8],    # epoch 2 (equal to the target counts)
        ("default", 2): [0.1, 0.2, 0.3, 0.52],   # epoch 4
        ("pca", 2): [0.6, 0.7, 0.7, 0.7],        # epoch 1 (rows out of seed order)
        ("pca", 0): [0.2, 0.55, 0.6, 0.7],       # epoch 2
        ("pca", 1): [0.3, 0.4, 0.45, 0.49],      # never
        ("zca", 0): [0.5, 0.6, 0.6, 0.6],        # epoch 1
        ("zca", 1): [0.1, 0.6, 0.6, 0.6],        # epoch 2
        ("zca", 2): [0.4, 0.45, 0.6, 0.6],       # epoch 3
        ("kmeans", 0): [0.1, 0.1, 0.5, 0.5],     # epoch 3: one sooner than default on
        ("kmeans", 1): [0.5, 0.5, 0.5, 0.5],     # every seed, a difference without
        ("kmeans", 2): [0.1, 0.1, 0.5, 0.5],     # variance: p undefined, not 0
    })
    runs = per_run(h, target, {("c", "pca", 0): 0.9})
    r = runs.set_index(["method", "seed"])
    assert r.loc[("pca", 1), "reached"] == False  # noqa: E712 - numpy bool
    assert np.isnan(r.loc[("pca", 1), "epochs_to_target"])
    assert r.loc[("pca", 2), "epochs_to_target"] == 1
    assert r.loc[("default", 1), "seconds_to_target"] == 21.0  # epoch 2 of seed 1
    assert r.loc[("pca", 0), "test_acc"] == 0.9 and np.isnan(r.loc[("pca", 1), "test_acc"])
    assert r.loc[("pca", 1), "final_val_acc"] == 0.49

    t = summarise_runs(runs).set_index("method")
    assert t.loc["pca", "reached"] == 2 and t.loc["default", "reached"] == 3
    # pca: mean and std over the two runs that reached it; the test over seeds 0 and 2
    assert t.loc["pca", "epochs_to_target_mean"] == pytest.approx(1.5)
    assert t.loc["pca", "epochs_to_target_std"] == pytest.approx(np.std([2, 1], ddof=1))
    assert t.loc["pca", "epochs_to_target_pairs"] == 2
    assert t.loc["pca", "epochs_to_target_p"] == pytest.approx(_paired_p([2, 1], [4, 4]))
    # zca: all three seeds paired; default epochs by seed: 4, 2, 4
    assert t.loc["zca", "epochs_to_target_p"] == pytest.approx(_paired_p([1, 2, 3], [4, 2, 4]))
    assert t.loc["zca", "final_val_acc_p"] == pytest.approx(
        _paired_p([0.6, 0.6, 0.6], [0.6, 0.8, 0.52]))
    assert np.isnan(t.loc["default", "epochs_to_target_p"])
    assert t.loc["kmeans", "epochs_to_target_pairs"] == 3
    assert np.isnan(t.loc["kmeans", "epochs_to_target_p"])

    md = markdown(t.reset_index())
    assert "| c | pca | 2/3 |" in md and "| c | default | 3/3 | 3.33 ± 1.2 |" in md
    (line,) = verdict(t.reset_index())
    assert line.startswith("c: `default` 3/3 reached, 3.33 epochs. Sooner: zca (3/3")
    assert "kmeans (3/3 reached, 2.33 epochs, p —)" in line
    assert "Not sooner: pca (2/3 reached" in line  # fewer runs reached it


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(ViscopeError, match="Unknown initialisation method 'pcaa'"):
        run(load_config(overrides={"methods": ["default", "pcaa"]}), tmp_path, log=None)
    with pytest.raises(ViscopeError, match=r"target validation accuracy in \(0, 1\]"):
        load_config(overrides={"target": 0})
    with pytest.raises(ViscopeError, match=r"target validation accuracy in \(0, 1\]"):
        load_config(overrides={"target": 1.2})
    with pytest.raises(ViscopeError, match="empty"):
        load_config(overrides={"conditions.train_fraction": []})
    with pytest.raises(ViscopeError, match="no patch embedding"):
        run(load_config(overrides={"model.name": "test_resnet", "model.args": {},
                                   "conditions.patch_size": [4]}), tmp_path, log=None)
    with pytest.raises(ViscopeError, match="has no key 'epochz'"):
        load_config(overrides={"train.epochz": 2})


def test_command_line_errors_are_one_line(tmp_path, capsys):
    from viscope.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["init-study", "--set", "target=2", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err
    assert err.startswith("error: Config error at 'target'") and "(0, 1]" in err
    assert not (tmp_path / "config.yaml").exists()  # refused before anything was written


def _tiny(**extra):
    return load_config(overrides={
        "data.n": 120, "data.image_size": 16, "seeds": [0, 1],
        "model.args": {"img_size": 16, "patch_size": 8},
        "methods": ["default", "pca"], "train.epochs": 2, "train.batch_size": 16,
        "init.samples": 500, "target": 0.15, "conditions.train_fraction": [0.5, 1.0],
        **extra})


@pytest.mark.slow
def test_study_end_to_end_tiny_resumes_and_table_agrees(tmp_path):
    cfg = _tiny()
    history = run(cfg, tmp_path, log=None)
    rep = tmp_path / "report"
    for f in ("history.csv", "table.csv", "table.md", "curves.png", "filters.png"):
        assert (rep / f).stat().st_size > 0, f
    assert (tmp_path / "summary.md").read_text().count("frac") >= 2
    csv = pd.read_csv(rep / "history.csv")
    assert list(csv.columns) == ["condition", "method", "seed", "epoch", "train_loss",
                                 "val_loss", "val_acc", "seconds"]
    assert len(csv) == 2 * 2 * 2 * 2  # conditions x methods x seeds x epochs
    assert (csv.groupby(["condition", "method", "seed"])["seconds"].diff().dropna() > 0).all()
    # the table's numbers recomputed from history.csv by hand
    table = pd.read_csv(rep / "table.csv").set_index(["condition", "method"])
    for (c, m), g in csv.groupby(["condition", "method"]):
        finals = g.sort_values("epoch").groupby("seed")["val_acc"].last()
        assert table.loc[(c, m), "final_val_acc_mean"] == pytest.approx(finals.mean())
        first = [s.loc[s["val_acc"] >= cfg.target, "epoch"].min() + 1
                 for _, s in g.groupby("seed")]
        assert table.loc[(c, m), "reached"] == sum(np.isfinite(first))
        reached = [e for e in first if np.isfinite(e)]
        want = np.mean(reached) if reached else np.nan
        assert table.loc[(c, m), "epochs_to_target_mean"] == pytest.approx(want, nan_ok=True)
    # pca wrote data filters: the saved initial filters differ from default's (same seed)
    f_pca = np.load(tmp_path / "frac1" / "pca-s0" / "filters.npz")
    f_def = np.load(tmp_path / "frac1" / "default-s0" / "filters.npz")
    assert f_pca["initial"].shape == f_def["initial"].shape == (64, 3, 8, 8)
    assert not np.allclose(f_pca["initial"], f_def["initial"])
    assert not np.allclose(f_pca["initial"], f_pca["learned"])
    # a re-run trains nothing: every run's fit folder is untouched
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("frac*/*/fit/best.pt")}
    assert len(stamps) == 8
    again = run(cfg, tmp_path, log=None)
    pd.testing.assert_frame_equal(again, history)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # a changed setting of one method re-runs only that method's runs
    cfg2 = _tiny(methods=["default", {"name": "pca", "options": {"scale": None}}])
    said = []
    run(cfg2, tmp_path, log=said.append)
    trained = [s.split(":")[0] for s in said if ": done in" in s]
    assert sorted(trained) == ["frac0.5/pca-s0", "frac0.5/pca-s1", "frac1/pca-s0",
                               "frac1/pca-s1"]


def test_mimetic_is_skipped_for_a_cnn_with_a_note(tmp_path, monkeypatch):
    from viscope.experiments.init_study import run as run_module

    trained = []
    monkeypatch.setattr(run_module, "_train", lambda cfg, c, m, s, *a: trained.append(m.tag))
    monkeypatch.setattr(run_module, "Stage", _FakeStage)
    monkeypatch.setattr("viscope.experiments.init_study.report.write",
                        lambda *a: pd.DataFrame())
    said = []
    run_module.run(load_config(overrides={
        "model.name": "test_resnet", "model.args": {}, "methods": ["default", "mimetic"],
        "seeds": [0], "conditions.train_fraction": [1.0], "data.n": 60}), tmp_path,
        log=said.append)
    assert trained == ["default"]
    assert any("mimetic: skipped" in s and "no attention layers" in s for s in said)


class _FakeStage:
    def __init__(self, out, name, inputs, after=()):
        self.name, self.folder = name, out / name

    def finished(self):  # a work unit's done (never, here)
        return False

    def run(self, body, say, label=None):
        body()
        return True
