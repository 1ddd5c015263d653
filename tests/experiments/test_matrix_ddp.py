"""``viscope matrix --devices 2`` on CPU (gloo): each unit trains under Lightning's DDP and
measures sharded over the same two processes; rank 0 alone prints and writes, and a cell
equals one process's measurement of the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

TINY = dict(name="tiny", models=[{"name": "test_vit", "args": {"img_size": 32}, "label": "vit"}],
            dataset="shapes", image_size=32, n=100, train_families=["identity"],
            eval_families=["rotation"], epochs=1, batch_size=16, samples=12, params=3,
            measure_batch_size=8)


@pytest.mark.slow
@pytest.mark.distributed
def test_matrix_on_two_processes_writes_once_and_equals_one_process(tmp_path):
    from viscope import data, models
    from viscope.invariance import measure

    config, out = tmp_path / "tiny.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump(TINY))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    proc = subprocess.run([sys.executable, "-m", "viscope.cli", "matrix", "--config",
                           str(config), "--out", str(out), "--devices", "2"],
                          capture_output=True, text=True, timeout=500, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("tiny: 1 model(s)") == 1, proc.stdout  # the header, once
    assert proc.stdout.count("invariance table:") == 1, proc.stdout
    record = json.loads((out / "vit/train/identity/seed0/train.json").read_text())
    assert record["status"] == "finished" and record["hardware"]["devices"] == 2
    assert (out / "vit/train/identity/seed0/config.yaml").is_file()
    cell = json.loads((out / "vit/cells/identity/seed0/rotation.json").read_text())
    clean = json.loads((out / "vit/cells/identity/seed0/clean.json").read_text())
    assert clean["accuracy"] == pytest.approx(record["test_acc"])
    # the same weights, measured by this one process with the cell's settings
    model = models.create(out / "vit/train/identity/seed0/best.pt")
    test = data.create("shapes", split="test", size=32, n=100, seed=0)
    r = measure(model, test, "rotation", samples=12, params=3, batch_size=8, seed=0,
                progress=False)
    # float32 activations of samples batched differently: equal to float32 rounding
    np.testing.assert_allclose(cell["nv"], r.average(), rtol=1e-5)
    np.testing.assert_allclose([cell["per_layer"][k] for k in r.layers],
                               r.per_layer()["nv"].to_numpy(), rtol=1e-5)
    assert not list((out / ".locks").rglob("*.lock"))  # rank 0's lock, released
