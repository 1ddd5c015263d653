"""The Lightning side of ``fit``: the trainer, its callbacks and loggers, quiet output.

Kept apart from :mod:`viscope.train.fit` so that ``fit`` reads as its steps (data, module,
trainer, resume, result) and this file holds what Lightning needs to run them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger

from viscope.errors import ViscopeError
from viscope.train.callbacks import ThroughputMeter, ValidateAtMaxSteps
from viscope.train.run import CHECKPOINTS

#: Trainer arguments that change where or how fast a run goes, not what it computes;
#: they are recorded but not compared when deciding whether a run folder matches.
HARDWARE_ARGS = frozenset(
    {
        "accelerator",
        "devices",
        "num_nodes",
        "strategy",
        "enable_progress_bar",
        "enable_model_summary",
        "log_every_n_steps",
        "default_root_dir",
        "benchmark",
        "num_sanity_val_steps",
        "profiler",
        "barebones",
        "sync_batchnorm",
    }
)
#: Lightning's notes that fit's own set-up makes expected (resuming into a run folder,
#: in-memory datasets without workers, small epochs); silenced during fit.
_EXPECTED_WARNINGS = (
    r".*exists and is not empty.*",
    r".*does not have many workers.*",
    r".*is smaller than the logging interval.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
)
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning")
#: Lightning's short precision names and the names they stand for (``"32"`` is ``"32-true"``).
_PRECISION_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}


class TrainerParts:
    """The trainer of one ``fit`` call and the callbacks whose results ``fit`` reads.

    Attributes:
        trainer: the ``pl.Trainer``.
        best: the ``ModelCheckpoint`` that keeps the best validation epoch.
        meter: the :class:`ThroughputMeter`.
    """

    def __init__(self, trainer: pl.Trainer, best: ModelCheckpoint, meter: ThroughputMeter):
        self.trainer, self.best, self.meter = trainer, best, meter


def make_trainer(
    out: Path,
    *,
    monitor: str,
    mode: str,
    early_stop_patience: int | None,
    extra_callbacks: list[Callback],
    extra_loggers: list[Logger],
    options: Mapping[str, Any],
) -> TrainerParts:
    """``pl.Trainer`` with fit's callbacks (best checkpoint on ``monitor``, throughput, a
    validation at ``max_steps``, early stopping) and loggers (CSV, TensorBoard if
    installed), then the caller's.

    Args:
        out: the run folder (checkpoints under ``out/checkpoints``, logs in ``out``).
        monitor: the validation value that selects the best epoch (``"val_acc"``).
        mode: ``"max"`` or ``"min"``: whether a larger ``monitor`` is better.
        early_stop_patience: stop when ``val_loss`` has not improved for this many epochs.
        extra_callbacks: the caller's callbacks, added after fit's own.
        extra_loggers: the caller's loggers, added after fit's own.
        options: the trainer's keyword arguments.

    Returns:
        The trainer and the callbacks ``fit`` reads afterwards.

    Raises:
        ViscopeError: Lightning refused a trainer argument (``devices=0``, an unknown
            ``strategy`` or ``accelerator``, ...); the message is Lightning's, on one line.
    """
    best = ModelCheckpoint(
        dirpath=out / CHECKPOINTS,
        filename="best-{epoch}",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        save_last=True,
    )
    meter = ThroughputMeter()
    callbacks: list[Callback] = [best, meter, ValidateAtMaxSteps()]
    if early_stop_patience is not None:
        callbacks.append(EarlyStopping("val_loss", patience=early_stop_patience, mode="min"))
    callbacks += extra_callbacks
    loggers: list[Logger] = [CSVLogger(save_dir=out, name="", version="")]
    if _tensorboard_available():
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=out, name="tensorboard", version=""))
    loggers += extra_loggers
    try:
        trainer = pl.Trainer(callbacks=callbacks, logger=loggers, **options)
    except ViscopeError:
        raise
    except (MisconfigurationException, ValueError) as err:
        message = " ".join(str(err).split())
        raise ViscopeError(
            f"Expected trainer settings that Lightning accepts; it refused them: {message} "
            "Change the setting it names (accelerator, devices, strategy, precision, ...)."
        ) from None
    return TrainerParts(trainer, best, meter)


def check_accelerator(accelerator: Any) -> None:
    """Refuse a CUDA accelerator where there is none, before any work or file is made.

    Lightning would otherwise fail later, with a ``MisconfigurationException`` traceback.
    """
    if str(accelerator).lower() in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ViscopeError(
            f"accelerator={accelerator!r} but no GPU is available here; use "
            "accelerator='cpu' (--accelerator cpu)."
        )


def select_best(best: ModelCheckpoint, module: pl.LightningModule) -> tuple[float, int]:
    """Load the best validation epoch's weights into ``module``; return (score, epoch).

    Raises:
        ViscopeError: validation never ran, so there is no model selected on it.
    """
    path = best.best_model_path
    if not path or not Path(path).is_file() or best.best_model_score is None:
        raise ViscopeError(
            "Expected at least one validation epoch to select the model on; got none (was "
            "limit_val_batches=0 or check_val_every_n_epoch larger than epochs passed?). "
            "Let fit validate every epoch."
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(checkpoint["state_dict"])
    return float(best.best_model_score), int(checkpoint["epoch"])


def canonical_precision(precision: str | int) -> str:
    """Lightning's full name of a precision, so that aliases record the same run.

    Example:
        >>> canonical_precision(32), canonical_precision("bf16"), canonical_precision("16-true")
        ('32-true', 'bf16-mixed', '16-true')
    """
    name = str(precision)
    return _PRECISION_ALIASES.get(name, name)


def is_plain(value: Any) -> bool:
    """Whether ``value`` is JSON-like data (recorded) rather than an object (not recorded)."""
    if isinstance(value, str | int | float | bool | type(None)):
        return True
    if isinstance(value, list | tuple):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    return False


def as_list(value: Any) -> list[Any]:
    """``None``/``False`` as ``[]``, a list or tuple as a list, anything else as ``[value]``."""
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _tensorboard_available() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))


def remove_checkpoints(folder: Path) -> None:
    """Delete Lightning's ``.ckpt`` files in ``folder``, and the folder when it is empty."""
    if folder.is_dir():
        for path in folder.glob("*.ckpt"):
            path.unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Lightning's expected warnings and its info messages (hardware found, tips,
    "max_epochs reached"); its warnings still show."""
    levels = {name: logging.getLogger(name).level for name in _LIGHTNING_LOGGERS}
    with warnings.catch_warnings():
        for message in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        try:
            for name in _LIGHTNING_LOGGERS:
                logging.getLogger(name).setLevel(logging.WARNING)
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
