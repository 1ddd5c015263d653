"""The HTML report in a real browser (headless Chromium through selenium): no console
errors, every image decoded, the tables as long as their CSVs, sorting by a header, a
1280 px screenshot, and the page working with the network cut.

Skipped only where no Chromium and chromedriver are installed (CI installs them with
apt-get). One browser session serves the whole module: starting Chromium is the slow part.
The session runs with the network cut (every host resolves to nothing, every request goes
to a dead proxy), so nothing here can reach the internet; the offline test also switches
the network off through the DevTools protocol. Two control pages show that the checks
catch what they look for (an error in a script, a request to http).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from viscope.cli import main
from viscope.report import write_table_set
from viscope.report.html import write_report

TRAIN = ["brightness", "rotation", "identity"]
EVAL = ["brightness", "rotation"]
#: two models whose summed cell times (9 cells each) print as "13.5 s" and "4.5 s": in
#: text order the larger comes first, so the timings table shows whether it sorts numbers
MODELS = {"small": 0.5, "large": 1.5}


def _browser_paths() -> tuple[str, str]:
    """The Chromium and chromedriver executables, or skip saying how to install them."""
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                                   "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no chromium/chromedriver: apt-get install -y chromium chromium-driver")
    return browser, driver


@pytest.fixture(scope="module")
def driver():
    """One headless Chromium for the module, network cut, console and network logged."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, chromedriver = _browser_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--host-resolver-rules=MAP * ~NOTFOUND",
                "--proxy-server=127.0.0.1:9", "--disable-background-networking"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # An explicit driver path: selenium-manager never runs, so nothing is downloaded.
    d = webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)
    d.set_page_load_timeout(30)
    yield d
    d.quit()


def _matrix(out: Path) -> Path:
    """A finished matrix run folder of two models, tables written by the job's writer."""
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump({
        "name": "browser", "models": [{"name": "test_vit", "label": m} for m in MODELS],
        "dataset": "digits", "train_families": TRAIN, "eval_families": EVAL, "seeds": [0]}))
    rng = np.random.default_rng(0)
    for model, seconds in MODELS.items():
        folder = out / model
        inv = pd.DataFrame(rng.uniform(0.2, 1.5, (3, 2)).round(3), index=TRAIN, columns=EVAL)
        acc = pd.DataFrame(rng.uniform(0.1, 0.9, (3, 3)).round(3), index=TRAIN,
                           columns=["clean", *EVAL])
        for t in TRAIN:
            for e in ["clean", *EVAL]:
                cell = folder / "cells" / t / "seed0" / f"{e}.json"
                cell.parent.mkdir(parents=True, exist_ok=True)
                cell.write_text(json.dumps({
                    "nv": None if e == "clean" else float(inv.loc[t, e]), "train": t,
                    "eval": e, "accuracy": float(acc.loc[t, e]), "seed": 0,
                    "seconds": seconds}))
        write_table_set(inv, None, folder, "invariance", title="NV", colorbar="NV")
        write_table_set(acc, None, folder, "accuracy", title="accuracy", colorbar="acc",
                        lower_is_better=False)
        (folder / "summary.md").write_text("# Findings\n\n- **brightness** helps.\n")
    return out


def _explain(out: Path) -> Path:
    """An explain run folder of 12 images: indices 0..11 sort differently as text."""
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump({
        "command": "explain", "model": "test_resnet", "dataset": "shapes", "methods":
        ["gradcam", "rise"], "samples": 12, "image_size": 32, "seed": 0}))
    rows = [{"index": i, "method": m, "pointing": float(i % 2), "deletion": 0.9 * i + j}
            for i in range(12) for j, m in enumerate(("gradcam", "rise"))]
    # rows shuffled, so that sorting by a column changes the order
    rows = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))]
    pd.DataFrame(rows).to_csv(out / "metrics.csv", index=False)
    pd.DataFrame(rows).groupby("method", as_index=False)[["pointing", "deletion"]].mean(
    ).to_csv(out / "metrics_summary.csv", index=False)
    Image.new("RGB", (64, 32), (30, 90, 200)).save(out / "overlays.png")
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Run folders and their report.html: a real `viscope invariance` run (the job's own
    files, so format drift shows), a matrix and an explain folder in the jobs' formats."""
    root = tmp_path_factory.mktemp("browser")
    inv = root / "inv"
    main(["invariance", "--model", "test_resnet", "--transform", "rotation,brightness",
          "--samples", "4", "--params", "3", "--out", str(inv), "--no-progress"])
    folders = {"invariance": inv, "matrix": _matrix(root / "matrix"),
               "explain": _explain(root / "explain")}
    for folder in folders.values():
        write_report([folder])
    return folders


#: the PNG files each kind's report embeds, relative to its run folder
PNGS = {"invariance": ["nv.png"], "explain": ["overlays.png"],
        "matrix": [f"{m}/{s}.png" for m in MODELS for s in ("invariance", "accuracy")]}


def _open(driver, folder: Path) -> None:
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get_log("performance")
    driver.get((folder / "report.html").as_uri())


def _severe(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _images(driver) -> list[dict]:
    return driver.execute_script(
        "return Array.from(document.images).map(i => ({complete: i.complete, "
        "w: i.naturalWidth, h: i.naturalHeight}));")


def _table(driver, caption: str):
    from selenium.webdriver.common.by import By

    found = [t for t in driver.find_elements(By.CSS_SELECTOR, "table")
             if t.find_elements(By.TAG_NAME, "caption")
             and t.find_element(By.TAG_NAME, "caption").text.startswith(caption)]
    assert len(found) == 1, caption
    return found[0]


def _body_rows(table) -> list[list[str]]:
    """The body cells' shown text, in one script call (a WebDriver call per cell is slow)."""
    return table.parent.execute_script(
        "return Array.from(arguments[0].tBodies[0].rows).map("
        "r => Array.from(r.cells).map(c => c.innerText.trim()));", table)


def _requests(driver) -> list[str]:
    """Every URL the page asked for since the last read (DevTools performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


@pytest.mark.parametrize("kind", ["invariance", "matrix", "explain"])
def test_browser_no_console_errors_and_every_image_decodes(driver, runs, kind):
    _open(driver, runs[kind])
    assert _severe(driver) == []
    images = _images(driver)
    assert len(images) == len(PNGS[kind])
    for img, name in zip(images, PNGS[kind], strict=True):
        assert img["complete"] and img["w"] > 0
        assert (img["w"], img["h"]) == Image.open(runs[kind] / name).size, name


def test_browser_tables_have_the_csv_rows(driver, runs):
    _open(driver, runs["invariance"])
    csv = pd.read_csv(runs["invariance"] / "nv_by_transform.csv")
    rows = _body_rows(_table(driver, "nv per layer"))
    assert [r[0] for r in rows] == list(csv["layer"])
    _open(driver, runs["matrix"])
    for model in MODELS:
        for stem, caption in (("invariance", "NV ("), ("accuracy", "test accuracy (")):
            csv = pd.read_csv(runs["matrix"] / model / f"{stem}.csv")
            rows = _body_rows(_table(driver, f"{model}: {caption}"))
            assert [r[0] for r in rows] == list(csv["train"]), (model, stem)
    _open(driver, runs["explain"])
    csv = pd.read_csv(runs["explain"] / "metrics.csv")
    assert len(_body_rows(_table(driver, "Metrics per image"))) == len(csv) == 24


def _click_and_read(driver, table, header: str, col: int) -> list[str]:
    from selenium.webdriver.common.by import By

    th = [h for h in table.find_elements(By.CSS_SELECTOR, "thead th") if h.text.startswith(
        header)]
    assert len(th) == 1, header
    th[0].click()
    return [r[col] for r in _body_rows(table)]


def test_browser_header_click_sorts_numbers_as_numbers(driver, runs):
    _open(driver, runs["explain"])
    table = _table(driver, "Metrics per image")
    csv = pd.read_csv(runs["explain"] / "metrics.csv")
    before = [int(r[0]) for r in _body_rows(table)]
    assert before == list(csv["index"])
    up = [int(x) for x in _click_and_read(driver, table, "index", 0)]
    assert up != before
    assert up == sorted(csv["index"])  # 2 before 10: numbers, not text
    down = [int(x) for x in _click_and_read(driver, table, "index", 0)]
    assert down == sorted(csv["index"], reverse=True)
    up = [float(x) for x in _click_and_read(driver, table, "deletion", 3)]
    assert up == pytest.approx(sorted(csv["deletion"]), abs=1e-3)
    assert _severe(driver) == []


def test_browser_timings_sort_by_seconds(driver, runs):
    """The timings ("4.5 s", "13.5 s") sort by their number, not as text."""
    _open(driver, runs["matrix"])
    from selenium.webdriver.common.by import By

    table = driver.find_element(By.XPATH, "//h3[text()='Timings']/following-sibling::table")
    up = _click_and_read(driver, table, "time", 1)
    assert "4.5 s" in up and "13.5 s" in up  # the two measuring times (text order: 13.5 first)
    assert up == sorted(up, key=lambda t: float(t.split()[0]))
    assert up.index("4.5 s") < up.index("13.5 s")
    assert _click_and_read(driver, table, "time", 1) == up[::-1]


def test_browser_screenshot_1280_wide(driver, runs, tmp_path):
    _open(driver, runs["matrix"])
    width = driver.execute_script("return window.innerWidth;")
    assert width == 1280  # --window-size is the outer size in headful Chrome only
    out = tmp_path / "matrix.png"
    assert driver.get_screenshot_as_file(str(out))
    with Image.open(out) as img:
        assert img.width == 1280 and img.height > 100
        # a page, not a blank frame: the heatmaps bring many colours
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50


def test_browser_page_works_with_the_network_off(driver, runs):
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0})
    try:
        for kind in ("matrix", "invariance"):
            _open(driver, runs[kind])
            assert _severe(driver) == []
            images = _images(driver)
            assert len(images) == len(PNGS[kind])
            assert all(i["complete"] and i["w"] > 0 for i in images)
            urls = _requests(driver)
            assert urls and urls[0].startswith("file://")  # the log does record requests
            assert not [u for u in urls if u.split(":", 1)[0].lower() in ("http", "https")]
    finally:
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})


def test_browser_checks_catch_errors_and_remote_requests(driver, tmp_path):
    """Controls: a page with a failing script and a remote image fails both checks."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img src="http://example.com/x.png">'
                   "<script>null.boom();</script></body></html>")
    driver.get_log("browser")
    driver.get_log("performance")
    driver.get(bad.as_uri())
    assert _severe(driver)
    assert "http://example.com/x.png" in _requests(driver)
    assert [i["w"] for i in _images(driver)] == [0]

