"""The studies as work units shared by workers (issue 17 part 1 for init-study, ssl-study
and quality): two shards give the table of one process, a shard leaves the other's units
alone and says so, ``--collect`` lists what is missing, a live worker's unit is skipped,
bad options are one line."""

import shutil

import pandas as pd
import pytest
import yaml

from viscope.experiments.init_study.config import load_config
from viscope.experiments.init_study.run import run
from viscope.experiments.units import UnitLock

IDS = ["frac1/default/seed0", "frac1/default/seed1", "frac1/pca/seed0", "frac1/pca/seed1"]
SHARD0 = IDS[0::2]  # index ≡ 0 mod 2
SHARD1 = IDS[1::2]


def _tiny():
    return load_config(overrides={
        "data.n": 120, "data.image_size": 16, "seeds": [0, 1],
        "model.args": {"img_size": 16, "patch_size": 8},
        "methods": ["default", "pca"], "train.epochs": 2, "train.batch_size": 16,
        "init.samples": 300, "target": 0.15, "conditions.train_fraction": [1.0]})


def _label(uid: str) -> str:
    """The stage label a unit's training logs (``frac1/pca/seed1`` → ``frac1/pca-s1``)."""
    cond, method, seed = uid.split("/")
    return f"{cond}/{method}-s{seed.removeprefix('seed')}"


def _deterministic(table: pd.DataFrame) -> pd.DataFrame:
    # wall seconds differ between any two runs, even of one process: everything else
    # (epochs to target, accuracies, their tests) must be equal
    return table.drop(columns=[c for c in table if "seconds" in c])


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    run(_tiny(), out, log=None)
    return out


def test_units_have_stable_ids_in_a_fixed_order(tmp_path):
    from viscope.experiments.init_study.run import study_units

    units = study_units(_tiny(), tmp_path, lambda s: None, attention=True)
    assert [u.id for u in units] == IDS
    assert [u.index for u in units] == [0, 1, 2, 3]
    assert not any(u.done() for u in units)


def test_two_shards_one_after_the_other_equal_one_process(tmp_path, one_process):
    cfg, out = _tiny(), tmp_path / "shared"
    said = []
    run(cfg, out, log=said.append, shard="0/2")
    # shard 0 trained its units only; shard 1's folders do not exist, and it says so
    trained = sorted(s.split(":")[0] for s in said if ": done in" in s)
    assert trained == [_label(u) for u in SHARD0]
    assert not (out / "frac1" / "default-s1").exists() and not (out / "frac1" / "pca-s1").exists()
    assert (out / "missing.txt").read_text().split() == SHARD1
    assert "**Partial**: 2 run(s)" in (out / "summary.md").read_text()
    partial = pd.read_csv(out / "report" / "history.csv")
    assert sorted(set(partial["seed"])) == [0]  # tables of what is finished

    run(cfg, out, log=None, shard="1/2")
    assert not (out / "missing.txt").exists()
    assert "Partial" not in (out / "summary.md").read_text()
    a = pd.read_csv(one_process / "report" / "table.csv")
    b = pd.read_csv(out / "report" / "table.csv")
    pd.testing.assert_frame_equal(_deterministic(a), _deterministic(b), check_exact=True)
    # the same weights: every epoch's losses and accuracies equal, bit for bit
    ha = pd.read_csv(one_process / "report" / "history.csv").drop(columns="seconds")
    hb = pd.read_csv(out / "report" / "history.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(ha, hb, check_exact=True)


def test_balance_by_cost_also_equals_one_process(tmp_path, one_process):
    cfg, out = _tiny(), tmp_path / "shared"
    for k in range(3):  # more shards than methods: the layout must not enter any seed
        run(cfg, out, log=None, shard=f"{k}/3", balance="cost")
    a = pd.read_csv(one_process / "report" / "history.csv").drop(columns="seconds")
    b = pd.read_csv(out / "report" / "history.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_a_unit_locked_by_a_live_worker_is_skipped(tmp_path, one_process):
    out = tmp_path / "shared"
    shutil.copytree(one_process, out)
    # the other worker is running frac1/pca/seed1: its folder is not finished, its lock live
    shutil.rmtree(out / "frac1" / "pca-s1")
    lock = UnitLock(out / ".locks" / "frac1/pca/seed1.lock", timeout=60, owner="node7:42")
    assert lock.acquire()
    try:
        said = []
        run(_tiny(), out, log=said.append)
        assert not (out / "frac1" / "pca-s1").exists()  # not trained here
        assert any("frac1/pca/seed1: running in node7:42; left to it" in s for s in said)
        assert "left to other workers: frac1/pca/seed1" in said
        assert (out / "missing.txt").read_text().split() == ["frac1/pca/seed1"]
        assert lock.holder()["owner"] == "node7:42"  # its lock untouched
    finally:
        lock.release()


def test_collect_lists_the_missing_units_and_runs_nothing(tmp_path, one_process, capsys):
    from viscope.cli import main

    out = tmp_path / "shared"
    shutil.copytree(one_process, out)
    for name in ("default-s1", "pca-s1"):  # shard 1 has not run
        shutil.rmtree(out / "frac1" / name)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(_tiny().model_dump()))
    main(["init-study", "--config", str(config), "--out", str(out), "--collect"])
    text = capsys.readouterr().out
    assert "(collect: running nothing)" in text
    assert f"missing 2 unit(s) (partial tables; listed in {out / 'missing.txt'}): " \
           f"{', '.join(SHARD1)}" in " ".join(text.split())
    assert (out / "missing.txt").read_text().split() == SHARD1
    assert not (out / "frac1" / "default-s1").exists()  # nothing trained
    table = pd.read_csv(out / "report" / "table.csv")
    assert list(table["seeds"]) == [1, 1]  # the partial table: seed 0 of each method


@pytest.mark.parametrize("command", ["init-study", "ssl-study", "quality"])
@pytest.mark.parametrize("args, message", [
    (["--shard", "2/2"], "Expected --shard k/n with 0 <= k < n; got '2/2'"),
    (["--shard", "x"], "Expected --shard k/n with integers"),
    (["--balance", "fast"], "Expected --balance (balance=) 'index' or 'cost'; got 'fast'"),
    (["--lock-timeout", "0"], "Expected --lock-timeout > 0 seconds; got 0.0"),
    (["--collect"], "Expected --out to be an existing run folder for --collect"),
])
def test_bad_work_options_are_one_line_exit_2(tmp_path, capsys, command, args, message):
    from viscope.cli import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main([command, "--out", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err and message in err
    assert not out.exists()  # refused before anything was written


@pytest.mark.slow
def test_two_init_study_shards_at_once_in_their_own_processes(tmp_path, one_process):
    import os
    import subprocess
    import sys

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(_tiny().model_dump()))
    out = tmp_path / "shared"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    workers = [subprocess.Popen([sys.executable, "-m", "viscope.cli", "init-study", "--config",
                                 str(config), "--out", str(out), "--shard", f"{k}/2"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env) for k in (0, 1)]
    texts = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], texts
    for text, mine in zip(texts, (SHARD0, SHARD1), strict=True):  # each trained its own
        done = sorted(line.split(":")[0] for line in text.splitlines() if ": done in" in line)
        assert done == sorted(_label(u) for u in mine), text
    # whichever finished last wrote the complete tables
    assert not (out / "missing.txt").exists()
    a = pd.read_csv(one_process / "report" / "history.csv").drop(columns="seconds")
    b = pd.read_csv(out / "report" / "history.csv").drop(columns="seconds")
    # the reference ran in this process, whose torch may use another number of threads
    # than the workers' one: float sums in another order, ~1e-6 apart (bit-equal at equal
    # thread counts)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5)


QUALITY = {
    "data.n": 48, "data.image_size": 32,
    "model.args": {"encoder": "tu-test_efficientnet", "encoder_depth": 3,
                   "decoder_channels": [16, 8, 8]},
    "train.epochs": 1, "train.batch_size": 16, "train.seeds": [0],
    "validation.methods": ["saliency", "gradcam"], "validation.images": 9,
    "validation.clusters": 2, "validation.deletion_steps": 4,
    "validation.reconstructions": 3,
}


@pytest.mark.slow
def test_quality_shards_equal_one_process_and_the_report_waits(tmp_path):
    from viscope.experiments.quality.config import load_config as quality_config
    from viscope.experiments.quality.run import run as quality

    cfg = quality_config(overrides=QUALITY)
    one = quality(cfg, tmp_path / "one", log=None)
    out = tmp_path / "shared"
    first = quality(cfg, out, log=None, shard="0/2")  # units plain/seed0, fgrnet/seed0
    assert first.ran == ["train-plain-s0", "maps-plain-s0"] and first.comparison.empty
    assert (out / "missing.txt").read_text().split() == ["fgrnet/seed0"]
    assert not (out / "report").exists() and not (out / "train-fgrnet-s0").exists()
    second = quality(cfg, out, log=None, shard="1/2")
    assert second.ran == ["train-fgrnet-s0", "maps-fgrnet-s0", "report"]
    assert not (out / "missing.txt").exists()
    pd.testing.assert_frame_equal(_deterministic(second.runs), _deterministic(one.runs),
                                  check_exact=True)
    for name in ("comparison.csv", "energy.csv", "clusters.csv"):
        pd.testing.assert_frame_equal(_deterministic(pd.read_csv(out / "report" / name)),
                                      _deterministic(pd.read_csv(tmp_path / "one" / "report"
                                                                 / name)), check_exact=True)
