"""A measurement sharded over processes (torchrun, gloo) equals one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), str(HERE / "dist_worker.py"),
           *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["nv", "goodfellow"])
def test_sharded_over_two_processes_equals_one(tmp_path, name):
    import dist_worker

    single = dist_worker.run(name)
    out = tmp_path / "sharded.npz"
    proc = torchrun(out, name)
    # the outcome of the run, with its log on failure
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as z:
        assert set(z.files) == set(single)
        for k in z.files:
            np.testing.assert_allclose(z[k], single[k], rtol=1e-9, atol=1e-12, equal_nan=True)


@pytest.mark.distributed
def test_an_interrupted_sharded_run_resumes_to_the_same_numbers(tmp_path):
    """Each process saves its own shard's state (<file>.rank<k>); goodfellow's second
    stage is interrupted after the first stage's states were merged across processes."""
    import dist_worker

    single = dist_worker.run("goodfellow")
    out, resume = tmp_path / "sharded.npz", tmp_path / "resume.pt"
    stopped = torchrun(out, "goodfellow", resume, 7)  # rank 0: 6 batches a stage, rank 1: 5
    assert stopped.returncode != 0 and "stopped after 7 batches" in stopped.stderr
    assert not out.exists() and (tmp_path / "resume.pt.rank0").exists()
    proc = torchrun(out, "goodfellow", resume)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "resume.pt.rank0").exists()
    with np.load(out) as z:
        for k in z.files:
            np.testing.assert_allclose(z[k], single[k], rtol=1e-9, atol=1e-12, equal_nan=True)
