"""Targets: what score an explanation explains, resolved once per call.

A target is one of:

* ``None``: the class the model predicts for each image;
* an ``int``: that class for every image; a sequence or 1-D tensor of ints: one per image;
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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from viscope.errors import ViscopeError

TargetArg = int | Sequence[int] | torch.Tensor | Callable | Sequence[Callable] | None


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
        """Fix "the predicted class" with one forward pass (no graph); returns ``self``."""
        if self.predicted:
            with torch.no_grad():
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

    Args:
        target: see the module docstring.
        batch: the number of images.

    Returns:
        The resolved target.

    Raises:
        ViscopeError: a list or tensor whose length is not ``batch``, or an unusable value.
    """
    if target is None:
        return Target(batch)
    if isinstance(target, bool):
        raise ViscopeError(f"Expected a class index, a list of them or a callable; got {target!r}.")
    if isinstance(target, int):
        return Target(batch, classes=torch.full((batch,), target, dtype=torch.long))
    if callable(target) and not isinstance(target, torch.Tensor):
        return Target(batch, fn=target)
    if isinstance(target, torch.Tensor):
        if target.ndim == 0:
            return resolve_target(int(target), batch)
        if target.ndim != 1 or target.is_floating_point():
            raise ViscopeError(
                f"Expected a 1-D integer tensor of class indices; got dtype {target.dtype} and "
                f"shape {tuple(target.shape)}. For a region of a segmentation output use "
                "RegionTarget(category, mask)."
            )
        items: list = target.tolist()
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
    if all(callable(t) for t in items):
        return Target(batch, per_image=items)
    if all(isinstance(t, int) and not isinstance(t, bool) for t in items):
        return Target(batch, classes=torch.tensor(items, dtype=torch.long))
    raise ViscopeError(
        "Expected a list of class indices or of callables; got "
        f"{[type(t).__name__ for t in items]}."
    )
