"""The training run folder: ``train.json``, the result it records and resume checks.

A run folder holds ``train.json`` (status, resolved configuration, results),
``best.pt`` (the viscope checkpoint of the best validation epoch), Lightning's
``metrics.csv`` and ``hparams.yaml``, ``checkpoints/`` while training (Lightning's
``last.ckpt`` and best ``.ckpt``, for resuming) and ``tensorboard/`` when TensorBoard is
installed.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from viscope.errors import ViscopeError
from viscope.models import unwrap

RECORD = "train.json"
SETTINGS = "config.yaml"
BEST = "best.pt"
METRICS = "metrics.csv"
CHECKPOINTS = "checkpoints"
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc")
_OUTPUTS = (RECORD, SETTINGS, BEST, METRICS, "hparams.yaml", CHECKPOINTS, "tensorboard")


@dataclass
class TrainResult:
    """What :func:`viscope.train.fit` produced.

    Attributes:
        checkpoint: ``best.pt``, the weights of the epoch with the best ``monitor`` value
            (``viscope.models.create(checkpoint)`` rebuilds the model).
        best_val_acc: validation accuracy of that epoch (``None`` when no objective
            measured accuracy).
        test_acc: accuracy of that model on the test split (``None`` without one, or
            without a classifying objective).
        history: one row per epoch: ``epoch, train_loss, val_loss, val_acc``, then any
            other logged value (``train_<name>_loss``, ``val_<metric>``, ...).
        seconds: wall time of the ``fit`` call that finished the run.
        out: the run folder.
        best_epoch: the epoch (from 0) of ``checkpoint``.
        epochs: epochs run (fewer than asked after early stopping or ``max_steps``).
        images_per_second: training throughput, first epoch excluded when there were
            several (see :class:`~viscope.train.callbacks.ThroughputMeter`).
        skipped: ``True`` when the run was already finished and nothing was trained.
        model: the trained model (best weights), when ``fit`` was given or built one.
        monitor: the validation value that selected the epoch (``"val_acc"``).
        best_score: its value at that epoch.
        test_metrics: test losses and metrics of objectives other than plain
            cross-entropy (``{"test_loss": ..., "test_<key>": ...}``), else ``None``.
    """

    checkpoint: Path
    best_val_acc: float | None
    test_acc: float | None
    history: pd.DataFrame
    seconds: float
    out: Path
    best_epoch: int
    epochs: int
    images_per_second: float | None
    skipped: bool = False
    model: nn.Module | None = field(default=None, repr=False)
    monitor: str = "val_acc"
    best_score: float | None = None
    test_metrics: dict[str, float] | None = None

    @classmethod
    def from_record(
        cls, out: Path, record: dict[str, Any], *, skipped: bool, model: nn.Module | None = None
    ) -> TrainResult:
        """Rebuild the result stored in a finished run's ``train.json``."""
        return cls(
            checkpoint=out / BEST,
            best_val_acc=_float_or_none(record.get("best_val_acc")),
            test_acc=None if record.get("test_acc") is None else float(record["test_acc"]),
            history=history_frame(record.get("history") or []),
            seconds=float(record["seconds"]),
            out=out,
            best_epoch=int(record["best_epoch"]),
            epochs=int(record["epochs_run"]),
            images_per_second=record.get("images_per_second"),
            skipped=skipped,
            model=model,
            monitor=str(record.get("monitor", "val_acc")),
            best_score=_float_or_none(record.get("best_score", record.get("best_val_acc"))),
            test_metrics=record.get("test_metrics"),
        )


def read_record(out: Path, name: str = RECORD) -> dict[str, Any] | None:
    """The run's record (``train.json``, or ``name``), or ``None`` when there is none.

    Raises:
        ViscopeError: the file exists but is not a JSON object.
    """
    path = out / name
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ViscopeError(
            f"Expected {path} to be a run record (JSON); could not read it ({err}). "
            "Delete it or pass overwrite=True to start the run again."
        ) from None
    if not isinstance(record, dict):
        raise ViscopeError(f"Expected a JSON object in {path}; got {type(record).__name__}.")
    return record


def plain(obj: Any) -> Any:
    """``obj`` as JSON would give it back (tuples become lists, NaN becomes ``None``)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return json.loads(json.dumps(obj, default=str))


def config_diff(stored: Any, current: dict[str, Any], prefix: str = "") -> list[str]:
    """Lines ``key: stored -> current`` for every setting that differs.

    >>> config_diff({"seed": 0, "lr": 0.1}, {"seed": 1, "lr": 0.1})
    ['seed: 0 -> 1']
    """
    if not isinstance(stored, dict):
        return [f"{prefix or 'config'}: {stored!r} -> (a configuration)"]
    lines = []
    for key in sorted(set(stored) | set(current)):
        old, new = stored.get(key, "<missing>"), current.get(key, "<missing>")
        if isinstance(old, dict) and isinstance(new, dict):
            lines += config_diff(old, new, f"{prefix}{key}.")
        elif old != new:
            lines.append(f"{prefix}{key}: {_short(old)} -> {_short(new)}")
    return lines


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clear_run(out: Path, outputs: tuple[str, ...] = _OUTPUTS) -> None:
    """Delete the files a run writes in ``out`` (``outputs``; nothing else)."""
    for name in outputs:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def history_frame(rows: Any) -> pd.DataFrame:
    """A per-epoch history table: the columns :data:`HISTORY_COLUMNS`, then the other
    logged values of the rows (sorted by name)."""
    rows = list(rows)
    others = sorted({k for r in rows for k in r if k not in HISTORY_COLUMNS and k != "step"})
    columns = [*HISTORY_COLUMNS, *others]
    frame = pd.DataFrame(rows, columns=columns)
    frame["epoch"] = frame["epoch"].astype("int64")
    return frame.astype({c: "float64" for c in columns[1:]})


def history_from_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """Collapse Lightning's ``metrics.csv`` rows (one per log call) into one row per epoch."""
    if metrics.empty or "epoch" not in metrics:
        return history_frame([])
    frame = metrics.dropna(subset=["epoch"]).groupby("epoch", sort=True).last().reset_index()
    for column in HISTORY_COLUMNS:
        if column not in frame:
            frame[column] = float("nan")
    logged = [c for c in frame.columns if c.startswith(("train_", "val_"))]
    return history_frame(frame[list(dict.fromkeys([*HISTORY_COLUMNS, *logged]))].to_dict("records"))


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def merge_metrics(previous: pd.DataFrame | None, path: Path) -> pd.DataFrame:
    """Lightning's metrics of this session, after the earlier sessions' rows of a resumed run.

    Lightning's CSV logger starts a fresh ``metrics.csv`` in every session; rows of
    epochs before the first one logged now are taken from ``previous``.
    """
    current = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    if previous is None or previous.empty or "epoch" not in previous:
        return current
    if current.empty or "epoch" not in current:
        return previous
    older = previous[previous["epoch"] < current["epoch"].min()]
    return pd.concat([older, current], ignore_index=True)


class RunMismatch(ViscopeError):
    """The run folder holds a run made with another training configuration.

    Attributes:
        differences: the differing keys, ``"key: stored -> current"`` each.
    """

    def __init__(self, message: str, differences: list[str]) -> None:
        super().__init__(message)
        self.differences = differences


@dataclass(frozen=True)
class RunFiles:
    """What a resumable job writes in its run folder, for :func:`prepare_folder`.

    Attributes:
        record: the JSON record (configuration, status, results).
        finished: the file a finished run has (with ``status == "finished"``).
        last: Lightning's last checkpoint, to resume from.
        outputs: every file or folder the job writes (deleted to start afresh).
        job: what the job is called in messages.
    """

    record: str
    finished: str
    last: str
    outputs: tuple[str, ...]
    job: str


#: The files of a :func:`viscope.train.fit` run.
TRAIN_FILES = RunFiles(RECORD, BEST, f"{CHECKPOINTS}/last.ckpt", _OUTPUTS, "training")


def prepare_folder(out: Path, config: dict[str, Any], overwrite: bool,
                   files: RunFiles = TRAIN_FILES) -> dict | Path | None:
    """Decide what to do with a run folder (training, pre-training: ``files`` says which).

    Returns:
        The stored record when the run is finished (skip), the last checkpoint to resume
        from, or ``None`` to start afresh (after deleting a previous run's files).

    Raises:
        RunMismatch: the folder holds a run with another configuration (and not
            ``overwrite``).
    """
    from viscope.train.distributed import is_main

    # Under DDP every rank decides, but only rank 0 deletes: the other ranks (started by
    # Lightning at rank 0's Trainer.fit) read the folder after rank 0 wrote its "running"
    # record, and clearing it then would delete rank 0's files mid-run.
    clear = clear_run if is_main() else (lambda *_: None)
    stored = read_record(out, files.record)
    if stored is None or overwrite:
        clear(out, files.outputs)
        return None
    diff = config_diff(stored.get("config"), config)
    if diff:
        listed = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise RunMismatch(
            f"Expected the run folder {out} to hold the same {files.job} configuration; it "
            f"holds another run ({stored.get('status', 'unknown')}) that differs in: "
            f"{listed}. Use another out= folder, or pass overwrite=True (--overwrite on the "
            f"command line) to delete that run and start again.",
            diff,
        )
    if stored.get("status") == "finished" and (out / files.finished).is_file():
        return stored
    if (out / files.last).is_file():
        return out / files.last
    clear(out, files.outputs)
    return None


def state_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names and bytes), to record initial weights."""
    digest = hashlib.sha256()
    for name, tensor in unwrap(model).state_dict().items():
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()
