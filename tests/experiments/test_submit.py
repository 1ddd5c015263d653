"""Launch helpers: submitit's array tasks (its local executor: no SLURM here) each run
their shard into one folder, and the sbatch template's command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from viscope.errors import ViscopeError
from viscope.experiments import submit as submit_module

ROOT = Path(__file__).parents[2]
TINY = dict(name="tiny", models=[{"name": "test_vit", "args": {"img_size": 32}, "label": "vit"}],
            dataset="shapes", image_size=32, n=100, train_families=["rotation", "identity"],
            eval_families=["rotation"], epochs=1, batch_size=32, samples=8, params=3,
            measure_batch_size=48)


@pytest.mark.slow
def test_two_local_array_tasks_run_their_shards_and_complete_the_folder(tmp_path,
                                                                          monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config, out = tmp_path / "tiny.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump(TINY))
    jobs = submit_module.submit(config, out, 2, {"seeds": "[0]"}, cluster="local",
                                options={"timeout_min": 10})
    outputs = [job.result() for job in jobs]  # raises when a task failed
    assert len(jobs) == 2 and "(shard 0/2)" in outputs[0] and "(shard 1/2)" in outputs[1]
    # units in the config's order, index mod 2: rotation to task 0, identity to task 1
    for k, fam in enumerate(("rotation", "identity")):
        assert f"trained with {fam}" in " ".join(outputs[k].split()), outputs[k]
        for ev in ("clean", "rotation"):
            cell = json.loads((out / f"vit/cells/{fam}/seed0/{ev}.json").read_text())
            assert cell["train"] == fam and cell["eval"] == ev
    from viscope.experiments import load_config, run_matrix

    res = run_matrix(load_config(config), out, log=None, collect=True)["vit"]
    assert res.missing == [] and not res.invariance.isna().any().any()
    assert (out / "submitit").is_dir()  # submitit's logs stay with the run


def test_submit_without_submitit_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit fails
    with pytest.raises(ViscopeError, match=r"pip install 'viscope\[slurm\]'"):
        submit_module.submit("matrix-demo", tmp_path, 2, cluster="local")


def test_submit_refuses_settings_it_owns_and_bad_counts(tmp_path):
    with pytest.raises(ViscopeError, match="without tasks_per_node"):
        submit_module.submit("matrix-demo", tmp_path, 2, options={"tasks_per_node": 2})
    with pytest.raises(ViscopeError, match="tasks to be an int >= 1; got 0"):
        submit_module.submit("matrix-demo", tmp_path, 0)
    with pytest.raises(ViscopeError, match="one of slurm, local, None; got 'slrum'"):
        submit_module.submit("matrix-demo", tmp_path, 2, cluster="slrum")


def test_shard_command_carries_settings_and_devices(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("name: x\n")
    cmd = submit_module.shard_command(config, "rel/out", {"seeds": [0, 1]}, devices=4,
                                      accelerator="gpu")
    assert cmd[1:] == ["matrix", "--config", str(config.resolve()), "--out",
                       str(Path("rel/out").resolve()), "--set", "seeds=[0, 1]",
                       "--set", "devices=4", "--set", "accelerator=gpu"]
    assert submit_module.shard_command("matrix-demo", "/o")[3] == "matrix-demo"


def test_sbatch_template_runs_its_array_tasks_shard_under_srun(tmp_path):
    """A stand-in srun prints what it was asked to start."""
    (tmp_path / "srun").write_text('#!/bin/sh\necho "$@"\n')
    (tmp_path / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}",
           "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3",
           "SLURM_NTASKS_PER_NODE": "4", "SLURM_CPUS_PER_TASK": "6"}
    script = str(ROOT / "scripts/slurm/matrix.sbatch")

    def run(**extra):
        return subprocess.run(["bash", script, "c.yaml", "runs/x", "--balance", "cost"],
                              capture_output=True, text=True, env={**env, **extra})

    proc = run()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["viscope", "matrix", "--config", "c.yaml", "--out",
                                   "runs/x", "--shard", "1/3", "--devices", "4", "--set",
                                   "accelerator=gpu", "--balance", "cost"]
    # re-running some indices of a 12-task array keeps the shard count
    assert "--shard 1/12" in run(VISCOPE_SHARDS="12").stdout
    assert "accelerator=cpu" in run(VISCOPE_ACCELERATOR="cpu").stdout
    outside = subprocess.run(["bash", script, "c.yaml", "runs/x"], capture_output=True,
                             text=True, env={"PATH": env["PATH"]})
    assert outside.returncode != 0 and "array job" in outside.stderr


def test_matrix_submit_option_submits_the_array_with_the_settings(monkeypatch, tmp_path,
                                                                   capsys):
    """``viscope matrix --submit`` hands its settings to submit (stand-in: no jobs run)."""
    from viscope.cli import main

    calls = []

    class Job:
        def __init__(self, k):
            self.job_id = f"77_{k}"

    def fake(config, out, tasks, overrides, **kw):
        calls.append((config, out, tasks, overrides, kw))
        return [Job(k) for k in range(tasks)]

    monkeypatch.setattr(submit_module, "submit", fake)
    main(["matrix", "--config", "matrix-demo", "--out", str(tmp_path / "run"), "--submit",
          "slurm", "--tasks", "3", "--devices", "2", "--set", "epochs=4"])
    assert calls == [("matrix-demo", tmp_path / "run", 3, {"epochs": 4, "devices": 2},
                      {"cluster": "slurm", "devices": 2})]
    assert "submitted 3 task(s): 77_0, 77_1, 77_2" in " ".join(capsys.readouterr().out.split())
    assert not (tmp_path / "run").exists()  # nothing ran here
