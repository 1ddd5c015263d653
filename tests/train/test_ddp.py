"""Lightning DDP with two CPU processes (gloo): one voice, rank 0's records, and a
measurement sharded over the training's processes that equals one process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from viscope import models
from viscope.errors import ViscopeError
from viscope.train import distributed

HERE = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=ENV, cwd=cwd)


@pytest.mark.slow
@pytest.mark.distributed
def test_train_on_two_processes_speaks_once_and_records_on_rank_zero(tmp_path):
    out = tmp_path / "run"
    viscope = Path(sys.executable).parent / "viscope"
    proc = _run([str(viscope), "train", "--out", str(out), "--model", "test_resnet",
                 "--dataset", "shapes", "--n", "64", "--epochs", "1", "--batch-size", "8",
                 "--devices", "2", "--accelerator", "cpu"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = [line for line in proc.stdout.splitlines() if "checkpoint" in line]
    assert len(final) == 1, proc.stdout  # was printed by both ranks
    # rank 1 starts (at rank 0's Trainer.fit) after rank 0 wrote its files: it used to
    # take the "running" record for a dead run's and delete them (config.yaml was lost)
    assert (out / "config.yaml").is_file()
    record = json.loads((out / "train.json").read_text())
    assert record["status"] == "finished" and record["hardware"]["devices"] == 2
    assert 0.0 <= record["test_acc"] <= 1.0
    # the checkpoint rebuilds the model and gives the recorded test accuracy
    from viscope import data
    from viscope.train.evaluate import evaluate

    model = models.create(out / "best.pt")
    test = data.create("shapes", split="test", size=32, n=64, seed=0)
    assert evaluate(model, test, batch_size=64) == pytest.approx(record["test_acc"])


@pytest.mark.slow
@pytest.mark.distributed
def test_measurement_sharded_over_the_ddp_processes_equals_one_process(tmp_path):
    import ddp_worker

    proc = _run([sys.executable, str(HERE / "ddp_worker.py"), str(tmp_path)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [(r["rank"], r["world"], r["main"], r["leads"]) for r in ranks] == [
        (0, 2, True, True), (1, 2, False, False)]
    assert ranks[0]["pid"] != ranks[1]["pid"]
    assert ranks[1]["chosen"] == ranks[0]["pid"]  # rank 1 got rank 0's choice
    assert all(r["group_after_fit"] for r in ranks)  # so the measurement was sharded
    assert not (tmp_path / "rank1.npz").exists()
    # the same weights measured by this one process
    single = ddp_worker.measure_values(models.create(tmp_path / "run" / "best.pt"))
    with np.load(tmp_path / "sharded.npz") as z:
        assert set(z.files) == set(single)
        for k in z.files:
            np.testing.assert_allclose(z[k], single[k], rtol=1e-9, atol=1e-12, equal_nan=True)
    record = json.loads((tmp_path / "run" / "train.json").read_text())
    assert record["status"] == "finished" and record["test_acc"] is not None


sys.path.insert(0, str(HERE))


def test_without_a_process_group_rank_comes_from_the_launcher(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.rank_and_world() == (0, 1) and distributed.is_main()
    assert distributed.broadcast_object({"unit": 3}) == {"unit": 3}
    monkeypatch.setenv("SLURM_PROCID", "2")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.rank_and_world() == (2, 4) and not distributed.is_main()
    assert distributed.on_main(lambda: "written")() is None
    # no process group: a worker of its own, which decides and writes for itself
    assert distributed.leads() and distributed.group_size() == 1
    monkeypatch.setenv("RANK", "0")  # torchrun's RANK comes before SLURM's
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.rank_and_world() == (0, 2)
    assert distributed.on_main(lambda: "written")() == "written"


def test_launch_refuses_a_bad_device_count_and_does_nothing_for_one():
    with pytest.raises(ViscopeError, match="devices to be an int >= 1; got 0"):
        distributed.launch(0)
    assert distributed.launch(1) == distributed.rank_and_world()
    assert not torch.distributed.is_initialized()
