"""Objectives: the loss terms ``fit`` minimises, each a small module that plugs in by name.

An :class:`Objective` computes one loss term from a training :class:`Step` (the batch,
the model's input and outputs, and, when it asks for them, the backbone's spatial
features). It may own modules (a head, a decoder, a projector): they are built in
:meth:`Objective.setup` once the model and an example batch are known, trained with the
model, saved in Lightning's checkpoints (so a run resumes) and in ``best.pt`` (under
``"objectives"``). The training loss is ``sum(weight * term)``; with several objectives
each term is logged as ``train_<name>_loss`` / ``val_<name>_loss``. An objective may also
give validation metrics (torchmetrics), logged as ``val_<key>``, which ``fit(monitor=...)``
can select the best epoch on.

Cross-entropy (:class:`CrossEntropy`, ``"ce"``, with label smoothing) is the first
objective and ``fit``'s default. A new objective is a subclass registered in
:data:`OBJECTIVES` (:func:`register_objective`); ``fit(objectives=["ce", "myloss:0.5"])``
then uses it.

>>> [o.describe() for o in resolve_objectives(["ce:0.5"], label_smoothing=0.1)]
[{'name': 'ce', 'weight': 0.5, 'label_smoothing': 0.1}]
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from viscope.errors import ViscopeError
from viscope.registry import Registry

#: Objective classes by name: ``OBJECTIVES.get("ce")(weight=1.0)``.
OBJECTIVES: Registry[type[Objective]] = Registry("objective")

ObjectivesArg = Sequence["str | Objective"] | Mapping[str, float] | None


@dataclass
class Step:
    """What an objective sees of one batch.

    Attributes:
        stage: ``"train"``, ``"val"`` or ``"test"``.
        images: the model's input (B, C, H, W) in [0, 1], augmented during training, in
            the model's floating dtype.
        batch: the loader's batch as it came: ``(images, labels)`` or
            ``(images, labels, masks)``.
        outputs: the model's output on ``images`` (logits (B, num_classes)).
        features: the backbone's spatial features (B, C', h, w) of the same forward pass
            (:func:`viscope.train.features.forward_with_features`), when some objective
            has ``uses_features``; else ``None``.
        model: the model (a viscope wrapper), for objectives that run it on other views.
        reconstruction: the network's own reconstruction of ``images`` (B, C, H, W) in
            [0, 1] from the same forward pass, when some objective has
            ``uses_reconstruction`` and the network has ``forward_reconstruction``
            (FGR-Net, :mod:`viscope.models.quality`); else ``None``.
    """

    stage: str
    images: Tensor
    batch: Sequence[Any]
    outputs: Tensor
    features: Tensor | None
    model: nn.Module
    reconstruction: Tensor | None = None

    @property
    def labels(self) -> Tensor:
        """The batch's labels (B,)."""
        return self.batch[1]

    @property
    def masks(self) -> Tensor | None:
        """The batch's masks (B, 1, H, W), or ``None`` unless an objective has
        ``uses_masks``."""
        return self.batch[2] if len(self.batch) > 2 else None


class Objective(nn.Module):
    """One loss term of training. Subclass it, register it, override :meth:`loss`.

    Class attributes:
        name: the registered name; logs say ``train_<name>_loss``.
        uses_features: ask for :attr:`Step.features` (the backbone's spatial features,
            from the same forward pass as the outputs).
        uses_reconstruction: ask for :attr:`Step.reconstruction` (the network's own
            reconstruction, where it has ``forward_reconstruction``).
        uses_masks: ask for the items' masks (:attr:`Step.masks`; segmentation), which
            the loaders otherwise drop.
        classifies: its loss trains the model's logits as a classifier, so ``fit``
            reports test accuracy.
        out_channels: the model outputs it needs when ``fit`` creates the model by name
            (``None``: no need of its own; a classifying objective needs one per class).

    Args:
        weight: the factor of this term in the training loss.

    Raises:
        ViscopeError: a weight that is not a finite number >= 0.
    """

    name: ClassVar[str] = ""
    uses_features: ClassVar[bool] = False
    uses_reconstruction: ClassVar[bool] = False
    uses_masks: ClassVar[bool] = False
    classifies: ClassVar[bool] = False
    out_channels: ClassVar[int | None] = None

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not (
            math.isfinite(weight) and weight >= 0
        ):
            raise ViscopeError(
                f"Expected the weight of objective {self.name!r} to be a number >= 0; got "
                f"{weight!r}."
            )
        self.weight = float(weight)

    def setup(self, model: nn.Module, num_classes: int, example: Step) -> None:
        """Build what the objective trains (heads, decoders) once the model is known.

        Called once by ``fit`` before training (and before a resume loads the
        checkpoint), with a ``Step`` of two training images in eval mode, without
        gradients. The default does nothing.

        Args:
            model: the model.
            num_classes: the classes of the dataset.
            example: a step whose shapes (outputs, features) size the new modules.
        """

    def loss(self, step: Step) -> Tensor:
        """The (unweighted) loss term of ``step``, a scalar."""
        raise NotImplementedError

    def metrics(self, num_classes: int) -> dict[str, Metric]:
        """New validation metrics for a task of ``num_classes``, logged as ``val_<key>``
        (``{}``: none)."""
        return {}

    def update(self, metrics: Mapping[str, Metric], step: Step) -> None:
        """Update the metrics made by :meth:`metrics` with ``step`` (default: nothing)."""

    def options(self) -> dict[str, Any]:
        """Settings that change what is trained, recorded in the run's configuration."""
        return {}

    def describe(self) -> dict[str, Any]:
        """``{"name", "weight", **options}``: how the run's configuration records it."""
        return {"name": self.name, "weight": self.weight, **self.options()}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: register an :class:`Objective` subclass under its ``name``.

    Raises:
        KeyError: the name is registered already.
    """
    OBJECTIVES.register(cls.name, cls)
    return cls


@register_objective
class CrossEntropy(Objective):
    """Cross-entropy of the logits, with label smoothing in training (as timm's train.py:
    validation measures plain cross-entropy).

    Args:
        weight: the factor of this term.
        label_smoothing: the smoothing of ``F.cross_entropy`` (0: none).

    Validation metric: ``acc`` (micro top-1 accuracy), logged as ``val_acc``.
    """

    name = "ce"
    classifies = True

    def __init__(self, weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__(weight)
        if not isinstance(label_smoothing, int | float) or not 0 <= label_smoothing < 1:
            raise ViscopeError(f"Expected 0 <= label_smoothing < 1; got {label_smoothing!r}.")
        self.label_smoothing = float(label_smoothing)

    def loss(self, step: Step) -> Tensor:
        smoothing = self.label_smoothing if step.stage == "train" else 0.0
        return F.cross_entropy(step.outputs.float(), step.labels, label_smoothing=smoothing)

    def metrics(self, num_classes: int) -> dict[str, Metric]:
        return {"acc": MulticlassAccuracy(num_classes, average="micro")}

    def update(self, metrics: Mapping[str, Metric], step: Step) -> None:
        metrics["acc"].update(step.outputs.float(), step.labels)

    def options(self) -> dict[str, Any]:
        return {"label_smoothing": self.label_smoothing} if self.label_smoothing else {}


def resolve_objectives(objectives: ObjectivesArg = None, *, label_smoothing: float = 0.0
                       ) -> list[Objective]:
    """The objectives of a run.

    Args:
        objectives: ``None`` (cross-entropy alone); names, ``"name:weight"`` strings or
            :class:`Objective` objects; or a mapping ``{name: weight}``.
        label_smoothing: passed to the objectives made by name that take it (``"ce"``).

    Returns:
        The objectives, in order; names are unique.

    Raises:
        ViscopeError: an unknown name (with close matches), a bad weight, an empty list,
            two objectives of one name, or label smoothing no objective takes.
    """
    if objectives is None:
        objectives = ["ce"]
    items = list(objectives.items()) if isinstance(objectives, Mapping) else list(objectives)
    made: list[Objective] = []
    smoothing_used = False
    for item in items:
        if isinstance(item, Objective):
            made.append(item)
            continue
        name, weight = item if isinstance(item, tuple) else _name_weight(item)
        cls = OBJECTIVES.get(name)
        kwargs: dict[str, Any] = {"weight": weight}
        if label_smoothing and "label_smoothing" in inspect.signature(cls).parameters:
            kwargs["label_smoothing"] = label_smoothing
            smoothing_used = True
        made.append(cls(**kwargs))
    if not made:
        raise ViscopeError("Expected at least one objective; got none. Pass objectives=['ce'].")
    if label_smoothing and not smoothing_used:
        raise ViscopeError(
            f"Expected label_smoothing only with an objective made by name that takes it "
            f"('ce'); got label_smoothing={label_smoothing} with "
            f"{[o.name for o in made]}. Give it to the objective: "
            "CrossEntropy(label_smoothing=...)."
        )
    names = [o.name for o in made]
    if len(set(names)) != len(names) or not all(names):
        raise ViscopeError(
            f"Expected objectives with distinct, non-empty names (they name the logged terms "
            f"and the saved heads); got {names}."
        )
    return made


def is_default(objectives: Sequence[Objective]) -> bool:
    """Whether ``objectives`` are fit's default: plain cross-entropy of weight 1."""
    return [o.describe() for o in objectives] == [{"name": "ce", "weight": 1.0}]


def _name_weight(item: Any) -> tuple[str, float]:
    """``"name"`` -> (name, 1.0); ``"name:0.5"`` -> (name, 0.5)."""
    if not isinstance(item, str):
        raise ViscopeError(
            f"Expected an objective name ('ce', 'ce:0.5') or an Objective; got {item!r}."
        )
    name, _, weight = item.partition(":")
    if not weight:
        return name.strip(), 1.0
    try:
        return name.strip(), float(weight)
    except ValueError:
        raise ViscopeError(
            f"Expected 'name:weight' with a number as weight; got {item!r} (e.g. 'ce:0.5')."
        ) from None


# Objectives in their own modules register on import; imported here (after everything they
# use is defined) so that fit(objectives=["seg"]) finds them by name.
from viscope.train import segmentation as _segmentation  # noqa: E402, F401
from viscope.train.ssl import contrastive as _contrastive  # noqa: E402, F401
from viscope.train.ssl import reconstruction as _reconstruction  # noqa: E402, F401
