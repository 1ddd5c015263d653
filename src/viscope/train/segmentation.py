"""Segmentation on ``fit``: the ``"seg"`` objective (Dice + BCE that skip ignored pixels)
and augmentation that moves masks with their images.

``fit(model="smp:unet", dataset=..., objectives=["seg"], monitor="val_dice",
model_kwargs={"encoder": "tu-resnet10t"})`` trains a binary segmentation network
(:mod:`viscope.models.segmentation`) on the items' masks, through the same ``fit`` as
every other model: the objective asks for the masks (``uses_masks``) and for one output
channel (``out_channels = 1``, so ``fit`` creates the network with ``num_classes=1``).

Masks are float (B, 1, H, W): 1 foreground, 0 background, and
:data:`viscope.data.base.IGNORE` (-1) where the label is unknown (a pseudo-mask's
uncertain band, an image without a real mask, the frame a geometric augmentation moved
in). Ignored pixels take no part in the loss (value and gradient) nor in the metrics.

>>> import torch
>>> from viscope.data.base import IGNORE
>>> seg = Segmentation()
>>> masks = torch.tensor([[[[1.0, 0.0, IGNORE]]]])
>>> a = seg.pixel_loss(torch.tensor([[[[4.0, -4.0, 100.0]]]]), masks)
>>> b = seg.pixel_loss(torch.tensor([[[[4.0, -4.0, -1e9]]]]), masks)  # only the ignored pixel
>>> bool(a == b)
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from kornia.geometry.transform import warp_affine, warp_perspective
from segmentation_models_pytorch.losses import DiceLoss, SoftBCEWithLogitsLoss
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex

from viscope.data.base import IGNORE
from viscope.errors import ViscopeError
from viscope.train.augment import BatchAugment
from viscope.train.objectives import Objective, Step, register_objective
from viscope.transforms import Family

#: torchmetrics takes an int ignore_index; the metrics' integer targets use IGNORE as one.
_IGNORE_INDEX = int(IGNORE)


@register_objective
class Segmentation(Objective):
    """Binary segmentation: ``dice_weight * Dice + bce_weight * BCE`` of the logits
    (B, 1, H, W) against the masks, ignored pixels excluded.

    The terms are segmentation-models-pytorch's ``DiceLoss(mode="binary",
    from_logits=True, ignore_index=IGNORE)`` and ``SoftBCEWithLogitsLoss(ignore_index=
    IGNORE)``. Read from their source (smp 0.6): Dice multiplies the probabilities and
    the targets by the not-ignored mask, so ignored pixels add nothing to its sums; it is
    one soft Dice over the whole batch (not per image), and 0 when the batch has no
    foreground pixel left (smp's convention: Dice is undefined there; BCE still
    trains). BCE zeroes the ignored pixels' terms but its ``"mean"`` divides by every
    pixel, so it is summed here and divided by the number of pixels not ignored (the
    mean over those alone; 0 when all are ignored). The logits at ignored pixels are
    replaced by 0 before both terms, so even an infinite or NaN logit there changes
    neither the loss nor any gradient (its gradient is exactly 0).

    Validation metrics (torchmetrics, streaming over the batches of a split, ignored
    pixels excluded through ``ignore_index``): ``dice`` (``BinaryF1Score``: F1 of
    binary masks is their Dice, 2 TP / (2 TP + FP + FN)) and ``iou``
    (``BinaryJaccardIndex``), both pooled over every pixel of the split (micro); a
    pixel is foreground where its logit is > 0 (probability > 0.5) and, in the target,
    where the mask is > 0.5. A split without any foreground pixel in prediction or
    target scores 1. Per-image scores: :mod:`viscope.evaluate.segmentation`.

    Args:
        weight: the factor of this term in the training loss.
        dice_weight: the factor of the Dice loss.
        bce_weight: the factor of the BCE loss.

    Raises:
        ViscopeError: a weight that is not a finite number >= 0, or both term weights 0.
    """

    name = "seg"
    uses_masks = True
    classifies = False
    out_channels: ClassVar[int | None] = 1

    def __init__(self, weight: float = 1.0, dice_weight: float = 1.0,
                 bce_weight: float = 1.0) -> None:
        super().__init__(weight)
        for what, value in (("dice_weight", dice_weight), ("bce_weight", bce_weight)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                math.isfinite(value) and value >= 0
            ):
                raise ViscopeError(f"Expected {what} to be a number >= 0; got {value!r}.")
        if dice_weight == 0 and bce_weight == 0:
            raise ViscopeError(
                "Expected dice_weight or bce_weight > 0; got both 0 (nothing to train)."
            )
        self.dice_weight = float(dice_weight)
        self.bce_weight = float(bce_weight)
        self.dice = DiceLoss(mode="binary", from_logits=True, ignore_index=IGNORE)  # type: ignore[arg-type]
        self.bce = SoftBCEWithLogitsLoss(ignore_index=IGNORE, reduction="sum")  # type: ignore[arg-type]

    def setup(self, model: nn.Module, num_classes: int, example: Step) -> None:
        """Check once, before training, that the model's outputs fit the masks."""
        _pair(example)

    def loss(self, step: Step) -> Tensor:
        logits, masks = _pair(step)
        return self.pixel_loss(logits, masks)

    def pixel_loss(self, logits: Tensor, masks: Tensor) -> Tensor:
        """The loss of logits (B, 1, H, W) against masks of the same shape.

        Args:
            logits: the model's output.
            masks: targets in [0, 1], or ``IGNORE``.

        Returns:
            The scalar ``dice_weight * Dice + bce_weight * BCE`` (float32).
        """
        logits, masks = logits.float(), masks.float()
        valid = masks != IGNORE
        logits = torch.where(valid, logits, torch.zeros((), dtype=logits.dtype,
                                                        device=logits.device))
        total = logits.new_zeros(())
        if self.dice_weight:
            total = total + self.dice_weight * self.dice(logits, masks)
        if self.bce_weight:
            count = valid.sum().clamp_min(1).to(logits.dtype)
            total = total + self.bce_weight * self.bce(logits, masks) / count
        return total

    def metrics(self, num_classes: int) -> dict[str, Metric]:
        return {
            "dice": BinaryF1Score(ignore_index=_IGNORE_INDEX, zero_division=1.0),
            "iou": BinaryJaccardIndex(ignore_index=_IGNORE_INDEX, zero_division=1.0),
        }

    def update(self, metrics: Mapping[str, Metric], step: Step) -> None:
        logits, masks = _pair(step)
        preds = (logits > 0).long()  # integer predictions: torchmetrics thresholds nothing
        target = torch.where(masks == IGNORE, _IGNORE_INDEX, (masks > 0.5).long())
        metrics["dice"].update(preds, target)
        metrics["iou"].update(preds, target)

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in (("dice_weight", self.dice_weight),
                                  ("bce_weight", self.bce_weight)) if v != 1.0}


def _pair(step: Step) -> tuple[Tensor, Tensor]:
    """The step's logits and masks (float32), refused unless both are (B, 1, H, W)."""
    outputs, masks = step.outputs, step.masks
    if masks is None:
        raise ViscopeError(
            "Expected masks for objective 'seg'; got a batch without them. Use a dataset "
            "with masks (e.g. 'shapes', or a CSV with a mask_path column)."
        )
    if not isinstance(outputs, Tensor) or outputs.ndim != 4 or outputs.shape[1] != 1 or (
        outputs.shape[0] != masks.shape[0] or outputs.shape[-2:] != masks.shape[-2:]
    ):
        got = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
        raise ViscopeError(
            f"Expected the model's output for objective 'seg' to be logits "
            f"{(masks.shape[0], 1, *masks.shape[-2:])}, one channel at the masks' size; got "
            f"{got}. Use a segmentation model with one output channel (model='smp:unet', "
            "model_kwargs={'encoder': 'tu-resnet10t'})."
        )
    return outputs.float(), masks.float()


def check_mask_family(family: Family) -> None:
    """Refuse an augmentation whose effect on masks is unknown.

    Photometric families leave masks as they are and geometric ones warp them
    (:func:`augment_masks`); a family of user callables may move pixels without saying
    so, and a geometric family without ``matrix`` cannot be replayed on the masks.

    Raises:
        ViscopeError: such a family.
    """
    from viscope.transforms.custom import CallableFamily

    if isinstance(family, CallableFamily) or (family.geometric and
                                              not callable(getattr(family, "matrix", None))):
        raise ViscopeError(
            f"Expected an augmentation family whose effect on masks is known (photometric, "
            f"or geometric with a matrix) for an objective that reads masks; got "
            f"{family!r}. Use a built-in family (e.g. augment='rotation' or 'brightness')."
        )


def augment_masks(augment: BatchAugment, masks: Tensor) -> Tensor:
    """The masks of the batch that ``augment`` last augmented, moved as its images were.

    A geometric family's warp is replayed with the same parameters (its ``matrix``), with
    nearest-neighbour sampling (masks stay {0, 1, IGNORE}); pixels that come from outside
    the frame are ``IGNORE`` (the image there is padding, not background). Images left
    untouched (``augment_p < 1``) keep their masks; photometric families change no mask.

    Args:
        augment: the batch augmentation, right after it augmented the images.
        masks: the batch's masks (B, 1, H, W).

    Returns:
        The masks of the augmented images (a new tensor, or ``masks`` itself).
    """
    family, params, applied = augment.family, augment.last_params, augment.last_applied
    if not family.geometric or params is None or applied is None:
        return masks
    height, width = masks.shape[-2:]
    matrix = family.matrix(params, height, width).to(masks.device, torch.float32)
    # shifted so that IGNORE is 0: the warp's zero padding then reads as IGNORE
    shifted = masks.float() - IGNORE
    if getattr(family, "affine", True):
        moved = warp_affine(shifted, matrix[:, :2, :], (height, width), mode="nearest",
                            padding_mode="zeros", align_corners=True)
    else:
        moved = warp_perspective(shifted, matrix, (height, width), mode="nearest",
                                 padding_mode="zeros", align_corners=True)
    moved = (moved + IGNORE).to(masks.dtype)
    return torch.where(applied.view(-1, 1, 1, 1).to(masks.device), moved, masks)
