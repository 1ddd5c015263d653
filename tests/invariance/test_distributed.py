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


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["nv", "goodfellow"])
def test_sharded_over_two_processes_equals_one(tmp_path, name):
    import dist_worker

    single = dist_worker.run(name)
    out = tmp_path / "sharded.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()),
           str(HERE / "dist_worker.py"), str(out), name]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    # the outcome of the run, with its log on failure
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as z:
        assert set(z.files) == set(single)
        for k in z.files:
            np.testing.assert_allclose(z[k], single[k], rtol=1e-9, atol=1e-12, equal_nan=True)
