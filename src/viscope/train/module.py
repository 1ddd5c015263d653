"""The Lightning module for classification: cross-entropy, AdamW, augmentation on the batch."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import timm.optim
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from viscope.errors import ViscopeError
from viscope.models import unwrap
from viscope.train.augment import (
    AugmentArg,
    BatchAugment,
    describe_family,
    mix_seed,
    resolve_family,
)

SCHEDULES = ("cosine", "constant")


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with timm's parameter groups: no weight decay on biases, norms and tokens.

    timm's ``create_optimizer_v2`` puts 1-D parameters (biases, norm weights) and the
    network's ``no_weight_decay()`` names (ViT position embedding, class token) in a
    group without decay, the usual recipe for ViTs and CNNs alike.

    Args:
        model: the model (a viscope wrapper is unwrapped to find ``no_weight_decay``).
        lr: learning rate.
        weight_decay: decoupled weight decay of the other parameters.

    Returns:
        The optimizer.
    """
    return timm.optim.create_optimizer_v2(unwrap(model), "adamw", lr=lr, weight_decay=weight_decay)


def check_hyperparameters(lr: float, weight_decay: float, schedule: str) -> None:
    """Raise a :class:`ViscopeError` for a bad learning rate, weight decay or schedule."""
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        raise ViscopeError(f"Expected lr > 0; got {lr!r}.")
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, int | float)
        or weight_decay < 0
    ):
        raise ViscopeError(f"Expected weight_decay >= 0; got {weight_decay!r}.")
    if schedule not in SCHEDULES:
        raise ViscopeError(
            f"Expected schedule to be one of {', '.join(SCHEDULES)}; got {schedule!r}."
        )


class Classifier(pl.LightningModule):
    """Train any classification model (e.g. from ``viscope.models.create``) with Lightning.

    Training: cross-entropy on logits; if an augmentation family is given, every training
    batch is augmented on the model's device inside :meth:`training_step`, one random
    parameter per image drawn uniformly from the family's range (with probability
    ``augment_p`` per image; ``1.0`` augments every image). Augmentation runs in float32
    outside autocast, so mixed precision affects the model, not the transformation.

    Randomness: at the start of every training epoch the augmentation generator and torch's
    global generator (dropout, drop-path) are reseeded from ``(seed, rank, epoch)``. An
    epoch is therefore a function of the weights it starts from, so a run resumed from
    the checkpoint of epoch ``k`` continues exactly as an uninterrupted one, and each DDP
    process draws different parameters.

    Logged: ``train_loss`` (epoch mean), ``val_loss`` and ``val_acc`` (each validation
    epoch), ``test_loss`` and ``test_acc`` (in ``trainer.test``).

    Args:
        model: the network; takes images in [0, 1], returns logits (B, num_classes).
        num_classes: number of classes.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases, norms and tokens).
        schedule: ``"cosine"`` (per step, down to 0 at the last step) or ``"constant"``.
        augment: ``None``, a family name or a :class:`~viscope.transforms.Family`.
        augment_p: probability that a training image is augmented.
        seed: seed of the augmentation parameters and of the per-epoch reseeding.

    Attributes:
        model: the network.
        augment: the :class:`BatchAugment`, or ``None``.

    Raises:
        ViscopeError: bad hyper-parameters or an unknown family.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        schedule: str = "cosine",
        augment: AugmentArg = None,
        augment_p: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_hyperparameters(lr, weight_decay, schedule)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ViscopeError(f"Expected num_classes >= 2; got {num_classes!r}.")
        self.model = model
        family = resolve_family(augment)
        self.augment = BatchAugment(family, augment_p, seed) if family is not None else None
        self.seed = int(seed)
        self.save_hyperparameters(
            {
                "num_classes": num_classes,
                "lr": float(lr),
                "weight_decay": float(weight_decay),
                "schedule": schedule,
                "augment": describe_family(family),
                "augment_p": float(augment_p),
                "seed": self.seed,
            }
        )
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        # Lightning's self.log costs about a millisecond a call, so per-step values are
        # accumulated here and logged once per epoch.
        self._loss_sum = torch.zeros(())
        self._loss_count = 0

    @property
    def last_params(self) -> Tensor | None:
        """Augmentation parameters of the last training batch ((B,) or (B, k)), or ``None``."""
        return None if self.augment is None else self.augment.last_params

    @property
    def last_applied(self) -> Tensor | None:
        """Bool (B,) mask of the last training batch's augmented images, or ``None``."""
        return None if self.augment is None else self.augment.last_applied

    def forward(self, images: Tensor) -> Tensor:
        """Logits of ``images`` (B, C, H, W) in [0, 1]."""
        return self.model(images)

    def on_train_epoch_start(self) -> None:
        rank, epoch = self.global_rank, self.current_epoch
        torch.manual_seed(mix_seed(self.seed, rank, epoch, 0))
        if self.augment is not None:
            self.augment.reseed(mix_seed(self.seed, rank, epoch, 1))
        self._loss_sum = torch.zeros((), device=self.device)
        self._loss_count = 0

    def augment_batch(self, images: Tensor) -> Tensor:
        """The training augmentation of ``images`` (unchanged when there is none)."""
        if self.augment is None:
            return images
        with torch.autocast(images.device.type, enabled=False):
            return self.augment(images.float()).to(images.dtype)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch[0], batch[1]
        logits = self.model(self.augment_batch(images))
        loss = F.cross_entropy(logits.float(), labels)
        self._loss_sum = self._loss_sum.to(loss.device) + loss.detach() * len(labels)
        self._loss_count += len(labels)
        return loss

    def on_train_epoch_end(self) -> None:
        if self._loss_count:
            mean = self._loss_sum / self._loss_count
            self.log("train_loss", mean, on_step=False, on_epoch=True, sync_dist=True)

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        images, labels = batch[0], batch[1]
        logits = self.model(images).float()
        loss = F.cross_entropy(logits, labels)
        accuracy, mean_loss = (
            (self.val_acc, self.val_loss) if stage == "val" else (self.test_acc, self.test_loss)
        )
        accuracy.update(logits, labels)
        mean_loss.update(loss.detach(), weight=len(labels))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self.log("val_loss", self.val_loss, on_epoch=True)
        self.log("val_acc", self.val_acc, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        self.log("test_loss", self.test_loss, on_epoch=True)
        self.log("test_acc", self.test_acc, on_epoch=True)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = make_optimizer(self.model, hp["lr"], hp["weight_decay"])
        if hp["schedule"] == "constant":
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
