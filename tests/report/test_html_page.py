"""The HTML report (`viscope report`): self-contained, tables that match the CSVs, images
that decode, matrices coloured with the best row per column marked, partial and bad runs.

Run folders are written here in each job's documented format (small, so the tests stay
fast); the numbers the page must show are recomputed from those files in the test.
"""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from viscope.cli import main
from viscope.errors import ViscopeError
from viscope.report import write_table_set
from viscope.report.html import detect_kind, render, write_report

FAMILIES = ["brightness", "rotation", "identity"]
EVALS = ["brightness", "rotation"]


class Page(HTMLParser):
    """Collects what the tests check: links, images, tables (rows and cells)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []
        self.scripts_src: list[str] = []
        self.tables: list[dict] = []
        self._in_body = False
        self._cell: dict | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            if key in a:
                self.links.append(a[key])
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "script" and "src" in a:
            self.scripts_src.append(a["src"])
        if tag == "table":
            self.tables.append({"caption": "", "rows": [], "class": a.get("class", "")})
        if tag == "tbody":
            self._in_body = True
        if tag == "tr" and self._in_body:
            self.tables[-1]["rows"].append([])
        if tag == "td" and self._in_body:
            self._cell = {"class": a.get("class") or "", "sort": a.get("data-sort"),
                          "style": a.get("style") or "", "text": ""}
            self.tables[-1]["rows"][-1].append(self._cell)
        if tag == "caption":
            self._cell = self.tables[-1]
            self._cell["caption"] = ""

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        if tag in ("td", "caption"):
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            key = "caption" if "rows" in self._cell else "text"
            self._cell[key] += data

    def table(self, start: str) -> dict:
        found = [t for t in self.tables if t["caption"].startswith(start)]
        assert len(found) == 1, [t["caption"] for t in self.tables]
        return found[0]


def _png(path: Path, size: tuple[int, int] = (40, 30)) -> None:
    Image.new("RGB", size, (200, 30, 30)).save(path)


def _env(folder: Path) -> None:
    (folder / "environment.json").write_text(json.dumps({"viscope": "0.1.0",
                                                         "git_revision": "abc123"}))


@pytest.fixture
def train_run(tmp_path: Path) -> Path:
    out = tmp_path / "train"
    out.mkdir()
    history = [{"epoch": e, "train_loss": 2.0 - e / 3, "val_loss": 1.9 - e / 4,
                "val_acc": 0.2 + e / 10} for e in range(3)]
    (out / "train.json").write_text(json.dumps({
        "status": "finished", "config": {"model": "test_resnet", "dataset": "shapes"},
        "epochs_run": 3, "best_epoch": 2, "monitor": "val_acc", "best_score": 0.4,
        "best_val_acc": 0.4, "test_acc": 0.35, "seconds": 12.5, "images_per_second": 900.0,
        "history": history, "environment": {"torch": "2.x"}}))
    (out / "config.yaml").write_text("model: test_resnet\ndataset: shapes\n")
    return out


@pytest.fixture
def invariance_run(tmp_path: Path) -> Path:
    out = tmp_path / "inv"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump({
        "command": "invariance", "model": "test_resnet", "dataset": "shapes",
        "image_size": 32, "transform": "rotation", "samples": 16, "params": 4,
        "measure": "nv", "seed": 0, "layers": "default"}))
    _env(out)
    (out / "result.json").write_text(json.dumps({"measure": "nv", "primary": "nv"}))
    pd.DataFrame({"layer": ["a", "b", "c", "d"], "depth": [0, 1 / 3, 2 / 3, 1],
                  "nv": [0.6, 0.65, 0.5, 0.4], "units": [10, 20, 30, 40]}
                 ).to_csv(out / "per_layer.csv", index=False)
    _png(out / "nv.png")
    return out


@pytest.fixture
def explain_run(tmp_path: Path) -> Path:
    out = tmp_path / "explain"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump({
        "command": "explain", "model": "test_resnet", "dataset": "shapes", "methods":
        ["gradcam", "rise"], "samples": 3, "image_size": 32, "seed": 0, "target": "true",
        "layer": "auto"}))
    _env(out)
    rows = [{"index": i, "method": m, "pointing": float(i % 2), "deletion": 0.1 * i}
            for i in range(3) for m in ("gradcam", "rise")]
    pd.DataFrame(rows).to_csv(out / "metrics.csv", index=False)
    pd.DataFrame(rows).groupby("method", as_index=False)[["pointing", "deletion"]].mean(
    ).to_csv(out / "metrics_summary.csv", index=False)
    _png(out / "overlays.png", (64, 32))
    return out


def _matrix(out: Path, rng: np.random.Generator, finished: bool = True) -> Path:
    """A matrix run folder of one model; tables written by the job's own writer."""
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump({
        "name": "m", "models": [{"name": "test_vit", "label": "tiny"}], "dataset": "digits",
        "train_families": FAMILIES, "eval_families": EVALS, "seeds": [0]}))
    _env(out)
    model = out / "tiny"
    inv = pd.DataFrame(rng.uniform(0.2, 1.5, (3, 2)).round(3), index=FAMILIES, columns=EVALS)
    acc = pd.DataFrame(rng.uniform(0.1, 0.9, (3, 3)).round(3), index=FAMILIES,
                       columns=["clean", *EVALS])
    for t in FAMILIES:
        for e in ["clean", *EVALS]:
            cell = model / "cells" / t / "seed0" / f"{e}.json"
            cell.parent.mkdir(parents=True, exist_ok=True)
            nv = None if e == "clean" else float(inv.loc[t, e])
            cell.write_text(json.dumps({"nv": nv, "accuracy": float(acc.loc[t, e]),
                                        "train": t, "eval": e, "seed": 0, "seconds": 0.5}))
    if finished:
        inv["average"] = inv.mean(axis=1)
        write_table_set(inv, None, model, "invariance", title="NV", colorbar="NV")
        write_table_set(acc, None, model, "accuracy", title="acc", colorbar="acc",
                        lower_is_better=False)
        (model / "summary.md").write_text("# Findings\n\n- **brightness** helps.\n")
    return out


@pytest.fixture
def matrix_run(tmp_path: Path) -> Path:
    return _matrix(tmp_path / "matrix", np.random.default_rng(0))


def _decodes(src: str) -> tuple[int, int]:
    assert src.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size


@pytest.mark.parametrize("kind", ["train", "invariance", "explain", "matrix"])
def test_html_page_is_self_contained(kind, request):
    folder = request.getfixturevalue(f"{kind}_run")
    assert detect_kind(folder) == kind
    page = Page(render([folder]))
    assert page.links, "the page has images"
    assert not [u for u in page.links if re.match(r"(?i)\s*(https?:)?//", u)]
    assert not page.scripts_src
    for src in page.images:
        w, h = _decodes(src)
        assert w > 0 and h > 0


def test_html_tables_match_csvs(invariance_run, explain_run, train_run):
    inv = Page(render([invariance_run]))
    csv = pd.read_csv(invariance_run / "per_layer.csv")
    table = inv.table("nv per layer")
    assert len(table["rows"]) == len(csv)
    assert [r[0]["text"] for r in table["rows"]] == list(csv["layer"])
    # numbers are right-aligned and sort by their exact value
    assert all("num" in r[2]["class"] for r in table["rows"])
    assert [float(r[2]["sort"]) for r in table["rows"]] == list(csv["nv"])
    assert f"{csv['nv'].mean():.4f}" in table["caption"]
    exp = Page(render([explain_run]))
    assert len(exp.table("Metrics per image")["rows"]) == len(
        pd.read_csv(explain_run / "metrics.csv"))
    assert len(exp.table("Mean metrics")["rows"]) == 2
    assert _decodes(exp.images[0]) == Image.open(explain_run / "overlays.png").size
    tr = Page(render([train_run]))
    history = json.loads((train_run / "train.json").read_text())["history"]
    assert len(tr.table("History")["rows"]) == len(history)


def test_html_matrix_heatmap_marks_best_row_per_column(matrix_run):
    page = Page(render([matrix_run]))
    for stem, lower in (("invariance", True), ("accuracy", False)):
        df = pd.read_csv(matrix_run / "tiny" / f"{stem}.csv", index_col="train")
        table = page.table(f"tiny: {'NV' if lower else 'test accuracy'} (")
        assert len(table["rows"]) == len(df)
        for j, col in enumerate(df.columns, start=1):
            values = df[col].round(2).to_numpy()
            best = values.min() if lower else values.max()
            want = [df.index[i] for i in range(len(df)) if values[i] == best]
            if len(want) == len(df):
                want = []
            marked = [r[0]["text"] for r in table["rows"] if "best" in r[j]["class"]]
            assert marked == want, (stem, col)
            assert all(r[j]["style"].startswith("background:rgb(") for r in table["rows"])
    assert "<strong>brightness</strong> helps" in render([matrix_run])


def test_html_partial_matrix_says_what_is_missing(tmp_path):
    out = _matrix(tmp_path / "m", np.random.default_rng(1), finished=False)
    (out / "tiny" / "cells" / "identity" / "seed0" / "rotation.json").unlink()
    html = render([out])
    assert "8 of 9 cells finished" in html
    table = Page(html).table("tiny: NV so far")
    cells = {r[0]["text"]: [c["text"] for c in r[1:]] for r in table["rows"]}
    assert cells["identity"][1] == "—" and cells["identity"][0] != "—"
    assert len(table["rows"]) == len(FAMILIES)


def test_html_comparison_of_two_trainings(train_run, tmp_path):
    other = tmp_path / "train2"
    other.mkdir()
    record = json.loads((train_run / "train.json").read_text())
    record["test_acc"] = 0.5
    (other / "train.json").write_text(json.dumps(record))
    out = write_report([train_run, other], tmp_path / "cmp.html")
    page = Page(out.read_text())
    results = page.table("Results")
    assert [r[0]["text"] for r in results["rows"]] == [str(train_run), str(other)]
    assert len(page.images) == 3  # the shared curves, then each run's own


def test_html_matrix_difference(tmp_path):
    a = _matrix(tmp_path / "a", np.random.default_rng(2))
    b = _matrix(tmp_path / "b", np.random.default_rng(3))
    page = Page(render([a, b]))
    diff = page.table("tiny: NV difference")
    ta = pd.read_csv(a / "tiny" / "invariance.csv", index_col="train")
    tb = pd.read_csv(b / "tiny" / "invariance.csv", index_col="train")
    got = np.array([[float(c["sort"]) for c in r[1:]] for r in diff["rows"]])
    np.testing.assert_allclose(got, (tb - ta).to_numpy(), rtol=1e-9)


def train_run_like(tmp_path: Path) -> Path:
    """A folder that records a training (another kind than explain)."""
    out = tmp_path / "t"
    out.mkdir()
    (out / "train.json").write_text(json.dumps({"status": "finished", "history": []}))
    return out


def _cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", *map(str, args)])
    return e.value.code, capsys.readouterr().err


def test_html_bad_input_is_one_line_exit_2(tmp_path, invariance_run, explain_run, capsys):
    code, err = _cli([tmp_path / "nothing"], capsys)
    assert code == 2 and err.count("\n") == 1 and "not a folder" in err
    (tmp_path / "plain").mkdir()
    code, err = _cli([tmp_path / "plain"], capsys)
    assert code == 2 and err.count("\n") == 1 and "run folder" in err
    (invariance_run / "per_layer.csv").unlink()
    code, err = _cli([invariance_run], capsys)
    assert code == 2 and err.count("\n") == 1 and "per_layer.csv" in err
    (explain_run / "metrics.csv").write_bytes(b"\xff\xfe\x00garbage")
    code, err = _cli([explain_run], capsys)
    assert code == 2 and err.count("\n") == 1 and "metrics.csv" in err
    assert not (explain_run / "report.html").exists()
    with pytest.raises(ViscopeError, match="one kind"):
        render([explain_run, train_run_like(tmp_path)])


def test_html_cli_writes_report_in_run_folder(train_run, capsys):
    main(["report", str(train_run)])
    assert (train_run / "report.html").is_file()
    assert "report.html" in capsys.readouterr().out


@pytest.mark.slow
def test_html_report_of_real_invariance_run(tmp_path, capsys):
    """The real job's folder (not one written here): guards against format drift."""
    out = tmp_path / "inv"
    main(["invariance", "--model", "test_resnet", "--transform", "rotation,brightness",
          "--samples", "8", "--params", "3", "--out", str(out), "--no-progress"])
    main(["report", str(out)])
    page = Page((out / "report.html").read_text())
    csv = pd.read_csv(out / "nv_by_transform.csv")
    assert len(page.table("nv per layer")["rows"]) == len(csv)
    avg = page.table("Average nv")
    assert {r[0]["text"]: float(r[1]["sort"]) for r in avg["rows"]} == pytest.approx(
        {f: csv[f].mean() for f in ("rotation", "brightness")})
    assert all(min(_decodes(s)) > 0 for s in page.images)


@pytest.mark.slow
def test_html_matrix_command_writes_report(tmp_path, capsys):
    """`viscope matrix` (and so `viscope demo`) ends with report.html and names it."""
    out = tmp_path / "m"
    main(["matrix", "--config", "matrix-demo", "--out", str(out),
          "--set", 'models=[{"name":"test_efficientnet","label":"e"}]',
          "--set", "train_families=[brightness,identity]", "--set", "eval_families=[rotation]",
          "--set", "epochs=1", "--set", "n=60", "--set", "samples=4", "--set", "params=2"])
    assert f"report:             {out / 'report.html'}" in capsys.readouterr().out
    page = Page((out / "report.html").read_text())
    inv = pd.read_csv(out / "e" / "invariance.csv")
    assert len(page.table("e: NV (")["rows"]) == len(inv) == 2
