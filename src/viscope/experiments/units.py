"""Work units of a study, shared by many workers: shards, lock files with a heartbeat.

A study (the matrix now; the other studies as they adopt it) is a list of :class:`Unit`
in a deterministic order, each with a stable id (``vit/rotation/seed0``). Workers (array
tasks of a scheduler, processes on one node) share one run folder:

- ``--shard k/n`` gives a worker the units whose index is ``k mod n`` (:func:`select`), or
  a greedy balanced share by estimated cost;
- a unit is claimed with a lock file ``OUT/.locks/<id>.lock`` (:class:`UnitLock`), so two
  workers never run it together, and a dead worker's unit is taken over after a timeout;
- a finished unit (its ``done()`` says so) is never claimed again.

The lock protocol (written here because no scheduler-independent library does file
locks with takeover on a shared, possibly networked, file system; ``fcntl`` locks are
unreliable over NFS and die silently with the node):

1. claim: ``os.open(lock, O_CREAT | O_EXCL)``, write ``{owner, token, started, heartbeat}``;
2. a daemon thread rewrites ``heartbeat`` (atomic replace) every ``timeout / 4`` seconds;
3. a lock whose heartbeat is older than ``timeout`` belongs to a dead worker: takers
   queue on ``<lock>.takeover`` (``O_EXCL``); its holder reads the lock again, deletes it
   only if still stale and claims afresh with ``O_EXCL`` (so of any number of racing
   takers exactly one wins, and no live lock is ever removed);
4. the lock is deleted when the unit finishes or raises.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from viscope.errors import ViscopeError
from viscope.io import atomic_write_json

DEFAULT_LOCK_TIMEOUT = 600.0
LOCKS = ".locks"
BALANCES = ("index", "cost")


@dataclass(frozen=True)
class Unit:
    """One piece of a study that one worker runs at a time.

    Attributes:
        id: stable name, also the lock's path under ``OUT/.locks`` (``vit/rotation/seed0``).
        index: position in the study's deterministic order (what ``--shard`` divides).
        cost: estimated relative cost, for the balanced assignment (only its ratios count).
        run: runs the unit (training and measurements); its return value is kept.
        done: ``True`` when the unit's outputs exist and match the current settings.
    """

    id: str
    index: int
    cost: float = 1.0
    run: Callable[[], Any] = field(default=lambda: None, compare=False, repr=False)
    done: Callable[[], bool] = field(default=lambda: False, compare=False, repr=False)


def parse_shard(shard: str | None) -> tuple[int, int]:
    """``"k/n"`` as ``(k, n)`` with ``0 <= k < n``; ``None`` is ``(0, 1)`` (everything).

    >>> parse_shard("3/12")
    (3, 12)

    Raises:
        ViscopeError: not two integers ``k/n`` with ``0 <= k < n``.
    """
    if shard is None:
        return 0, 1
    parts = str(shard).strip().split("/")
    try:
        k, n = (int(p) for p in parts)
    except ValueError:
        raise ViscopeError(f"Expected --shard k/n with integers 0 <= k < n (e.g. 3/12); got "
                           f"{shard!r}. Under a job array use --shard "
                           f"$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT.") from None
    if n < 1 or not 0 <= k < n:
        raise ViscopeError(f"Expected --shard k/n with 0 <= k < n; got {shard!r} (k={k}, "
                           f"n={n}). Shards are numbered from 0: the last of {max(n, 1)} is "
                           f"{max(n, 1) - 1}/{max(n, 1)}.")
    return k, n


def assign(units: Sequence[Unit], n: int, balance: str = "index") -> list[int]:
    """The shard (``0..n-1``) of each unit of ``units``.

    ``"index"``: unit ``i`` goes to shard ``i mod n``. ``"cost"``: longest processing time
    first (Graham 1969): units by decreasing cost (ties: lower index first), each to the
    shard with the least total cost so far (ties: lower shard); every worker computes the
    same assignment, since it depends only on the units' costs and order. Its makespan
    is at most 4/3 of the best possible.

    Raises:
        ViscopeError: unknown ``balance``.
    """
    if balance not in BALANCES:
        raise ViscopeError(f"Expected --balance (balance=) 'index' or 'cost'; got {balance!r}. "
                           f"'index' gives unit i to shard i mod n; 'cost' balances estimated "
                           f"costs.")
    if balance == "index":
        return [u.index % n for u in units]
    load = [0.0] * n
    shard = [0] * len(units)
    for pos in sorted(range(len(units)), key=lambda i: (-units[i].cost, units[i].index)):
        best = min(range(n), key=lambda s: (load[s], s))
        shard[pos] = best
        load[best] += units[pos].cost
    return shard


def select(units: Sequence[Unit], shard: str | None = None, balance: str = "index"
           ) -> list[Unit]:
    """The units of shard ``"k/n"`` (all units when ``None``), in index order.

    >>> us = [Unit(f"u{i}", i) for i in range(5)]
    >>> [u.id for u in select(us, "1/2")]
    ['u1', 'u3']
    """
    k, n = parse_shard(shard)
    mine = [u for u, s in zip(units, assign(units, n, balance), strict=True) if s == k]
    return sorted(mine, key=lambda u: u.index)


def owner_name() -> str:
    """``host:pid`` of this process, as lock files record it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class UnitLock:
    """The lock file of one unit, held while the unit runs (see the module's protocol).

    Args:
        path: the lock file (``OUT/.locks/<id>.lock``).
        timeout: seconds without a heartbeat after which the lock is a dead worker's.
        owner: recorded as the owner (default :func:`owner_name`).

    Example:
        >>> import tempfile
        >>> lock = UnitLock(Path(tempfile.mkdtemp()) / "u.lock", timeout=60)
        >>> lock.acquire(), UnitLock(lock.path, timeout=60).acquire()
        (True, False)
        >>> lock.release(); lock.path.exists()
        False
    """

    def __init__(self, path: str | Path, timeout: float = DEFAULT_LOCK_TIMEOUT,
                 owner: str | None = None) -> None:
        if not timeout > 0:
            raise ViscopeError(f"Expected a lock timeout > 0 seconds; got {timeout}.")
        self.path = Path(path)
        self.timeout = float(timeout)
        self.owner = owner or owner_name()
        self.token = secrets.token_hex(8)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False  # set when another worker took the lock over (we were too slow)

    def holder(self) -> dict | None:
        """The lock file's record (``None`` when there is no readable lock)."""
        return _read(self.path)

    def _stale(self, record: dict | None, path: Path | None = None) -> bool:
        # an unreadable lock is one being written or a crash mid-write: judge it by mtime
        try:
            beat = float(record["heartbeat"]) if record else (path or self.path).stat().st_mtime
        except (OSError, KeyError, TypeError, ValueError):
            return False
        return time.time() - beat > self.timeout

    def _create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        now = time.time()
        with os.fdopen(fd, "w") as f:
            json.dump({"owner": self.owner, "token": self.token, "started": now,
                       "heartbeat": now}, f)
        return True

    def _take_over(self) -> bool:
        """Replace a dead worker's lock by ours; ``False`` if another worker was first.

        Takers queue on a second file, ``<lock>.takeover`` (``O_EXCL``): only its holder
        removes the lock, and only after reading it again as stale under it, then claims
        with ``O_EXCL`` before letting go. So a fresh lock is never removed by a slower
        taker (renaming the stale file away, as a first version did, could move a lock
        that a third worker had just claimed). A ``.takeover`` file older than the timeout
        was left by a worker that died mid-takeover (a microseconds window) and is cleared.
        """
        mutex = self.path.with_name(f"{self.path.name}.takeover")
        try:
            os.close(os.open(mutex, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            try:
                if time.time() - mutex.stat().st_mtime > self.timeout:
                    mutex.unlink(missing_ok=True)
            except OSError:
                pass
            return False
        try:
            if not self._stale(self.holder()):  # already replaced by a live worker's lock
                return False
            self.path.unlink(missing_ok=True)
            return self._create()
        finally:
            mutex.unlink(missing_ok=True)

    def acquire(self) -> bool:
        """Claim the lock; ``True`` when this worker now holds it (heartbeat started)."""
        if not self._create() and not (self._stale(self.holder()) and self._take_over()):
            return False
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        name=f"heartbeat {self.path.name}")
        self._thread.start()
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.timeout / 4):
            self.refresh()

    def refresh(self) -> None:
        """Rewrite the heartbeat now (the heartbeat thread calls it every timeout / 4)."""
        record = self.holder()
        if record is None or record.get("token") != self.token:
            self.lost = True
            return
        record["heartbeat"] = time.time()
        atomic_write_json(self.path, record)

    def release(self) -> None:
        """Stop the heartbeat and delete the lock file if it is still this worker's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        record = self.holder()
        if record is not None and record.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> UnitLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass
class WorkReport:
    """What one worker did with its units.

    Attributes:
        ran: ids of the units it ran.
        finished: ids of the units that were already finished (not claimed).
        left: ids of the units it left to other workers (locked by a live worker).
        results: what each run unit returned, by id.
    """

    ran: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)


def lock_path(out: str | Path, unit: Unit) -> Path:
    """``OUT/.locks/<id>.lock``."""
    return Path(out) / LOCKS / f"{unit.id}.lock"


def run_units(units: Iterable[Unit], out: str | Path, *,
              timeout: float = DEFAULT_LOCK_TIMEOUT,
              log: Callable[[str], None] | None = None) -> WorkReport:
    """Run each unfinished unit that no live worker holds, each under its lock.

    A unit is checked for being finished before it is claimed and again once claimed
    (another worker may have finished it in between). The lock is released when the unit
    returns or raises; an exception propagates (the unit's finished outputs stay).

    Returns:
        The :class:`WorkReport`; ``left`` lists the units other workers were running.
    """
    report = WorkReport()
    for unit in units:
        if unit.done():
            report.finished.append(unit.id)
            continue
        lock = UnitLock(lock_path(out, unit), timeout)
        if not lock.acquire():
            holder = lock.holder() or {}
            if log:
                log(f"{unit.id}: running in {holder.get('owner', 'another worker')}; "
                    f"left to it")
            report.left.append(unit.id)
            continue
        with lock:
            if unit.done():
                report.finished.append(unit.id)
                continue
            report.results[unit.id] = unit.run()
            report.ran.append(unit.id)
            if lock.lost and log:  # our heartbeat came late (a stalled node): say so
                log(f"{unit.id}: another worker took its lock over while this one ran it "
                    f"(heartbeat older than {timeout:.0f} s); its outputs are written "
                    f"atomically, so the last writer's stay")
    if report.left and log:
        log(f"left to other workers: {', '.join(report.left)}")
    return report


def missing_units(units: Iterable[Unit]) -> list[str]:
    """Ids of the units not finished (their ``done()`` is false), in order."""
    return [u.id for u in units if not u.done()]


def work(units: Sequence[Unit], out: str | Path, *, shard: str | None = None,
         balance: str = "index", timeout: float = DEFAULT_LOCK_TIMEOUT,
         collect: bool = False, log: Callable[[str], None] | None = None) -> WorkReport:
    """This worker's share of a study: the units of ``shard`` (:func:`select`) run with
    :func:`run_units`; nothing when ``collect``. What the studies' ``run`` share.

    Raises:
        ViscopeError: a bad ``shard`` or ``balance`` (before any unit runs).
    """
    mine = select(units, shard, balance)  # validates shard and balance even when collecting
    return run_units([] if collect else mine, out, timeout=timeout, log=log)


def tabulate(units: Sequence[Unit], write: Callable[[list[str]], Any]) -> tuple[Any, list[str]]:
    """``write(missing)`` (the study's tables from its finished units, ``missing`` the ids
    of the others) until no unit finished while it wrote.

    Another worker may finish a unit while this one writes partial tables, which would
    replace that worker's complete ones: writing again until the missing list holds still
    leaves the last writer's tables complete.

    Returns:
        What the last ``write`` returned, and the missing ids it was given.
    """
    missing = missing_units(units)
    while True:
        result = write(missing)
        now = missing_units(units)
        if now == missing:
            return result, missing
        missing = now


def write_missing(path: str | Path, missing: Sequence[str]) -> None:
    """List ``missing`` one id a line in ``path`` (deleted when nothing is missing)."""
    from viscope.io import atomic_write_text

    path = Path(path)
    if missing:
        atomic_write_text(path, "\n".join(missing) + "\n")
    else:
        path.unlink(missing_ok=True)


def run_and_report(units: Sequence[Unit], out: Path, finals: Mapping[Any, Any],
                   report: Callable[[dict, list[str]], Any], empty: Callable[[], Any], *,
                   job: str, started: float, shard: str | None = None,
                   balance: str = "index", timeout: float = DEFAULT_LOCK_TIMEOUT,
                   collect: bool = False, log: Callable[[str], None] = lambda _s: None) -> Any:
    """This worker's units (:func:`work`), then the study's report from the finished ones
    — partial, with ``missing.txt`` listing the rest, until every unit is finished (what
    the init and SSL studies share).

    Args:
        finals: each unit's last stage by key (anything with ``finished()``); a finished
            one goes into the report.
        report: ``report(finished, missing)`` writes the tables and returns the result.
        empty: the result when no unit is finished yet.
        job: the study's name, for the log lines.
        started: ``time.perf_counter()`` at the start, for the closing line.
    """
    done = work(units, out, shard=shard, balance=balance, timeout=timeout, collect=collect,
                log=log)

    def write(missing: list[str]) -> Any:
        write_missing(out / "missing.txt", missing)
        finished = {k: st for k, st in finals.items() if st.finished()}
        if not finished:
            log(f"{job}: no run finished yet; missing {', '.join(missing)}")
            return empty()
        return report(finished, missing)

    result, missing = tabulate(units, write)
    if done.ran or not missing:
        log(f"{job}: {time.perf_counter() - started:.0f} s; summary in {out / 'summary.md'}")
    return result
