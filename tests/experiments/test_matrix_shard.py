"""Several real ``viscope matrix`` processes sharing one run folder: shards give the tables
of one process, a SIGKILLed worker loses nothing finished, two workers never train the
same unit, and ``--collect`` tabulates a half-finished folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from viscope.experiments import load_config, run_matrix

UNITS = ["vit/rotation/seed0", "vit/identity/seed0"]  # the config's order: seeds, families
TINY = dict(name="tiny", models=[{"name": "test_vit", "args": {"img_size": 32}, "label": "vit"}],
            dataset="shapes", image_size=32, n=100, train_families=["rotation", "identity"],
            eval_families=["rotation", "brightness"], epochs=1, batch_size=32, samples=8,
            params=3, measure_batch_size=48)


def start(config: Path, out: Path, *args: str) -> subprocess.Popen:
    """``viscope matrix`` in its own process (one thread, lines that do not wrap)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    return subprocess.Popen([sys.executable, "-m", "viscope.cli", "matrix", "--config",
                             str(config), "--out", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    text, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, text
    return text


def tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return tuple(pd.read_csv(out / "vit" / f"{t}.csv", index_col=0)
                 for t in ("invariance", "accuracy"))


def cells(out: Path) -> dict[str, dict]:
    """Every cell's numbers (time and inputs aside), by path."""
    return {str(p.relative_to(out)): {k: v for k, v in json.loads(p.read_text()).items()
                                      if k not in ("seconds",)}
            for p in sorted((out / "vit" / "cells").rglob("*.json"))}


def mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns
            for p in (out / "vit").rglob("*") if p.is_file() and p.suffix in (".json", ".pt")}


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory) -> Path:
    """The matrix run by one process, from start to end."""
    out = tmp_path_factory.mktemp("single") / "run"
    finish(start(config, out))
    return out


def test_two_shards_at_once_give_the_tables_of_one_process(config, tmp_path):
    out, reference = tmp_path / "run", tmp_path / "single"
    # the single process runs beside the shards: the three together take less wall time
    single = start(config, reference)
    workers = [start(config, out, "--shard", f"{k}/2") for k in (0, 1)]
    texts = [finish(w) for w in workers]
    finish(single)
    # each shard trained its own unit (index k mod 2), once
    assert texts[0].count("trained with rotation") == 1 and "trained with identity" not in \
        texts[0]
    assert texts[1].count("trained with identity") == 1 and "trained with rotation" not in \
        texts[1]
    # the last worker to tabulate saw every unit: complete tables, no missing list
    assert not (out / "vit" / "missing.txt").exists()
    for got, want in zip(tables(out), tables(reference), strict=True):
        pd.testing.assert_frame_equal(got, want, rtol=1e-12, atol=0)
    # the cells themselves (full float precision, per layer): same seeds, same numbers
    assert cells(out) == cells(reference)


@pytest.mark.slow
def test_a_worker_killed_mid_training_loses_nothing_finished(config, reference, tmp_path):
    out = tmp_path / "run"
    lock = out / ".locks" / "vit" / "identity" / "seed0.lock"
    first_cell = out / "vit" / "cells" / "identity" / "seed0" / "clean.json"
    worker = start(config, out)
    deadline = time.monotonic() + 300
    while not (lock.exists() and not first_cell.exists()):  # the 2nd unit is training
        assert worker.poll() is None and time.monotonic() < deadline, "never caught training"
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert not first_cell.exists() and lock.exists()  # killed inside the unit
    finished = {k: v for k, v in mtimes(out).items() if "/rotation/" in k}  # the 1st unit
    assert len([k for k in finished if "/cells/" in k]) == 3

    time.sleep(1.2)  # the dead worker's heartbeat is now older than the timeout below
    text = finish(start(config, out, "--lock-timeout", "1"))
    assert "trained with rotation" not in text and text.count("trained with identity") == 1
    assert {k: v for k, v in mtimes(out).items() if "/rotation/" in k} == finished
    assert not lock.exists()
    for got, want in zip(tables(out), tables(reference), strict=True):
        pd.testing.assert_frame_equal(got, want, rtol=1e-12, atol=0)
    assert cells(out) == cells(reference)


@pytest.mark.slow
def test_two_workers_with_the_same_shard_train_each_unit_once(config, tmp_path):
    out = tmp_path / "run"
    workers = [start(config, out, "--shard", "0/1") for _ in range(2)]
    texts = [finish(w) for w in workers]
    for fam in ("rotation", "identity"):
        assert sum(t.count(f"trained with {fam}") for t in texts) == 1, texts
    assert len(cells(out)) == 2 * 3 and not list((out / ".locks").rglob("*.lock"))


def test_collect_on_a_half_finished_folder(tmp_path):
    """Cells of one unit written by hand (a known answer): --collect tabulates them, leaves
    the other unit's row blank and lists it as missing, and runs nothing."""
    cfg = load_config(overrides=TINY)
    out = tmp_path / "run"
    want = {"train": json.loads(json.dumps(_train_inputs(cfg))),
            "measure": {"samples": 8, "params": 3, "layers": None, "accuracy_params": None}}
    cdir = out / "vit" / "cells" / "rotation" / "seed0"
    cdir.mkdir(parents=True)
    (cdir / "clean.json").write_text(json.dumps({"accuracy": 0.75,
                                                 "inputs": {"train": want["train"]}}))
    for ev, nv in (("rotation", 0.2), ("brightness", 0.4)):
        (cdir / f"{ev}.json").write_text(json.dumps({"nv": nv, "accuracy": 0.5,
                                                     "inputs": want}))
    res = run_matrix(cfg, out, log=None, collect=True)["vit"]
    assert res.trained == 0 and res.measured == 0 and not (out / "vit" / "train").exists()
    assert res.missing == ["vit/identity/seed0"]
    assert (out / "vit" / "missing.txt").read_text() == "vit/identity/seed0\n"
    inv, acc = tables(out)
    assert inv.loc["rotation"].tolist() == pytest.approx([0.2, 0.4, 0.3])
    assert inv.loc["identity"].isna().all() and acc.loc["identity"].isna().all()
    assert acc.loc["rotation", "clean"] == 0.75
    assert "**Partial**: 1 unit(s)" in (out / "vit" / "summary.md").read_text()

    # a cell recorded with other inputs is stale: left out and its unit missing again
    stale = {**want, "measure": {**want["measure"], "samples": 99}}
    (cdir / "rotation.json").write_text(json.dumps({"nv": 0.9, "accuracy": 0.5,
                                                    "inputs": stale}))
    res = run_matrix(cfg, out, log=None, collect=True)["vit"]
    assert res.missing == UNITS and pd.isna(res.invariance.loc["rotation", "rotation"])


@pytest.mark.parametrize(("args", "message"), [
    (["--shard", "3/2"], "Expected --shard k/n with 0 <= k < n; got '3/2'"),
    (["--shard", "a/b"], "Expected --shard k/n with integers"),
    (["--lock-timeout", "0"], "Expected --lock-timeout > 0 seconds"),
    (["--collect", "--out", "nowhere"], "Expected --out to be an existing run folder"),
    (["--shard", "0/2", "--balance", "size"], "Expected --balance"),
])
def test_bad_options_are_one_line_and_exit_2(config, args, message, tmp_path, monkeypatch,
                                             capsys):
    from viscope.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as code:
        main(["matrix", "--config", str(config), *args])
    err = capsys.readouterr().err
    assert code.value.code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "runs").exists()


def test_collect_from_the_command_line_lists_the_missing_units(config, tmp_path, capsys):
    from viscope.cli import main

    (tmp_path / "run").mkdir()  # as the first worker leaves it: the config, no cell yet
    (tmp_path / "run" / "config.yaml").write_text(
        yaml.safe_dump(load_config(config).model_dump(), sort_keys=False))
    main(["matrix", "--config", str(config), "--out", str(tmp_path / "run"), "--collect"])
    printed = " ".join(capsys.readouterr().out.split())  # rich may wrap long lines
    assert "missing 2 unit(s)" in printed and ", ".join(UNITS) in printed
    assert not (tmp_path / "run" / "vit" / "train").exists()


def _train_inputs(cfg):
    from viscope.experiments.matrix import _train_inputs

    return _train_inputs(cfg, cfg.models[0], "rotation", 0)
