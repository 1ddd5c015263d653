"""Cached stages of a pipeline run folder: a re-run skips finished stages, and a changed
setting re-runs only the stage it belongs to and the stages after it.

Each stage owns a sub-folder ``OUT/<name>/`` and a key: the SHA-256 of its inputs (the
settings that change what it computes) and of the keys of the stages it reads from. A
stage is finished when ``OUT/<name>/stage.json`` holds its key (written atomically, last,
after everything else the stage writes). On a re-run:

* same key and ``stage.json`` present → skipped (its outputs are loaded by the caller);
* another key → the folder is emptied and the stage recomputed; so are the stages after
  it, whose keys contain this one;
* same key but no ``stage.json`` (interrupted) → the stage runs again in its folder, so a
  training inside it resumes from its own checkpoints.

Shared by every staged job (``viscope weakseg``; the quality and SSL studies), so that
each does not invent its own cache rules.

>>> import tempfile
>>> out = Path(tempfile.mkdtemp())
>>> a = Stage(out, "a", {"epochs": 2})
>>> a.done
False
>>> a.finish({"acc": 0.9})
>>> Stage(out, "a", {"epochs": 2}).done, Stage(out, "a", {"epochs": 3}).done
(True, False)
>>> Stage(out, "b", {}, after=[a]).key == Stage(out, "b", {}, after=[Stage(out, "a", {})]).key
False
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from viscope.io import atomic_write_json

STAGE_FILE = "stage.json"


class Stage:
    """One cached stage of a run folder.

    Args:
        out: the run folder.
        name: the stage's sub-folder name.
        inputs: the settings that change what the stage computes (JSON-serialisable).
        after: the stages whose outputs this one reads; their keys enter this key.
    """

    def __init__(self, out: str | Path, name: str, inputs: Mapping[str, Any],
                 after: Sequence[Stage] = ()) -> None:
        self.name = name
        self.folder = Path(out) / name
        self.inputs = json.loads(json.dumps(dict(inputs), sort_keys=True, default=str))
        payload = json.dumps({"inputs": self.inputs, "after": [s.key for s in after]},
                             sort_keys=True)
        self.key = hashlib.sha256(payload.encode()).hexdigest()[:16]
        self._record = self._read()

    def _read(self) -> dict[str, Any] | None:
        path = self.folder / STAGE_FILE
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # a damaged record: the stage runs again

    @property
    def done(self) -> bool:
        """Whether the stage finished with these inputs."""
        return self._record is not None and self._record.get("key") == self.key

    def finished(self) -> bool:
        """Whether the stage finished with these inputs, read again from the folder (another
        worker sharing the run folder may have finished it since this object was made);
        a work unit's ``done``."""
        self._record = self._read()
        return self.done

    @property
    def result(self) -> dict[str, Any]:
        """What :meth:`finish` recorded (``{}`` before)."""
        return dict((self._record or {}).get("result", {})) if self.done else {}

    def start(self) -> Path:
        """Prepare the folder for computing: emptied when it holds another key's outputs,
        kept when it holds this key's interrupted work. Returns the folder."""
        previous = self._started_key()
        if previous is not None and previous != self.key and self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder / "started.json", {"key": self.key, "inputs": self.inputs})
        return self.folder

    def _started_key(self) -> str | None:
        for name in (STAGE_FILE, "started.json"):
            path = self.folder / name
            if path.exists():
                try:
                    return json.loads(path.read_text()).get("key")
                except (OSError, json.JSONDecodeError):
                    return ""
        return "" if self.folder.exists() and any(self.folder.iterdir()) else None

    def run(self, body: Callable[[], Mapping[str, Any]], say: Callable[[str], None],
            label: str | None = None) -> bool:
        """Compute the stage with ``body`` (after :meth:`start`; it returns the result
        :meth:`finish` records) unless it is done; say which, and how long it took.

        Returns:
            Whether the stage was computed by this call.
        """
        name = label or self.name
        if self.done:
            say(f"{name}: finished earlier, skipped")
            return False
        t0 = time.perf_counter()
        self.start()
        self.finish(body())
        say(f"{name}: done in {time.perf_counter() - t0:.0f} s")
        return True

    def finish(self, result: Mapping[str, Any] | None = None) -> None:
        """Mark the stage finished (atomically, after its outputs), with a small result."""
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"key": self.key, "inputs": self.inputs,
                  "result": json.loads(json.dumps(dict(result or {}), default=str))}
        atomic_write_json(self.folder / STAGE_FILE, record)
        self._record = record


def open_run_folder(out: str | Path, config: Mapping[str, Any]) -> Path:
    """Create a staged job's run folder and write its resolved ``config.yaml`` and
    ``environment.json`` (versions, git revision, device) atomically.

    Returns:
        The folder.
    """
    import yaml

    from viscope.io import atomic_write_text, environment

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "config.yaml", yaml.safe_dump(dict(config), sort_keys=False))
    atomic_write_json(folder / "environment.json", environment())
    return folder
