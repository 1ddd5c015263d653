"""Run-folder helpers: atomic writes and a record of the environment."""

from __future__ import annotations

import json
import os
import platform
import secrets
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def temp_file_beside(path: str | Path, suffix: str = ".tmp") -> tuple[int, Path]:
    """Create a new, empty hidden file next to ``path``; return its open descriptor and path.

    :func:`tempfile.mkstemp` always creates mode 0600, which the final ``os.replace`` would
    carry over to ``path``. Here the file is created like ``open(path, "w")`` does: mode
    0666 and the kernel removes the process umask (0644 under the usual umask 022). The
    umask is thus never read or changed, which would race with other threads.

    Args:
        path: the file that the temporary file will replace; its folder must exist.
        suffix: the end of the temporary file's name.

    Returns:
        ``(fd, tmp)``: a descriptor open for reading and writing, and the file's path.

    Raises:
        FileExistsError: no free name was found (only if the folder is full of them).

    Example:
        >>> import tempfile
        >>> fd, tmp = temp_file_beside(Path(tempfile.mkdtemp()) / "out.json")
        >>> os.close(fd)
        >>> tmp.name.startswith(".out.json.") and tmp.suffix == ".tmp"
        True
    """
    path = Path(path)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(tempfile.TMP_MAX):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {path}")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` via ``write(tmp)`` to a temporary file in the same folder, then rename.

    A crash mid-write leaves the old file (or none), never a truncated one. The file gets
    the mode ``open(path, "w")`` gives a new file (``0o666 & ~umask``), see
    :func:`temp_file_beside`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically write ``text`` to ``path``."""
    return atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def environment() -> dict[str, Any]:
    """Versions of Python and the main libraries, the machine, and the git revision."""
    import numpy
    import timm
    import torch

    import viscope

    env: dict[str, Any] = {
        "viscope": viscope.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).parent,
        )
        env["git_revision"] = rev.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_revision"] = None
    return env
