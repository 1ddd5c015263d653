"""``viscope weakseg`` on a user's CSV: bad input is one line and exit 2, finished stages
are kept, and missing masks make the upper bound unavailable rather than a crash."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from viscope.cli import main
from viscope.data import create

TINY = ["--set", "data.n=null", "--set", "data.image_size=32", "--set",
        "classifier.model=test_resnet", "--set", "classifier.epochs=1", "--set",
        "unet.epochs=1", "--set", "unet.args={encoder: tu-test_resnet}", "--set", "gallery=2"]


def _csv(tmp_path, classes="ABCD", masks=True, n=40):
    """A density CSV of generated mammograms saved as PNG (masks for every other row)."""
    ds = create("mammo", n=n, size=32)
    rows = []
    for i in range(n):
        image, label, mask = ds[i]
        name = ds.classes[label]
        if name not in classes:
            continue
        path = tmp_path / f"{i}.png"
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(path)
        row = {"path": path.name, "density": name}
        if masks:
            mpath = tmp_path / f"{i}_mask.png"
            Image.fromarray((mask[0].numpy() * 255).astype(np.uint8)).save(mpath)
            row["mask_path"] = mpath.name if i % 2 == 0 else ""
        rows.append(row)
    csv = tmp_path / "density.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def _run(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(["weakseg", *args])
    return exit_info.value.code, capsys.readouterr().err.strip()


def test_one_density_class_is_one_line_and_exit_2(tmp_path, capsys):
    csv = _csv(tmp_path, classes="D", masks=False)
    code, err = _run(capsys, "--set", f"data.csv={csv}", "--out", str(tmp_path / "run"), *TINY)
    assert code == 2 and len(err.splitlines()) == 1
    assert "at least two density classes" in err and "(A and D)" in err


def test_an_unknown_density_names_the_row(tmp_path, capsys):
    csv = _csv(tmp_path, masks=False)
    table = pd.read_csv(csv)
    table.loc[3, "density"] = "E"
    table.to_csv(csv, index=False)
    code, err = _run(capsys, "--set", f"data.csv={csv}", "--out", str(tmp_path / "run"), *TINY)
    assert code == 2 and len(err.splitlines()) == 1 and "row 5" in err and "'E'" in err


@pytest.mark.slow
def test_no_masks_keeps_finished_stages_and_reports_the_bound_unavailable(tmp_path, capsys):
    csv = _csv(tmp_path, masks=False)
    out = tmp_path / "run"
    data = ["--set", f"data.csv={csv}", "--out", str(out), *TINY]
    # settings the data cannot serve are refused before anything is trained
    code, err = _run(capsys, *data)
    assert code == 2 and len(err.splitlines()) == 1 and "pseudo.roi=otsu" in err
    assert not (out / "classifier").exists()
    data += ["--set", "pseudo.roi=otsu"]
    code, err = _run(capsys, *data)
    assert code == 2 and len(err.splitlines()) == 1 and "pseudo.threshold=otsu" in err
    data += ["--set", "pseudo.threshold=otsu"]
    # a bad class to explain fails after the classifier: the classifier is kept
    code, err = _run(capsys, *data, "--set", "cam.target=Z")
    assert code == 2 and len(err.splitlines()) == 1 and "cam.target" in err
    assert json.loads((out / "classifier" / "stage.json").read_text())["result"]["test_acc"] >= 0
    main(["weakseg", *data])
    log = capsys.readouterr().out
    assert "classifier: finished earlier, skipped" in log
    results = pd.read_csv(out / "results.csv")
    assert results["note"].notna().all()  # no test image has a real mask
    assert "unavailable" in results.set_index("method").loc["unet-supervised", "note"]
