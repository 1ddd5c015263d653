"""Optimizer and learning-rate schedule, as timm's ``train.py`` sets them up.

The optimizer is timm's ``create_optimizer_v2`` (any of ``timm.optim.list_optimizers()``)
over timm's parameter groups: no weight decay on biases, norm weights and the network's
``no_weight_decay()`` names (ViT position embedding, class token), the usual recipe for
ViTs and CNNs alike. The schedule is one of timm's schedulers stepped after every
optimizer update (``t_in_epochs=False``), with an optional linear warmup.

>>> settings = OptimSettings(lr=0.1, schedule="cosine", warmup_steps=2)
>>> [round(lr_at(settings, t, total=6), 4) for t in range(6)]
[0.0, 0.05, 0.1, 0.0854, 0.05, 0.0146]
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

import timm.optim
import torch
from timm.scheduler import CosineLRScheduler, StepLRScheduler
from timm.scheduler.scheduler import Scheduler
from torch import nn

from viscope.errors import ViscopeError, suggest
from viscope.models import unwrap

SCHEDULES = ("cosine", "step", "constant")
#: timm names of optimizers that take ``momentum`` (SGD: 'sgd' is Nesterov's, as in timm).
_MOMENTUM = ("sgd", "nesterov", "momentum", "rmsprop", "rmsproptf", "lars", "larc", "nlars",
             "nlarc", "sgdp", "sgdw")


@dataclass(frozen=True)
class OptimSettings:
    """How the weights are updated (timm ``train.py``'s names in brackets).

    Attributes:
        lr: peak learning rate (``--lr``).
        weight_decay: decoupled weight decay, not on biases, norms, tokens (``--weight-decay``).
        optimizer: a timm optimizer name: ``"adamw"``, ``"sgd"`` (Nesterov momentum, as in
            timm), ``"momentum"`` (SGD with plain momentum), ``"adam"``, ``"lamb"``, ...
            (``--opt``).
        momentum: momentum of SGD-like optimizers (``--momentum``).
        schedule: ``"cosine"`` (per step down to ``min_lr`` at the last step), ``"step"``
            (multiply by ``decay_rate`` every ``decay_epochs``) or ``"constant"``
            (``--sched``).
        warmup_epochs: linear warmup from ``warmup_lr`` to ``lr`` over this many epochs
            (fractions allowed), before the schedule (``--warmup-epochs``).
        warmup_steps: the same in optimizer steps (give one of the two).
        warmup_lr: the learning rate of the first warmup step (``--warmup-lr``; timm's
            default is 1e-5, viscope's 0 so that the warmup is the plain line ``lr * t / W``).
        min_lr: the learning rate the cosine ends at (``--min-lr``).
        decay_epochs: epochs between two decays of the step schedule (``--decay-epochs``).
        decay_rate: the step schedule's factor (``--decay-rate``).
    """

    lr: float = 1e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    warmup_steps: int = 0
    warmup_lr: float = 0.0
    min_lr: float = 0.0
    decay_epochs: float | None = None
    decay_rate: float = 0.1

    def __post_init__(self) -> None:
        _positive("lr", self.lr, strict=True)
        for name in ("weight_decay", "warmup_epochs", "warmup_lr", "min_lr"):
            _positive(name, getattr(self, name))
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or (
            self.warmup_steps < 0
        ):
            raise ViscopeError(
                f"Expected warmup_steps to be an int >= 0; got {self.warmup_steps!r}."
            )
        if self.warmup_steps and self.warmup_epochs:
            raise ViscopeError(
                f"Expected warmup_epochs or warmup_steps, not both; got warmup_epochs="
                f"{self.warmup_epochs} and warmup_steps={self.warmup_steps}. Keep one."
            )
        known = timm.optim.list_optimizers()
        if not isinstance(self.optimizer, str) or self.optimizer.lower() not in known:
            raise ViscopeError(
                f"Unknown optimizer {self.optimizer!r}.{suggest(str(self.optimizer), known)} "
                "Expected a timm optimizer name (timm.optim.list_optimizers()): adamw, sgd, "
                "momentum, adam, lamb, ..."
            )
        if not isinstance(self.momentum, int | float) or not 0 <= self.momentum < 1:
            raise ViscopeError(f"Expected 0 <= momentum < 1; got {self.momentum!r}.")
        if self.schedule not in SCHEDULES:
            raise ViscopeError(
                f"Expected schedule to be one of {', '.join(SCHEDULES)}; got "
                f"{self.schedule!r}.{suggest(str(self.schedule), SCHEDULES)}"
            )
        if self.schedule == "step":
            if self.decay_epochs is None:
                raise ViscopeError(
                    "Expected decay_epochs with schedule='step' (epochs between two decays "
                    "by decay_rate); got none. Pass decay_epochs=... (--decay-epochs)."
                )
            _positive("decay_epochs", self.decay_epochs, strict=True)
        if not isinstance(self.decay_rate, int | float) or not 0 < self.decay_rate <= 1:
            raise ViscopeError(f"Expected 0 < decay_rate <= 1; got {self.decay_rate!r}.")

    def describe(self) -> dict[str, Any]:
        """The settings for a run's configuration.

        ``lr``, ``weight_decay``, ``schedule`` and ``optimizer`` always; the others only
        where they differ from their defaults, so that a run recorded before they existed
        still matches the same call.
        """
        defaults = OptimSettings()
        record: dict[str, Any] = {
            "lr": float(self.lr),
            "weight_decay": float(self.weight_decay),
            "schedule": self.schedule,
            "optimizer": _optimizer_label(self.optimizer),
        }
        for f in fields(self):
            if f.name in record or f.name in ("momentum",):
                continue
            if getattr(self, f.name) != getattr(defaults, f.name):
                record[f.name] = getattr(self, f.name)
        if self.optimizer.lower() in _MOMENTUM and self.momentum != defaults.momentum:
            record["momentum"] = float(self.momentum)
        return record

    def as_dict(self) -> dict[str, Any]:
        """Every setting, for ``config.yaml`` and the module's hyper-parameters."""
        return asdict(self)


def make_optimizer(
    model: nn.Module,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    *,
    settings: OptimSettings | None = None,
    extra: Iterable[nn.Module] = (),
) -> torch.optim.Optimizer:
    """timm's optimizer over timm's parameter groups of ``model`` and of ``extra`` modules.

    Args:
        model: the model (a viscope wrapper is unwrapped to find ``no_weight_decay``).
        lr: learning rate (when ``settings`` is not given).
        weight_decay: decoupled weight decay of the weights that are not biases, norms or
            tokens (when ``settings`` is not given).
        settings: the full settings (optimizer name, momentum, ...); ``None``: AdamW with
            ``lr`` and ``weight_decay``.
        extra: other trained modules (an objective's head or decoder), grouped the same way.

    Returns:
        The optimizer: one group without weight decay, then one with it (as timm's
        ``create_optimizer_v2`` makes for a single model).

    Example:
        >>> opt = make_optimizer(nn.Linear(3, 2), settings=OptimSettings(optimizer="sgd"))
        >>> type(opt).__name__, [g["weight_decay"] for g in opt.param_groups]
        ('SGD', [0.0, 0.05])
    """
    settings = settings or OptimSettings(lr=lr, weight_decay=weight_decay)
    groups: dict[float, list[nn.Parameter]] = {}
    for module in (unwrap(model), *extra):
        no_decay = getattr(module, "no_weight_decay", lambda: set())()
        for group in timm.optim.param_groups_weight_decay(
            module, settings.weight_decay, no_weight_decay_list=no_decay
        ):
            groups.setdefault(float(group["weight_decay"]), []).extend(group["params"])
    param_groups = [{"params": p, "weight_decay": wd} for wd, p in groups.items() if p]
    return timm.optim.create_optimizer_v2(
        param_groups,
        settings.optimizer.lower(),
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        momentum=settings.momentum,
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, settings: OptimSettings, total: int, per_epoch: int
) -> Scheduler | None:
    """timm's scheduler for ``settings``, counted in optimizer steps.

    Call ``scheduler.step_update(num_updates)`` after every optimizer step with the number
    of steps done; the learning rate of step ``t`` (from 0) is then :func:`lr_at`.

    Args:
        optimizer: the optimizer.
        settings: the schedule's settings.
        total: optimizer steps of the whole run.
        per_epoch: optimizer steps per epoch (turns ``*_epochs`` into steps).

    Returns:
        The scheduler, or ``None`` for a constant rate without warmup.
    """
    warmup = warmup_steps(settings, per_epoch)
    common = {"warmup_t": warmup, "warmup_lr_init": settings.warmup_lr, "warmup_prefix": True,
              "t_in_epochs": False}
    if settings.schedule == "cosine":
        return CosineLRScheduler(
            optimizer, t_initial=max(1, total - warmup), lr_min=settings.min_lr, **common
        )
    if settings.schedule == "step":
        decay = max(1, round(float(settings.decay_epochs) * per_epoch))  # type: ignore[arg-type]
        return StepLRScheduler(optimizer, decay_t=decay, decay_rate=settings.decay_rate, **common)
    if warmup:  # constant after the warmup: a step schedule that never decays
        return StepLRScheduler(optimizer, decay_t=math.inf, decay_rate=1.0, **common)
    return None


def warmup_steps(settings: OptimSettings, per_epoch: int) -> int:
    """The warmup's length in optimizer steps."""
    return settings.warmup_steps or round(settings.warmup_epochs * per_epoch)


def lr_at(settings: OptimSettings, t: int, *, total: int, per_epoch: int = 1) -> float:
    """The learning rate of optimizer step ``t`` (from 0), read off timm's scheduler.

    Example:
        >>> lr_at(OptimSettings(lr=1.0, schedule="constant"), 5, total=10)
        1.0
    """
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=settings.lr)
    scheduler = make_scheduler(optimizer, settings, total, per_epoch)
    if scheduler is not None and t:
        scheduler.step_update(t)
    return float(optimizer.param_groups[0]["lr"])


def _optimizer_label(name: str) -> str:
    # AdamW keeps the wording of earlier records, so that their runs still match.
    label = "AdamW" if name.lower() == "adamw" else name.lower()
    return f"{label} (timm parameter groups: no decay on biases, norms, tokens)"


def _positive(name: str, value: Any, strict: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if not ok or (value <= 0 if strict else value < 0):
        raise ViscopeError(f"Expected {name} {'>' if strict else '>='} 0; got {value!r}.")
