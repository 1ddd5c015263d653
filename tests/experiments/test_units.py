"""Work units: shard selection, the balanced assignment and the lock protocol (create,
heartbeat, stale takeover, release; racing takers), each against a known answer."""

from __future__ import annotations

import itertools
import json
import os
import threading
import time

import pytest

from viscope.errors import ViscopeError
from viscope.experiments.units import (
    Unit,
    UnitLock,
    assign,
    lock_path,
    parse_shard,
    run_units,
    select,
)


def units(costs):
    return [Unit(f"m/f{i}/seed0", i, c) for i, c in enumerate(costs)]


def test_shards_by_index_partition_the_units():
    us = units([1.0] * 11)
    shares = [select(us, f"{k}/4") for k in range(4)]
    assert [u.index for u in shares[3]] == [3, 7]
    assert sorted(u.index for s in shares for u in s) == list(range(11))  # each unit once
    assert select(us, None) == us and select(us, "0/1") == us


@pytest.mark.parametrize("bad", ["3/2", "a/b", "1", "2/0", "-1/3", "1/2/3", ""])
def test_bad_shard_is_one_clear_line(bad):
    with pytest.raises(ViscopeError, match="Expected --shard k/n") as err:
        parse_shard(bad)
    assert "\n" not in str(err.value)


def test_balanced_assignment_is_the_greedy_longest_first():
    # by hand, costs 5, 4, 3, 3, 3 on 2 shards, each to the lighter shard: 5 -> 0, 4 -> 1,
    # 3 -> 1 (4 < 5), 3 -> 0 (5 < 7), 3 -> 1 (7 < 8): shard 0 {5, 3}, shard 1 {4, 3, 3}
    us = units([5, 4, 3, 3, 3])
    assert assign(us, 2, "cost") == [0, 1, 1, 0, 1]
    assert [u.id for u in select(us, "0/2", "cost")] == ["m/f0/seed0", "m/f3/seed0"]
    # the best makespan by brute force over all 2^5 splits is 9; LPT's is 10 <= 4/3 * 9
    best = min(max(sum(c for c, s in zip([5, 4, 3, 3, 3], bits, strict=True) if s == k)
                   for k in (0, 1)) for bits in itertools.product((0, 1), repeat=5))
    loads = [sum(u.cost for u in select(us, f"{k}/2", "cost")) for k in (0, 1)]
    assert best == 9 and max(loads) == 10 <= 4 / 3 * best
    with pytest.raises(ViscopeError, match="balance"):
        assign(us, 2, "size")


def test_lock_is_exclusive_records_owner_and_is_released(tmp_path):
    path = tmp_path / ".locks" / "m" / "f0" / "seed0.lock"
    first = UnitLock(path, timeout=60, owner="hostA:1")
    assert first.acquire()
    record = json.loads(path.read_text())
    assert record["owner"] == "hostA:1" and record["heartbeat"] >= record["started"]
    assert not UnitLock(path, timeout=60, owner="hostB:2").acquire()  # live: refused
    first.release()
    assert not path.exists()
    assert UnitLock(path, timeout=60).acquire()


def test_heartbeat_refreshes_the_lock(tmp_path):
    lock = UnitLock(tmp_path / "u.lock", timeout=0.4)  # beats every 0.1 s
    assert lock.acquire()
    try:
        first = json.loads(lock.path.read_text())["heartbeat"]
        time.sleep(0.6)
        later = json.loads(lock.path.read_text())["heartbeat"]
        assert later > first
        # longer than the timeout, yet alive: nobody may take it over
        assert not UnitLock(lock.path, timeout=0.4).acquire()
    finally:
        lock.release()


def _dead_lock(path, age):
    path.parent.mkdir(parents=True, exist_ok=True)
    beat = time.time() - age
    path.write_text(json.dumps({"owner": "deadhost:9", "token": "x", "started": beat,
                                "heartbeat": beat}))


def test_stale_lock_is_taken_over_and_fresh_one_is_not(tmp_path):
    path = tmp_path / "u.lock"
    _dead_lock(path, age=100)
    assert not UnitLock(path, timeout=1000).acquire()  # 100 s old < timeout: alive
    taker = UnitLock(path, timeout=10, owner="me:1")
    assert taker.acquire()
    assert json.loads(path.read_text())["owner"] == "me:1"
    taker.release()
    assert list(tmp_path.iterdir()) == []  # no renamed stale files left behind


def test_two_threads_racing_for_a_stale_lock_one_wins(tmp_path):
    for trial in range(20):
        path = tmp_path / f"u{trial}.lock"
        _dead_lock(path, age=100)
        locks = [UnitLock(path, timeout=10, owner=f"t:{i}") for i in range(6)]
        start = threading.Barrier(len(locks))
        won = [False] * len(locks)

        def claim(i, locks=locks, start=start, won=won):
            start.wait()
            won[i] = locks[i].acquire()

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(locks))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(won) == 1, trial
        winner = locks[won.index(True)]
        assert json.loads(path.read_text())["owner"] == winner.owner
        winner.release()
    assert list(tmp_path.iterdir()) == []


def test_run_units_skips_finished_and_locked_units_and_releases_on_error(tmp_path):
    ran = []
    finished = {"m/f1/seed0"}
    us = [Unit(f"m/f{i}/seed0", i, run=lambda i=i: ran.append(i) or i,
               done=lambda i=i: f"m/f{i}/seed0" in finished) for i in range(3)]
    held = UnitLock(lock_path(tmp_path, us[2]), timeout=60, owner="other:7")
    assert held.acquire()
    lines = []
    report = run_units(us, tmp_path, log=lines.append)
    held.release()
    assert ran == [0] and report.ran == ["m/f0/seed0"] and report.results == {"m/f0/seed0": 0}
    assert report.finished == ["m/f1/seed0"] and report.left == ["m/f2/seed0"]
    assert any("other:7" in line for line in lines)
    assert not lock_path(tmp_path, us[0]).exists()
    assert not lock_path(tmp_path, us[1]).parent.exists()  # a finished unit is never claimed

    def boom():
        raise RuntimeError("unit failed")

    with pytest.raises(RuntimeError, match="unit failed"):
        run_units([Unit("m/bad/seed0", 0, run=boom)], tmp_path)
    assert not lock_path(tmp_path, Unit("m/bad/seed0", 0)).exists()


def test_a_unit_finished_while_waiting_for_its_lock_is_not_run_again(tmp_path):
    # done() is False when first asked, True once the lock is held (another worker finished
    # it between the check and the claim): it must not run
    answers = iter([False, True])
    unit = Unit("m/f0/seed0", 0, run=lambda: pytest.fail("ran a finished unit"),
                done=lambda: next(answers))
    assert run_units([unit], tmp_path).finished == ["m/f0/seed0"]


def test_lost_lock_is_noticed_by_its_heartbeat(tmp_path):
    lock = UnitLock(tmp_path / "u.lock", timeout=60)
    assert lock.acquire()
    os.remove(lock.path)
    lock.refresh()
    assert lock.lost
    lock.release()
