"""Evaluation mode that gives back exactly what it took.

``model.eval()`` then ``model.train(was_training)`` sets *every* submodule to the top-level
mode afterwards, so a frozen backbone kept in eval mode inside a training model (batch-norm
statistics fixed) comes back in train mode. :func:`evaluation_mode` records each module's
own flag and restores it; every measurement that may run in the middle of a training (the
invariance engine, explanation equivariance, evaluation, the training-time tracker) uses it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def evaluation_mode(model: nn.Module, device: torch.device | str | None = None
                    ) -> Iterator[nn.Module]:
    """``model`` in eval mode (on ``device`` when given) inside; afterwards every module's
    own train/eval flag as it was, and the model back on the device of its parameters.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
        >>> _ = net[1].eval()  # a frozen part
        >>> with evaluation_mode(net) as m:
        ...     m.training, m[1].training
        (False, False)
        >>> net.training, net[0].training, net[1].training
        (True, True, False)
    """
    modes = {m: m.training for m in model.modules()}
    first = next(model.parameters(), None)
    home = first.device if first is not None else None
    target = torch.device(device) if device is not None else home
    try:
        yield model.eval().to(target) if target is not None else model.eval()
    finally:
        if home is not None and target is not None and home != target:
            model.to(home)
        for m, training in modes.items():
            m.training = training
