"""Tiny image folders and CSV files written with PIL, shared by the loader tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

RED, BLUE = (255, 0, 0), (0, 0, 255)
GARBAGE = b"this is not an image\x00\x01\x02" * 10


def _write_png(
    path: Path,
    colour: tuple[int, int, int] = RED,
    size_wh: tuple[int, int] = (12, 10),
    mode: str = "RGB",
) -> Path:
    """A uniform image of ``colour`` (``size_wh`` is PIL's (width, height))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size_wh, colour).convert(mode).save(path)
    return path


def _write_mask(
    path: Path,
    box: tuple[int, int, int, int],
    size_wh: tuple[int, int] = (12, 10),
    on: int = 255,
) -> Path:
    """A mask that is ``on`` inside rows box[0]:box[1], cols box[2]:box[3], 0 elsewhere."""
    arr = np.zeros((size_wh[1], size_wh[0]), dtype=np.uint8)
    arr[box[0] : box[1], box[2] : box[3]] = on
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="L").save(path)
    return path


@pytest.fixture
def write_png() -> Callable[..., Path]:
    """``write_png(path, colour=RED, size_wh=(12, 10), mode="RGB")`` -> path."""
    return _write_png


@pytest.fixture
def write_mask() -> Callable[..., Path]:
    """``write_mask(path, (row0, row1, col0, col1), size_wh=(12, 10), on=255)`` -> path."""
    return _write_mask


@pytest.fixture
def garbage() -> bytes:
    """Bytes that no image reader accepts."""
    return GARBAGE


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """root/dog (2 blue images) and root/cat (3 red images, one of them grey-scale RGBA)."""
    root = tmp_path / "pets"
    _write_png(root / "dog" / "d1.png", BLUE)
    _write_png(root / "dog" / "d2.png", BLUE)
    _write_png(root / "cat" / "c1.png", RED)
    _write_png(root / "cat" / "c2.png", RED, mode="RGBA")
    _write_png(root / "cat" / "nested" / "c3.png", (128, 128, 128), mode="L")
    (root / "cat" / "notes.txt").write_text("not an image")
    _write_png(root / "cat" / ".hidden.png", RED)
    return root


@pytest.fixture
def corrupt_folder(folder: Path) -> Path:
    """``folder`` plus one garbage file posing as a PNG."""
    (folder / "dog" / "bad.png").write_bytes(GARBAGE)
    return folder
