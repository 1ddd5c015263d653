"""Report sections of the later jobs (quality, weakseg, init-study) and the comparison of
several matrices.

The run folders are written here with the exact file names and columns each job writes
(read from the jobs' code: quality/report.py, weakseg/stages.py, init_study/report.py);
what the page must show is recomputed from those files in the test, independently.
"""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from viscope.cli import main
from viscope.errors import ViscopeError
from viscope.report.html import detect_kind, render


class Page(HTMLParser):
    """The page's images, text, and tables (caption, note, rows of cell text / data-sort)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables: list[dict] = []
        self.missing: list[str] = []
        self.text = ""
        self._into: dict | None = None
        self._key = ""
        self._body = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "table":
            self.tables.append({"caption": "", "rows": [], "columns": []})
        elif tag == "th" and not self._body and self.tables:
            self.tables[-1]["columns"].append({"text": ""})
            self._into, self._key = self.tables[-1]["columns"][-1], "text"
        elif tag == "tbody":
            self._body = True
        elif tag == "tr" and self._body:
            self.tables[-1]["rows"].append([])
        elif tag == "td" and self._body:
            self._into, self._key = {"text": "", "sort": a.get("data-sort"),
                                     "class": a.get("class") or ""}, "text"
            self.tables[-1]["rows"][-1].append(self._into)
        elif tag == "caption":
            self._into, self._key = self.tables[-1], "caption"
        elif tag == "p" and "missing" in (a.get("class") or ""):
            self.missing.append("")
            self._into, self._key = None, "missing"

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._body = False
        if tag in ("td", "th", "caption", "p"):
            self._into, self._key = None, ""

    def handle_data(self, data):
        self.text += data
        if self._into is not None:
            self._into[self._key] += data
        elif self._key == "missing":
            self.missing[-1] += data

    def table(self, caption: str) -> dict:
        found = [t for t in self.tables if t["caption"].startswith(caption)]
        assert len(found) == 1, [t["caption"] for t in self.tables]
        return found[0]


def _values(table: dict, skip: int = 0) -> np.ndarray:
    """The numeric cells of a table (data-sort; NaN where empty), from column ``skip``."""
    return np.array([[float(c["sort"]) if c["sort"] else np.nan for c in r[skip:]]
                     for r in table["rows"]])


def _decoded(src: str) -> tuple[int, int]:
    assert src.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size


def _png(path: Path, size: tuple[int, int] = (30, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (20, 120, 200)).save(path)


def _stage(folder: Path, result: dict | None = None) -> None:
    """A finished stage: its folder with stage.json (what viscope.stages writes last)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stage.json").write_text(json.dumps({"key": "k", "inputs": {},
                                                   "result": result or {}}))


def _config(folder: Path, cfg: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (folder / "environment.json").write_text(json.dumps({"viscope": "0.1.0"}))


# -- quality -----------------------------------------------------------------------------

VARIANTS, SEEDS, CLASSES = ["plain", "fgrnet"], [0, 1], ["good", "usable", "reject"]


@pytest.fixture
def quality_run(tmp_path: Path) -> Path:
    """``viscope quality``'s folder: stages, report/*.csv and *.png, summary.md."""
    out = tmp_path / "quality"
    _config(out, {"name": "q", "data": {"dataset": "retina-quality", "classes": CLASSES},
                  "model": {"name": "fgrnet", "args": {}},
                  "train": {"epochs": 2, "recon_weight": 0.5, "compare": True, "seeds": SEEDS},
                  "validation": {"methods": ["gradcam"], "compare_method": "gradcam"}})
    rng = np.random.default_rng(0)
    runs = []
    for v in VARIANTS:
        for s in SEEDS:
            acc = float(rng.uniform(0.5, 0.9))
            _stage(out / f"train-{v}-s{s}")
            (out / f"train-{v}-s{s}" / "metrics.json").write_text(json.dumps({
                "acc": acc, "macro_f1": acc - 0.01, "best_epoch": 1, "train_seconds": 3.0}))
            _stage(out / f"maps-{v}-s{s}")
            runs.append({"variant": v, "seed": s, "acc": acc, "macro_f1": acc - 0.01,
                         **{f"recall_{c}": float(rng.uniform()) for c in CLASSES},
                         "recon_mse": np.nan if v == "plain" else 0.01,
                         "energy_structures": float(rng.uniform()), "energy_degradation":
                         float(rng.uniform()), "deletion_auc": float(rng.uniform()),
                         "best_epoch": 1, "train_seconds": 3.0})
    rep = out / "report"
    _stage(rep)
    runs = pd.DataFrame(runs)
    runs.to_csv(rep / "runs.csv", index=False)
    g = runs.groupby("variant", sort=False)[["acc", "macro_f1"]]
    comp = pd.DataFrame({"variant": VARIANTS, "seeds": 2,
                         "acc_mean": g.mean()["acc"].to_numpy(),
                         "acc_std": g.std()["acc"].to_numpy()})
    comp.to_csv(rep / "comparison.csv", index=False)
    pd.DataFrame([{"variant": v, "method": "gradcam", "grade": c, "deletion_auc": 0.3,
                   "energy_structures": 0.1, "area_structures": 0.1, "images": 3}
                  for v in VARIANTS for c in CLASSES]).to_csv(rep / "energy.csv", index=False)
    pd.DataFrame([{"variant": v, "method": "gradcam", "clustering": "kmeans", "cluster": j,
                   "images": 3, "share": 1 / 3, **{f"grade_{c}": 1 for c in CLASSES}}
                  for v in VARIANTS for j in range(3)]).to_csv(rep / "clusters.csv", index=False)
    for name in ["comparison", "confusion", "reconstructions",
                 *[f"{k}_{v}" for k in ("class_maps", "clusters") for v in VARIANTS]]:
        _png(rep / f"{name}.png")
    (out / "summary.md").write_text(
        "# q: image quality\n\nTest split:\n\n| variant | acc |\n|---|---|\n| plain | 0.8 |\n"
        "\nEnergy is the share of a map's energy inside the mask.\n")
    return out


def test_quality_tables_figures_and_findings(quality_run):
    assert detect_kind(quality_run) == "quality"
    page = Page(render([quality_run]))
    for name, caption, skip in (("runs", "Every run", 2), ("comparison", "Per variant", 1),
                                ("energy", "Per method and grade", 3),
                                ("clusters", "Clusters of", 3)):
        csv = pd.read_csv(quality_run / "report" / f"{name}.csv")
        table = page.table(caption)
        assert len(table["rows"]) == len(csv)
        np.testing.assert_allclose(_values(table, skip), csv.iloc[:, skip:].to_numpy(float),
                                   rtol=1e-12, equal_nan=True)
    assert all("num" in c["class"] for r in page.table("Every run")["rows"] for c in r[2:]
               if c["sort"])  # numbers right-aligned
    assert len(page.images) == 7 and all(min(_decoded(s)) > 0 for s in page.images)
    assert "inside the mask" in page.text and "| plain |" not in page.text
    assert not page.missing


def test_quality_partial_shows_finished_trainings(quality_run):
    (quality_run / "report" / "stage.json").unlink()
    (quality_run / "train-fgrnet-s1" / "stage.json").unlink()
    page = Page(render([quality_run]))
    assert len(page.missing) == 1
    assert "2 of 9 stages not finished (train-fgrnet-s1, report)" in page.missing[0]
    table = page.table("Finished trainings")
    want = [json.loads((quality_run / f"train-{v}-s{s}" / "metrics.json").read_text())["acc"]
            for v, s in [("plain", 0), ("plain", 1), ("fgrnet", 0)]]
    assert [float(r[2]["sort"]) for r in table["rows"]] == pytest.approx(want, rel=1e-12)
    assert not page.images


# -- weakseg -----------------------------------------------------------------------------

@pytest.fixture
def weakseg_run(tmp_path: Path) -> Path:
    """``viscope weakseg``'s folder, as evaluate() and the stages write it."""
    out = tmp_path / "weak"
    _config(out, {"name": "w", "data": {"dataset": "mammo"},
                  "classifier": {"model": "resnet10t", "classes": ["A", "D"]},
                  "cam": {"method": "gradcam++"}, "pseudo": {"threshold": "sweep"},
                  "unet": {"model": "smp:unet", "supervised": True}, "gallery": 4})
    for name in ("classifier", "cam", "unet-pseudo", "unet-supervised", "evaluate"):
        _stage(out / name)
    _stage(out / "pseudo", {"threshold": 0.35, "ignored_fraction": 0.1})
    pd.DataFrame({"class": list("ABCD"), "images": [5] * 4, "predicted_A": [1.0, .8, .2, 0.],
                  "predicted_D": [0., .2, .8, 1.], "accuracy": [1.0, np.nan, np.nan, 1.0]}
                 ).to_csv(out / "classifier" / "classifier.csv", index=False)
    t = np.round(np.arange(0.05, 1, 0.05), 2)
    pd.DataFrame({"threshold": t, "dice_mean": 1 - (t - 0.35) ** 2, "dice_std": 0.1,
                  "iou_mean": 0.8 - (t - 0.35) ** 2}).to_csv(out / "pseudo" / "sweep.csv",
                                                             index=False)
    results = pd.DataFrame({"method": ["cam-threshold", "unet-pseudo", "unet-supervised"],
                            "images": 8, "dice_mean": [0.8, 0.85, 0.9],
                            "dice_std": [0.1, 0.05, 0.02], "iou_mean": [0.7, 0.75, 0.8],
                            "iou_std": 0.1, "dice_A": [0.6, 0.7, 0.9]})
    results.to_csv(out / "results.csv", index=False, float_format="%.4f")
    pd.DataFrame({"index": range(6), "class": list("AABBDD"), "grade": [0, 0, 1, 1, 3, 3],
                  "percent_density": [5.0, 7.5, 20.0, 22.0, 60.0, 58.5]}
                 ).to_csv(out / "density.csv", index=False, float_format="%.3f")
    for p in ("pseudo/sweep.png", "pseudo/gallery.png", "evaluate/gallery.png",
              "evaluate/density.png"):
        _png(out / p)
    (out / "summary.md").write_text(  # pandas to_string, as written without tabulate
        "# w: weak labels\n\n- threshold: sweep = 0.35\n\nDice and IoU on the test images "
        "with real masks (mean ± std over images):\n\n" + results.to_string(index=False)
        + "\n\nPercent density: Spearman ρ = 0.943.\n")
    return out


def test_weakseg_tables_figures_and_findings(weakseg_run):
    assert detect_kind(weakseg_run) == "weakseg"
    page = Page(render([weakseg_run]))
    for path, caption in (("results.csv", "Dice and IoU"), ("density.csv", "Percent density"),
                          ("classifier/classifier.csv", "Classifier"),
                          ("pseudo/sweep.csv", "Threshold sweep")):
        csv = pd.read_csv(weakseg_run / path)
        numeric = csv.select_dtypes("number")
        table = page.table(caption)
        assert len(table["rows"]) == len(csv)
        cols = [list(csv.columns).index(c) for c in numeric.columns]
        got = np.array([[float(r[j]["sort"]) if r[j]["sort"] else np.nan for j in cols]
                        for r in table["rows"]])
        np.testing.assert_allclose(got, numeric.to_numpy(float), rtol=1e-12, equal_nan=True)
    assert "Chosen: 0.35." in page.text
    assert len(page.images) == 4 and all(min(_decoded(s)) > 0 for s in page.images)
    assert "Spearman ρ = 0.943" in page.text and "cam-threshold      8" not in page.text


def test_weakseg_partial_names_missing_stages(weakseg_run):
    for name in ("unet-pseudo", "unet-supervised", "evaluate"):
        (weakseg_run / name / "stage.json").unlink()
    page = Page(render([weakseg_run]))
    assert "3 of 6 stages not finished (unet-pseudo, unet-supervised, evaluate)" \
        in page.missing[0]
    assert len(page.table("Classifier")["rows"]) == 4
    assert [t["caption"] for t in page.tables if t["caption"].startswith("Dice")] == []
    assert len(page.images) == 2  # the sweep and the pseudo-mask gallery


# -- init-study --------------------------------------------------------------------------

METHODS, FRACTIONS, TARGET = ["default", "pca"], [0.5, 1.0], 0.5


@pytest.fixture
def init_run(tmp_path: Path) -> Path:
    """``viscope init-study``'s folder: <condition>/<method>-s<seed>/ and report/."""
    out = tmp_path / "init"
    _config(out, {"name": "i", "data": {"dataset": "digits"},
                  "model": {"name": "test_vit", "args": {}},
                  "methods": [{"name": m, "options": {}, "label": None} for m in METHODS],
                  "seeds": SEEDS, "train": {"epochs": 3}, "target": TARGET,
                  "conditions": {"train_fraction": FRACTIONS, "patch_size": [None],
                                 "lr": [None]}})
    rng = np.random.default_rng(1)
    rows = []
    for f in FRACTIONS:
        for m in METHODS:
            for s in SEEDS:
                st = out / f"frac{f:g}" / f"{m}-s{s}"
                _stage(st, {"test_acc": 0.6})
                h = pd.DataFrame({"epoch": range(3), "train_loss": 1.0, "val_loss": 1.0,
                                  "val_acc": np.sort(rng.uniform(0.2, 0.8, 3)),
                                  "seconds": [1.0, 2.0, 3.0]})
                h.to_csv(st / "history.csv", index=False)
                rows.append(h.assign(condition=f"frac{f:g}", method=m, seed=s))
    rep = out / "report"
    rep.mkdir()
    history = pd.concat(rows, ignore_index=True)
    history[["condition", "method", "seed", "epoch", "train_loss", "val_loss", "val_acc",
             "seconds"]].to_csv(rep / "history.csv", index=False)
    pd.DataFrame({"condition": ["frac0.5", "frac0.5", "frac1", "frac1"],
                  "method": METHODS * 2, "seeds": 2, "epochs_to_target_mean": [2.0, 1.5, 1, 1],
                  "epochs_to_target_std": [0.0, 0.7, 0, 0],
                  "epochs_to_target_p": [np.nan, 0.5, np.nan, np.nan],
                  "reached": [2, 2, 2, 1]}).to_csv(rep / "table.csv", index=False)
    _png(rep / "curves.png")
    _png(rep / "filters.png")
    (out / "summary.md").write_text("# i\n\nintro.\n\n| condition | method |\n|---|---|\n"
                                    "| frac1 | pca |\n\n## Verdict per condition\n\n"
                                    "- frac0.5: `default` 2/2 reached. Sooner: pca.\n")
    return out


def test_init_study_tables_figures_and_verdict(init_run):
    assert detect_kind(init_run) == "init-study"
    page = Page(render([init_run]))
    for name, caption in (("table", "Per condition and method"), ("history", "Every epoch")):
        csv = pd.read_csv(init_run / "report" / f"{name}.csv")
        table = page.table(caption)
        assert len(table["rows"]) == len(csv)
        np.testing.assert_allclose(_values(table, 2), csv.iloc[:, 2:].to_numpy(float),
                                   rtol=1e-12, equal_nan=True)
    assert len(page.images) == 2 and all(min(_decoded(s)) > 0 for s in page.images)
    assert "Sooner: pca" in page.text and not page.missing


def test_init_study_partial_table_of_finished_runs(init_run):
    """The table so far: epochs to target over the finished runs, counted by hand here."""
    (init_run / "report" / "table.csv").unlink()
    (init_run / "frac1" / "pca-s1" / "stage.json").unlink()
    page = Page(render([init_run]))
    assert "frac1/pca-s1" in page.missing[0] and "2 of 9" in page.missing[0]
    table = page.table("Table of the finished runs")
    names = [c["text"].strip() for c in table["columns"]]
    got = {(r[0]["text"], r[1]["text"]): r for r in table["rows"]}
    assert len(got) == 4
    for (cond, method), row in got.items():
        epochs = []
        for s in SEEDS:
            run = init_run / cond / f"{method}-s{s}"
            if not (run / "stage.json").is_file():
                continue
            hit = np.flatnonzero(pd.read_csv(run / "history.csv")["val_acc"] >= TARGET)
            if len(hit):
                epochs.append(hit[0] + 1)  # epochs counted from 1
        assert row[names.index("reached")]["text"] == str(len(epochs))
        mean = row[names.index("epochs_to_target_mean")]["sort"]
        if epochs:
            assert float(mean) == pytest.approx(np.mean(epochs), rel=1e-12)
        else:
            assert not mean


# -- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind,path", [("quality", "report/runs.csv"),
                                       ("weakseg", "results.csv"),
                                       ("init", "report/table.csv")])
def test_corrupt_csv_is_one_line_exit_2(kind, path, request, capsys):
    folder = request.getfixturevalue(f"{kind}_run")
    (folder / path).write_bytes(b"\xff\xfe\x00not a csv")
    with pytest.raises(ViscopeError, match=Path(path).name):
        render([folder])
    with pytest.raises(SystemExit) as e:
        main(["report", str(folder)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and Path(path).name in err


# -- matrix comparison ---------------------------------------------------------------------

def _matrix(out: Path, seed: int, rows: list[str], cols: list[str]) -> Path:
    """A finished matrix folder of one model ``tiny``."""
    rng = np.random.default_rng(seed)
    _config(out, {"name": out.name, "models": [{"name": "test_vit", "label": "tiny"}],
                  "dataset": "digits", "train_families": rows, "eval_families": cols,
                  "seeds": [0]})
    inv = pd.DataFrame(rng.uniform(0.2, 1.5, (len(rows), len(cols))).round(3), index=rows,
                       columns=cols)
    acc = pd.DataFrame(rng.uniform(0.1, 0.9, (len(rows), len(cols) + 1)).round(3),
                       index=rows, columns=["clean", *cols])
    model = out / "tiny"
    for t in rows:  # the finished cells (the section counts them)
        for e in ["clean", *cols]:
            cell = model / "cells" / t / "seed0" / f"{e}.json"
            cell.parent.mkdir(parents=True, exist_ok=True)
            cell.write_text(json.dumps({"nv": None if e == "clean" else float(inv.loc[t, e]),
                                        "accuracy": float(acc.loc[t, e]), "train": t,
                                        "eval": e, "seed": 0, "seconds": 0.1}))
    inv["average"] = inv.mean(axis=1)
    for stem, table in (("invariance", inv), ("accuracy", acc)):
        # as viscope.report.tables.write_table_set writes them (its heatmap PNG drawn
        # small here: drawing it is what would make the test slow)
        (model / f"{stem}.csv").write_text(table.to_csv(index_label="train",
                                                        float_format="%.6g"))
        _png(model / f"{stem}.png")
    return out


def _csv(folder: Path, stem: str) -> pd.DataFrame:
    return pd.read_csv(folder / "tiny" / f"{stem}.csv", index_col="train")


def test_three_matrices_each_against_the_first(tmp_path):
    fams, evals = ["brightness", "rotation", "identity"], ["brightness", "rotation"]
    a, b, c = (_matrix(tmp_path / n, i, fams, evals) for i, n in enumerate("abc"))
    page = Page(render([a, b, c]))
    for other in (b, c):
        for stem, name in (("invariance", "NV"), ("accuracy", "accuracy")):
            table = page.table(f"tiny: {name} difference ({other.name} - a)")
            want = _csv(other, stem).to_numpy() - _csv(a, stem).to_numpy()
            assert [r[0]["text"] for r in table["rows"]] == fams
            np.testing.assert_allclose(_values(table, 1), want, rtol=1e-9)
    assert "Each of b, c minus a" in page.text
    assert sum(min(_decoded(s)) > 0 for s in page.images) == len(page.images)


def test_matrices_with_different_families_compare_shared_cells(tmp_path):
    a = _matrix(tmp_path / "a", 0, ["brightness", "rotation", "identity"],
                ["brightness", "rotation"])
    b = _matrix(tmp_path / "b", 1, ["rotation", "brightness"], ["rotation", "scale"])
    page = Page(render([a, b]))
    table = page.table("tiny: NV difference (b - a)")
    assert [r[0]["text"] for r in table["rows"]] == ["brightness", "rotation"]
    want = (_csv(b, "invariance").loc[["brightness", "rotation"], ["rotation"]]
            - _csv(a, "invariance").loc[["brightness", "rotation"], ["rotation"]])
    np.testing.assert_allclose(_values(table, 1), want.to_numpy(), rtol=1e-9)
    acc = page.table("tiny: accuracy difference (b - a)")
    assert [len(r) for r in acc["rows"]] == [3, 3]  # train, clean, rotation
    for words in ("training families only in a: identity", "evaluation columns only in a: "
                  "brightness", "evaluation columns only in b: scale"):
        assert words in page.text
