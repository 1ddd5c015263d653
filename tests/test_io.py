"""Atomic writes: the final file has the mode ``open(path, "w")`` would give it, not 0600."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from viscope.io import atomic_write, atomic_write_json, atomic_write_text, temp_file_beside
from viscope.models import create, save_checkpoint

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")

UMASKS = [0o022, 0o077, 0o002]


@pytest.fixture(params=UMASKS, ids=[f"umask{m:03o}" for m in UMASKS])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _save_model(path: Path) -> Path:
    return save_checkpoint(create("test_vit", num_classes=2, img_size=32), path)


WRITERS: dict[str, Callable[[Path], Path]] = {
    "atomic_write_text": lambda p: atomic_write_text(p, "hello\n"),
    "atomic_write_json": lambda p: atomic_write_json(p, {"a": 1}),
    "atomic_write": lambda p: atomic_write(p, lambda t: t.write_bytes(b"\x00\x01")),
    "save_checkpoint": _save_model,
}


@pytest.mark.parametrize("write", list(WRITERS.values()), ids=list(WRITERS))
def test_written_file_mode_follows_umask(
    write: Callable[[Path], Path], umask: int, tmp_path: Path
) -> None:
    reference = tmp_path / "plain.txt"
    with open(reference, "w") as f:
        f.write("x")

    path = write(tmp_path / "sub" / "out.bin")

    assert _mode(path) == 0o666 & ~umask == _mode(reference)
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.bin"]  # no temp file left


def test_replacing_a_0600_file_gives_the_umask_mode(umask: int, tmp_path: Path) -> None:
    path = tmp_path / "old.txt"
    path.write_text("old")
    path.chmod(0o600)
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert _mode(path) == 0o666 & ~umask


def test_temp_file_beside_is_new_hidden_and_unique(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    fd1, tmp1 = temp_file_beside(target)
    fd2, tmp2 = temp_file_beside(target)
    os.close(fd1)
    os.close(fd2)
    assert tmp1 != tmp2
    assert tmp1.parent == tmp_path and tmp1.name.startswith(".a.json.")
    assert tmp1.stat().st_size == 0 and not target.exists()


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    def boom(p: Path) -> None:
        p.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(tmp_path / "x.txt", boom)
    assert list(tmp_path.iterdir()) == []
