"""Targets: what score an explanation explains, resolved once per call.

A target is one of:

* ``None``: the class the model predicts for each image;
* an ``int`` (or a NumPy integer, a 0-d integer array or tensor): that class for every
  image; a sequence, 1-D NumPy array or 1-D tensor of integers: one per image (fractional
  values are refused, never truncated);
* a callable ``f(outputs) -> (N,)``: a score per output row (shared by all images);
* a list of callables, one per image, each ``f(output_row) -> scalar`` (pytorch-grad-cam's
  convention), for instance :class:`RegionTarget` for segmentation models.

>>> logits = torch.tensor([[0.0, 2.0], [3.0, 1.0]])
>>> resolve_target(1, 2).score(logits).tolist()
[2.0, 1.0]
>>> resolve_target(None, 2).score(logits).tolist()
[2.0, 3.0]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from viscope.activations import preserved_buffers
from viscope.errors import ViscopeError

TargetArg = int | Sequence[int] | torch.Tensor | np.ndarray | Callable | Sequence[Callable] | None


class RegionTarget:
    """The summed output of one class over a region (segmentation models).

    Args:
        category: the output channel (class) to explain.
        mask: (H, W) weights over the output's spatial grid (1 inside the region).

    Example:
        >>> out = torch.ones(2, 3, 4, 4)
        >>> mask = torch.zeros(4, 4); mask[:2, :2] = 1
        >>> RegionTarget(1, mask)(out).tolist()
        [4.0, 4.0]
    """

    def __init__(self, category: int, mask: torch.Tensor) -> None:
        self.category = int(category)
        self.mask = torch.as_tensor(mask)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        """Score one output (K, H, W) -> scalar, or a batch (N, K, H, W) -> (N,)."""
        mask = self.mask.to(output.device, output.dtype)
        if output.ndim == mask.ndim + 1:
            return (output[self.category] * mask).sum()
        return (output[:, self.category] * mask).sum(dim=(-2, -1))


@dataclass
class Target:
    """A resolved target; :meth:`score` gives one score per output row.

    Attributes:
        batch: the number of images.
        classes: (B,) class indices, or ``None`` (callables, or not yet predicted).
        fn: a shared callable ``outputs -> (N,)``.
        per_image: one callable per image, each ``output_row -> scalar``.
    """

    batch: int
    classes: torch.Tensor | None = None
    fn: Callable | None = None
    per_image: list[Callable] | None = None
    _valid_for: int | None = field(default=None, repr=False, compare=False)  # checked K

    @property
    def predicted(self) -> bool:
        """True while the target is "the predicted class" and not fixed yet."""
        return self.classes is None and self.fn is None and self.per_image is None

    def fix(self, model: torch.nn.Module, images: torch.Tensor) -> Target:
        """Fix "the predicted class" with one forward pass (no graph; BatchNorm statistics
        of a model in train mode put back); returns ``self``."""
        if self.predicted:
            with torch.no_grad(), preserved_buffers(model):
                self.classes = _logits(model(images)).argmax(dim=1)
        return self

    def class_outputs(self, outputs: torch.Tensor) -> torch.Tensor:
        """``outputs`` as class logits (N, K), with :attr:`classes` checked against K.

        Raises:
            ViscopeError: outputs that are not (N, K), or a class index outside [0, K).
        """
        logits = _logits(outputs)
        # the range check syncs a GPU: once per number of outputs K
        if self.classes is not None and self._valid_for != logits.shape[1]:
            class_logits(logits, self.classes)
            self._valid_for = logits.shape[1]
        return logits

    def check(self, outputs: object) -> None:
        """Check the class indices against ``outputs`` when they are class logits (N, K).

        For methods that never score the target (class-agnostic ones), so that a class
        the model does not have is still an error; other outputs and targets pass.

        Raises:
            ViscopeError: a class index outside [0, K).
        """
        if self.classes is not None and isinstance(outputs, torch.Tensor) and outputs.ndim == 2:
            self.class_outputs(outputs)

    def score(
        self, outputs: torch.Tensor, index: torch.Tensor | None = None, *, prob: bool = False
    ) -> torch.Tensor:
        """One score per row of ``outputs``.

        Args:
            outputs: model outputs (N, ...); row ``i`` comes from image ``index[i]``.
            index: (N,) image index of each row; ``None``: row ``i`` is image ``i``.
            prob: for class targets, the softmax probability instead of the logit.

        Returns:
            (N,) scores, differentiable with respect to ``outputs``.
        """
        n = outputs.shape[0]
        if index is None:
            if n != self.batch:
                raise ViscopeError(
                    f"Expected {self.batch} output rows (one per image); got {n}."
                )
            index = torch.arange(n, device=outputs.device)
        if self.predicted:
            self.classes = _logits(outputs).detach().argmax(dim=1)
        if self.classes is not None:
            logits = self.class_outputs(outputs)
            values = logits.softmax(dim=1) if prob else logits
            cls = self.classes.to(outputs.device)[index]
            return values.gather(1, cls[:, None])[:, 0]
        if self.fn is not None:
            scores = self.fn(outputs)
            if not isinstance(scores, torch.Tensor) or scores.shape != (n,):
                raise ViscopeError(
                    f"Expected the target callable to return one score per row, shape ({n},); "
                    f"got {getattr(scores, 'shape', type(scores).__name__)}."
                )
            return scores
        assert self.per_image is not None
        rows = [self.per_image[int(b)](outputs[i]).reshape(()) for i, b in enumerate(index)]
        return torch.stack(rows)


def class_logits(outputs: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``outputs`` as class logits (N, K); an error unless every index of ``classes`` is one
    of the K classes (torch's own check is an opaque error, a device assert on CUDA)."""
    logits = _logits(outputs)
    k = logits.shape[1]
    bad = (classes < 0) | (classes >= k)
    if bool(bad.any()):
        raise ViscopeError(
            f"Expected class indices in [0, {k}) (the model has {k} outputs); got "
            f"{sorted(set(classes[bad].tolist()))}."
        )
    return logits


def _logits(outputs: torch.Tensor) -> torch.Tensor:
    if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2:
        raise ViscopeError(
            f"Expected class logits (B, classes) for a class-index target; got "
            f"{getattr(outputs, 'shape', type(outputs).__name__)}. For other outputs pass a "
            "callable target (e.g. RegionTarget(category, mask) for segmentation)."
        )
    return outputs


def resolve_target(target: TargetArg, batch: int) -> Target:
    """Turn a user's ``target=`` into a :class:`Target` for ``batch`` images.

    Class indices may be Python ints, NumPy integers or integer NumPy arrays and torch
    tensors (0-d: one class for every image; 1-d: one per image), or a list of them.

    Args:
        target: see the module docstring.
        batch: the number of images.

    Returns:
        The resolved target.

    Raises:
        ViscopeError: a list or tensor whose length is not ``batch``, a fractional, boolean
            or multi-dimensional class index, or an unusable value.

    Example:
        >>> import numpy as np
        >>> resolve_target(np.array([1, 3]), 2).classes.tolist()
        [1, 3]
    """
    if target is None:
        return Target(batch)
    if callable(target) and not isinstance(target, torch.Tensor | np.ndarray):
        return Target(batch, fn=target)
    if isinstance(target, torch.Tensor | np.ndarray | numbers.Number | np.bool_):
        classes = class_indices(target)
        if classes.ndim == 0:
            return Target(batch, classes=classes.expand(batch).clone())
        items: list = list(classes)
    else:
        try:
            items = list(target)
        except TypeError:
            raise ViscopeError(
                f"Expected a class index, a list of them or a callable; got {target!r}."
            ) from None
    if len(items) != batch:
        raise ViscopeError(
            f"Expected one target per image ({batch}); got {len(items)}. Pass an int to use "
            "one class for every image, or a list of length equal to the batch."
        )
    if items and all(callable(t) for t in items):
        return Target(batch, per_image=items)
    if any(callable(t) for t in items):
        raise ViscopeError(
            "Expected a list of class indices or of callables; got "
            f"{[type(t).__name__ for t in items]}."
        )
    return Target(batch, classes=torch.stack([class_indices(t).reshape(()) for t in items])
                  if items else torch.zeros(0, dtype=torch.long))


def class_indices(value: object) -> torch.Tensor:
    """``value`` as a 0-d or 1-d ``torch.long`` tensor of class indices.

    Integers (Python, NumPy) and integer arrays or tensors pass; fractional, boolean or
    multi-dimensional values are refused rather than truncated (``int(2.7)`` is 2).

    Raises:
        ViscopeError: a value that is not a 0-d or 1-d integer.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_):
        return torch.tensor(int(value), dtype=torch.long)
    if isinstance(value, np.ndarray) and value.dtype.kind in "iu" and value.ndim <= 1:
        return torch.from_numpy(value.astype(np.int64))
    integer = isinstance(value, torch.Tensor) and not (
        value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)
    if integer and value.ndim <= 1:
        return value.detach().to("cpu", torch.long)
    flat = isinstance(value, torch.Tensor | np.ndarray) and value.ndim > 1
    fix = ("Pass one class per image as a 1-d array (e.g. labels.flatten())" if flat else
           "Cast them to integers (e.g. labels.long()), or pass a callable target for other "
           "scores")
    raise ViscopeError(
        f"Expected integer class indices (an int, or a 0-d or 1-d integer array or tensor, "
        f"one per image); got {_describe(value)}. {fix}."
    )


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor | np.ndarray):
        shape = tuple(value.shape)
        shown = f" {value.tolist()!r}" if math.prod(shape) <= 8 else ""
        return f"{type(value).__name__} of dtype {value.dtype} and shape {shape}{shown}"
    return f"{value!r} ({type(value).__name__})"
