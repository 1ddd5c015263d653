"""The Lightning module of ``fit``: objectives, timm optimizer and schedule, augmentation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric

from viscope.errors import ViscopeError
from viscope.train.augment import (
    AugmentArg,
    BatchAugment,
    describe_family,
    mix_seed,
    resolve_family,
)
from viscope.train.features import forward_step
from viscope.train.objectives import Objective, ObjectivesArg, Step, resolve_objectives
from viscope.train.optim import OptimSettings, make_optimizer, make_scheduler
from viscope.train.segmentation import augment_masks, check_mask_family


class TrainModule(pl.LightningModule):
    """Train a model (e.g. from ``viscope.models.create``) on a sum of objectives.

    Training: the loss is ``sum(weight * objective.loss(step))`` over the objectives
    (:mod:`viscope.train.objectives`; cross-entropy by default). If an augmentation family
    is given, every training batch is augmented on the model's device inside
    :meth:`training_step`, one random parameter per image drawn uniformly from the
    family's range (with probability ``augment_p`` per image); masks, when an objective
    reads them, are warped with the same parameters
    (:func:`~viscope.train.segmentation.augment_masks`). Augmentation runs in float32
    outside autocast; the images are then cast to the model's floating dtype (a
    ``.double()`` or bfloat16 model trains on float32 data).

    Randomness: at the start of every training epoch the augmentation generator and torch's
    global generator (dropout, drop-path) are reseeded from ``(seed, rank, epoch)``. An
    epoch is therefore a function of the weights it starts from, so a run resumed from
    the checkpoint of epoch ``k`` continues exactly as an uninterrupted one, and each DDP
    process draws different parameters.

    Logged: ``train_loss`` (epoch mean), ``val_loss`` and each objective's metrics as
    ``val_<key>`` (``val_acc`` for cross-entropy); with several objectives also each term
    as ``train_<name>_loss`` and ``val_<name>_loss``.

    Args:
        model: the network; takes images in [0, 1], returns logits (B, num_classes).
        num_classes: number of classes.
        objectives: see :func:`~viscope.train.objectives.resolve_objectives`; objectives
            whose ``setup`` builds modules must have been set up (``fit`` does it).
        optim: the optimizer and schedule; ``None``: built from ``lr``, ``weight_decay``
            and ``schedule``.
        lr: AdamW learning rate (without ``optim``).
        weight_decay: AdamW weight decay (without ``optim``).
        schedule: ``"cosine"`` or ``"constant"`` (without ``optim``).
        augment: ``None``, a family name or a :class:`~viscope.transforms.Family`.
        augment_p: probability that a training image is augmented.
        seed: seed of the augmentation parameters and of the per-epoch reseeding.

    Attributes:
        model: the network.
        objectives: the objectives (an ``nn.ModuleList``: their modules train and are
            checkpointed with the model).
        augment: the :class:`BatchAugment`, or ``None``.

    Raises:
        ViscopeError: bad hyper-parameters, objectives or an unknown family.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        *,
        objectives: ObjectivesArg = None,
        optim: OptimSettings | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        schedule: str = "cosine",
        augment: AugmentArg = None,
        augment_p: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.optim = optim or OptimSettings(lr=lr, weight_decay=weight_decay, schedule=schedule)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ViscopeError(f"Expected num_classes >= 2; got {num_classes!r}.")
        self.model = model
        made = resolve_objectives(objectives)
        self.objectives = nn.ModuleList(made)
        self._uses_features = any(o.uses_features for o in made)
        self._uses_reconstruction = any(o.uses_reconstruction for o in made)
        family = resolve_family(augment)
        if family is not None and any(o.uses_masks for o in made):
            check_mask_family(family)
        self.augment = BatchAugment(family, augment_p, seed) if family is not None else None
        self.seed = int(seed)
        self.save_hyperparameters(
            {
                "num_classes": num_classes,
                **self.optim.as_dict(),
                "objectives": [o.describe() for o in made],
                "augment": describe_family(family),
                "augment_p": float(augment_p),
                "seed": self.seed,
            }
        )
        self.metric_sets = nn.ModuleDict(
            {stage: nn.ModuleDict(_metrics_of(made, num_classes)) for stage in ("val", "test")}
        )
        self.mean_losses = nn.ModuleDict(
            {stage: nn.ModuleDict({k: MeanMetric() for k in self.loss_names()})
             for stage in ("val", "test")}
        )
        # Lightning's self.log costs about a millisecond a call, so per-step values are
        # accumulated here and logged once per epoch.
        self._loss_sums: dict[str, Tensor] = {}
        self._loss_count = 0

    def loss_names(self) -> list[str]:
        """``"loss"`` and, with several objectives, ``"<name>_loss"`` for each."""
        terms = [f"{o.name}_loss" for o in self.objectives] if len(self.objectives) > 1 else []
        return ["loss", *terms]

    def logged_names(self) -> list[str]:
        """What validation logs: ``val_loss``, the terms and the metrics (``val_acc``)."""
        return [f"val_{k}" for k in (*self.loss_names(), *self.metric_sets["val"])]

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
        return self.model(self.to_model_dtype(images))

    def to_model_dtype(self, images: Tensor) -> Tensor:
        """``images`` in the model's floating dtype (unchanged when it already is)."""
        param = next(self.model.parameters(), None)
        if param is None or not param.is_floating_point() or param.dtype == images.dtype:
            return images
        return images.to(param.dtype)

    def make_step(self, stage: str, images: Tensor, batch: Sequence[Any]) -> Step:
        """Run the model on ``images`` and wrap what the objectives read: the outputs,
        and from the same forward pass the features and the network's own
        reconstruction when an objective asks for them."""
        images = self.to_model_dtype(images)
        outputs, features, recon = forward_step(
            self.model, images, features=self._uses_features,
            reconstruction=self._uses_reconstruction,
        )
        return Step(stage, images, batch, outputs, features, self.model, recon)

    def on_train_epoch_start(self) -> None:
        rank, epoch = self.global_rank, self.current_epoch
        torch.manual_seed(mix_seed(self.seed, rank, epoch, 0))
        if self.augment is not None:
            self.augment.reseed(mix_seed(self.seed, rank, epoch, 1))
        self._loss_sums = {k: torch.zeros((), device=self.device) for k in self.loss_names()}
        self._loss_count = 0

    def augment_batch(self, images: Tensor) -> Tensor:
        """The training augmentation of ``images`` (unchanged when there is none)."""
        if self.augment is None:
            return images
        with torch.autocast(images.device.type, enabled=False):
            return self.augment(images.float()).to(images.dtype)

    def _losses(self, step: Step) -> dict[str, Tensor]:
        """``{"loss": weighted sum, "<name>_loss": term, ...}`` of one step."""
        terms = {f"{o.name}_loss": o.loss(step) for o in self.objectives}
        weighted = [o.weight * t for o, t in zip(self.objectives, terms.values(), strict=True)]
        total = weighted[0]
        for term in weighted[1:]:
            total = total + term
        return {"loss": total, **terms} if len(terms) > 1 else {"loss": total}

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        images = self.augment_batch(batch[0])
        if len(batch) > 2 and self.augment is not None:  # masks move with their images
            batch = [*batch[:2], augment_masks(self.augment, batch[2]), *batch[3:]]
        step = self.make_step("train", images, batch)
        losses = self._losses(step)
        n = len(batch[1])
        for key, value in losses.items():
            self._loss_sums[key] = self._loss_sums[key].to(value.device) + value.detach() * n
        self._loss_count += n
        return losses["loss"]

    def on_train_epoch_end(self) -> None:
        if self._loss_count:
            for key, total in self._loss_sums.items():
                self.log(f"train_{key}", total / self._loss_count, on_step=False,
                         on_epoch=True, sync_dist=True)

    def _eval_step(self, batch: Sequence[Tensor], stage: str) -> Tensor:
        step = self.make_step(stage, batch[0], batch)
        losses = self._losses(step)
        metrics = self.metric_sets[stage]
        for objective in self.objectives:
            objective.update(metrics, step)
        for key, value in losses.items():
            self.mean_losses[stage][key].update(value.detach(), weight=len(batch[1]))
        return losses["loss"]

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, "val")

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        return self._eval_step(batch, "test")

    def _log_stage(self, stage: str) -> None:
        for key, mean in self.mean_losses[stage].items():
            self.log(f"{stage}_{key}", mean, on_epoch=True)
        for key, metric in self.metric_sets[stage].items():
            self.log(f"{stage}_{key}", metric, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        self._log_stage("val")

    def on_test_epoch_end(self) -> None:
        self._log_stage("test")

    @torch.no_grad()
    def evaluate_split(self, loader: DataLoader, device: torch.device) -> dict[str, float]:
        """The test losses and metrics of ``loader`` (``{"test_loss": ..., "test_<key>": ...}``),
        computed by the validation code without a trainer; the mode is restored after."""
        modes = {m: m.training for m in self.modules()}
        self.eval()
        try:
            for batch in loader:
                self._eval_step([t.to(device) for t in batch], "test")
            values = {f"test_{k}": m.compute() for k, m in self.mean_losses["test"].items()}
            values.update({f"test_{k}": m.compute() for k, m in self.metric_sets["test"].items()})
            return {k: float(v) for k, v in values.items()}
        finally:
            for metric in (*self.mean_losses["test"].values(), *self.metric_sets["test"].values()):
                metric.reset()
            for m, training in modes.items():
                m.training = training

    def configure_optimizers(self) -> Any:
        optimizer = make_optimizer(self.model, settings=self.optim, extra=self.objectives)
        trainer = self.trainer
        total = max(1, int(trainer.estimated_stepping_batches))  # sets up the train data too
        batches = trainer.num_training_batches
        per_epoch = (
            max(1, math.ceil(batches / trainer.accumulate_grad_batches))
            if math.isfinite(batches)
            else total
        )
        scheduler = make_scheduler(optimizer, self.optim, total, per_epoch)
        if scheduler is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        # timm's schedulers take the number of updates done (Lightning has counted this one)
        scheduler.step_update(num_updates=self.global_step)


#: The module's name in earlier versions, when it trained classifiers only.
Classifier = TrainModule


def _metrics_of(objectives: Sequence[Objective], num_classes: int) -> dict[str, Any]:
    """Every objective's metrics by key (refusing a key two objectives share)."""
    metrics: dict[str, Any] = {}
    for objective in objectives:
        for key, metric in objective.metrics(num_classes).items():
            if key in metrics or key.endswith("loss"):
                raise ViscopeError(
                    f"Expected metric names unique across objectives and not ending in "
                    f"'loss' (losses are logged apart); objective {objective.name!r} gives "
                    f"{key!r}. Rename the metric."
                )
            metrics[key] = metric
    return metrics
