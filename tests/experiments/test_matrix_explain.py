"""``viscope matrix --explain gradcam``: the explanation-equivariance table of the
matrix (values equal a direct ``equivariance_cell`` call on the saved weights), resume,
adding it to a finished matrix, and the small fixes of the matrix's summary and
``--collect``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from viscope.experiments import load_config, run_matrix

SETTINGS = dict(explain="gradcam", explain_samples=8, explain_params=3)


def tiny_config(**kw):
    base = dict(
        name="tiny", models=[{"name": "test_vit", "args": {"img_size": 32}, "label": "vit"}],
        dataset="shapes", n=150, train_families=["rotation", "identity"],
        eval_families=["rotation", "brightness"], epochs=1, batch_size=32, samples=8,
        params=3, measure_batch_size=48,
    )
    base.update(kw)
    return load_config(overrides=base)


def stamps(folder):
    """Modification times of the trainings' files and of every cell."""
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*")
            if p.is_file() and p.suffix in (".json", ".pt") and p.parent != folder}


@pytest.mark.slow  # ~7-11 s on the shared 2 cores: two trainings, 12 explanation cells
@pytest.mark.filterwarnings("ignore:gradcam map")
def test_explain_added_to_a_finished_matrix_measures_only_the_explanation(tmp_path):
    from viscope import data, models
    from viscope.evaluate.equivariance import equivariance_cell

    out = tmp_path / "m"
    plain = run_matrix(tiny_config(), out, log=None, progress=False)["vit"]
    assert plain.explanation is None and not (out / "vit" / "explanation.csv").exists()
    before = stamps(out)
    nv_before = pd.read_csv(out / "vit" / "invariance.csv", index_col=0)

    cfg = tiny_config(**SETTINGS)
    res = run_matrix(cfg, out, log=None, progress=False)["vit"]
    # the trainings are kept; each of the 4 measured cells gets its explanation only
    assert res.trained == 0 and res.measured == 4
    after = stamps(out)
    assert {k for k in after if after[k] != before.get(k) and k.suffix == ".pt"} == set()
    assert all(after[k] == before[k] for k in before if k.name in ("clean.json", "best.pt"))
    pd.testing.assert_frame_equal(pd.read_csv(out / "vit" / "invariance.csv", index_col=0),
                                  nv_before)  # the NV cells were not measured again

    table = pd.read_csv(out / "vit" / "explanation.csv", index_col=0)
    ratio = pd.read_csv(out / "vit" / "explanation_ratio.csv", index_col=0)
    assert list(table.index) == ["rotation", "identity"]
    assert list(table.columns) == ["rotation", "brightness", "average"]
    for f in ("explanation.md", "explanation.tex", "explanation.png"):
        assert (out / "vit" / f).exists(), f
    test = data.create("shapes", split="test", size=32, n=150, seed=0)
    for fam in ("rotation", "identity"):
        model = models.create(out / "vit" / "train" / fam / "seed0" / "best.pt")
        for ev in ("rotation", "brightness"):
            direct = equivariance_cell(model, test, ev, "gradcam", samples=8, params=3,
                                       target="clean", layer="auto", batch_size=48,
                                       device="cpu", seed=0)
            # the CSV keeps 6 significant digits
            assert table.loc[fam, ev] == pytest.approx(direct["correlation"], rel=1e-5)
            assert ratio.loc[fam, ev] == pytest.approx(direct["ratio"], rel=1e-5)
            cell = json.loads((out / "vit" / "cells" / fam / "seed0" / f"{ev}.json")
                              .read_text())
            assert cell["explanation"]["difference"] == pytest.approx(direct["difference"])
    np.testing.assert_allclose(table["average"], table[["rotation", "brightness"]].mean(axis=1),
                               rtol=1e-5)

    text = (out / "vit" / "summary.md").read_text()
    d, i = table.loc["rotation", "rotation"], table.loc["identity", "rotation"]
    assert (f"rotation: trained with rotation {d:.3f} vs identity {i:.3f} "
            f"({'more' if d > i else 'not more'} equivariant") in text
    assert f"in **{int(d > i)} of 1** columns" in text
    from viscope.report.html import write_report

    html = write_report([out]).read_text()  # the report shows the table and its heatmap
    assert "vit: explanation equivariance, train x eval" in html
    assert f"{table.loc['identity', 'rotation']:.3f}" in html  # table_block: 3 digits

    # resumed: nothing is measured again; switching explain off keeps every cell
    again = run_matrix(cfg, out, log=None, progress=False)["vit"]
    assert again.trained == 0 and again.measured == 0 and stamps(out) == after
    off = run_matrix(tiny_config(), out, log=None, progress=False)["vit"]
    assert off.measured == 0 and stamps(out) == after

    # other explanation settings: the explanation is measured again, the NV kept
    more = run_matrix(tiny_config(**{**SETTINGS, "explain_params": 4}), out, log=None,
                      progress=False)["vit"]
    assert more.trained == 0 and more.measured == 4
    pd.testing.assert_frame_equal(more.invariance, res.invariance)


def test_cell_parts_measure_only_what_changed():
    """What of a cell is measured again, by its recorded inputs (the staleness rule the
    slow end-to-end test exercises)."""
    from viscope.experiments.matrix_unit import cell_parts

    base = {"train": {"seed": 0}, "measure": {"samples": 8}}
    expl = {**base, "explain": {"method": "gradcam"}}
    assert cell_parts(None, base) == {"cell"}
    assert cell_parts(None, expl) == {"cell", "explain"}
    assert cell_parts(base, base) == set()
    assert cell_parts(base, expl) == {"explain"}  # added to a finished cell
    assert cell_parts(expl, base) == set()  # switched off: the cell stays
    assert cell_parts({**expl, "explain": {"method": "saliency"}}, expl) == {"explain"}
    other = {**expl, "measure": {"samples": 16}}
    assert cell_parts(expl, other) == {"cell", "explain"}  # a cell measured again: both
    assert cell_parts(base, {"train": {"seed": 0}}) == {"cell"}


def test_summary_writes_seeds_as_numbers():
    from viscope.experiments.matrix import summary

    inv = pd.DataFrame({"rotation": [0.2, 0.3], "average": [0.2, 0.3]},
                       index=["rotation", "identity"])
    acc = pd.DataFrame({"clean": [0.9, 0.8], "rotation": [0.7, 0.5]},
                       index=["rotation", "identity"])
    many = summary(inv, acc, "m", tiny_config(seeds=[0, 1, 2]))
    assert "seeds 0, 1, 2." in many and "[" not in many.split("\n")[2]
    assert "; seed 0. Lower NV" in summary(inv, acc, "m", tiny_config())


def test_collect_before_any_worker_writes_the_config_and_a_report(tmp_path):
    """``--collect`` on a folder no worker wrote into yet: config.yaml is written (the
    report needs it), every unit is listed as missing, and the report builds."""
    from viscope.cli import main

    out = tmp_path / "m"
    out.mkdir()
    cfg = tiny_config()
    (tmp_path / "c.yaml").write_text(json.dumps(cfg.model_dump()))
    code = main(["matrix", "--config", str(tmp_path / "c.yaml"), "--out", str(out),
                 "--collect"])
    assert code in (0, None)
    assert load_config(out / "config.yaml") == cfg
    assert (out / "vit" / "missing.txt").read_text().split() == [
        "vit/rotation/seed0", "vit/identity/seed0"]
    assert (out / "report.html").is_file()
