"""``viscope ssl-study``: the table's statistics against hand computations, bad
settings, and the study end to end on tiny settings (slow)."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from viscope.errors import ViscopeError
from viscope.experiments.ssl_study.config import load_config
from viscope.experiments.ssl_study.report import markdown, summarise
from viscope.experiments.ssl_study.run import run


def test_summary_mean_std_and_paired_t_test_by_hand():
    runs = pd.DataFrame({
        "backbone": ["b"] * 6, "variant": ["supervised"] * 3 + ["simclr"] * 3,
        "seed": [0, 1, 2, 2, 0, 1],  # pairs are matched by seed, not by row order
        "acc": [0.5, 0.6, 0.7, 0.78, 0.56, 0.65],
    })
    t = summarise(runs, ["acc"]).set_index("variant")
    assert t.loc["simclr", "acc_mean"] == pytest.approx(np.mean([0.78, 0.56, 0.65]))
    assert t.loc["simclr", "acc_std"] == pytest.approx(np.std([0.78, 0.56, 0.65], ddof=1))
    d = np.array([0.56 - 0.5, 0.65 - 0.6, 0.78 - 0.7])  # seeds 0, 1, 2
    tstat = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    from scipy.stats import t as student

    p = 2 * student.sf(abs(tstat), df=2)
    assert t.loc["simclr", "acc_p"] == pytest.approx(p)
    assert np.isnan(t.loc["supervised", "acc_p"])
    md = markdown(t.reset_index(), {"acc": "test accuracy"})
    assert f"(p = {p:.2f})" in md and "| b | supervised | 0.600 ± 0.100 |" in md


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(ViscopeError, match="Unknown variant 'mocov9'"):
        run(load_config(overrides={"variants": ["supervised", "mocov9"]}), tmp_path, log=None)
    with pytest.raises(ViscopeError, match="object masks"):
        run(load_config(overrides={"data.dataset": "digits", "variants": ["supervised"]}),
            tmp_path, log=None)
    with pytest.raises(ViscopeError):
        load_config(overrides={"seeds": []})


@pytest.mark.slow
def test_study_end_to_end_tiny_and_resumes(tmp_path):
    cfg = load_config(overrides={
        "data.n": 100, "seeds": [0, 1], "variants": ["supervised", "simclr"],
        "backbones": [{"name": "test_vit", "args": {"img_size": 32, "patch_size": 8}}],
        "pretrain.epochs": 1, "pretrain.batch_size": 32, "train.epochs": 1,
        "evaluation.images": 5, "evaluation.methods": ["gradcam"],
        "evaluation.families": ["brightness"], "evaluation.samples": 4,
        "evaluation.params": 3})
    runs = run(cfg, tmp_path, log=None)
    assert len(runs) == 4 and set(runs["variant"]) == {"supervised", "simclr"}
    for _, r in runs.iterrows():
        m = json.loads((tmp_path / "test_vit" / f"eval-{r['variant']}-s{r['seed']}" /
                        "metrics.json").read_text())
        assert r["nv"] == pytest.approx(m["nv_families"]["brightness"])
        assert 0 <= r["energy_gradcam"] <= 1
        assert r["pointing_gradcam"] * 5 == pytest.approx(round(r["pointing_gradcam"] * 5))
    assert (tmp_path / "test_vit" / "pretrain-simclr-s0" / "backbone.pt").exists()
    assert (tmp_path / "report" / "ssl_study.png").stat().st_size > 1000
    again = run(cfg, tmp_path, log=None)
    pd.testing.assert_frame_equal(again, runs)
