"""Label-using read-outs of a pre-training run: k-NN and linear-probe accuracy.

Labels never reach the pre-training loss; they are used here only, on frozen pooled
features (:func:`~viscope.train.features.pooled_features`), so that progress without
labels is visible. k-NN is lightly's ``knn_predict`` (cosine similarity, the ``k``
nearest of the train split, votes weighted by ``exp(similarity / t)``); the linear probe
is scikit-learn's logistic regression on standardised features.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import knn_predict
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn
from torch.utils.data import Dataset

from viscope.train.data import make_loader
from viscope.train.features import pooled_features


@torch.no_grad()
def embed(model: nn.Module, dataset: Dataset, batch_size: int = 256,
          device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Pooled features and labels of every item, the model in eval mode (restored after).

    Args:
        model: the model (from :func:`viscope.models.create`).
        dataset: items ``(image, label, ...)``.
        batch_size: images per forward pass.
        device: where to run the model.

    Returns:
        Features (N, D) and labels (N,), on the CPU.
    """
    was = model.training
    model.eval()
    features, labels = [], []
    dtype = next(model.parameters()).dtype
    try:
        for batch in make_loader(dataset, batch_size):
            images = batch[0].to(device=device, dtype=dtype)
            features.append(pooled_features(model, images).float().cpu())
            labels.append(batch[1].cpu())
    finally:
        model.train(was)
    return torch.cat(features), torch.cat(labels).long()


def knn_accuracy(bank: Tensor, bank_labels: Tensor, queries: Tensor, labels: Tensor,
                 k: int = 20, temperature: float = 0.1) -> float:
    """Top-1 accuracy of lightly's weighted k-NN (cosine) of ``queries`` in ``bank``.

    Args:
        bank: memory-bank features (N, D).
        bank_labels: their labels (N,).
        queries: query features (M, D).
        labels: the queries' labels (M,).
        k: neighbours (at most N).
        temperature: the vote weights' temperature.

    Returns:
        The share of queries whose predicted class is their label.
    """
    classes = int(max(bank_labels.max(), labels.max())) + 1
    predicted = knn_predict(F.normalize(queries, dim=1), F.normalize(bank, dim=1).T,
                            bank_labels, classes, knn_k=min(k, len(bank)), knn_t=temperature)
    return float((predicted[:, 0] == labels).float().mean())


def probe_accuracy(train: Tensor, train_labels: Tensor, queries: Tensor, labels: Tensor,
                   seed: int = 0) -> float:
    """Accuracy of a logistic regression fitted on frozen train features.

    Args:
        train: train features (N, D).
        train_labels: their labels.
        queries: evaluation features (M, D).
        labels: their labels.
        seed: the solver's seed.

    Returns:
        The probe's accuracy on the queries (the majority class's share when the train
        features hold one class only).
    """
    y = train_labels.numpy()
    if len(np.unique(y)) < 2:
        return float((labels.numpy() == y[0]).mean())
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, random_state=seed))
    probe.fit(train.numpy(), y)
    return float((probe.predict(queries.numpy()) == labels.numpy()).mean())


class ProbeCallback(pl.Callback):
    """k-NN and linear-probe accuracy before training and after every epoch.

    The results go to ``pl_module.history`` (one row per epoch count: 0 before training)
    and to ``on_row`` (which writes the history file); the rows are in the module's
    checkpoint, so a resumed run keeps its earlier ones.

    Args:
        bank: the labelled memory bank (the train split).
        queries: the labelled split the accuracies are measured on.
        k: k-NN neighbours.
        batch_size: images per forward pass.
        on_row: called with the module after each row is added.
    """

    def __init__(self, bank: Dataset, queries: Dataset, k: int = 20, batch_size: int = 256,
                 on_row: Any = None) -> None:
        self.bank, self.queries, self.k, self.batch_size = bank, queries, k, batch_size
        self.on_row = on_row

    def measure(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """``{"knn_acc", "probe_acc"}`` of ``model``'s pooled features now."""
        bank, bank_labels = embed(model, self.bank, self.batch_size, device)
        queries, labels = embed(model, self.queries, self.batch_size, device)
        return {"knn_acc": knn_accuracy(bank, bank_labels, queries, labels, self.k),
                "probe_acc": probe_accuracy(bank, bank_labels, queries, labels)}

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not any(row["epoch"] == 0 for row in pl_module.history):
            self._add(pl_module, {"epoch": 0, "train_loss": float("nan")})

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        row = {"epoch": trainer.current_epoch + 1, "train_loss": pl_module.epoch_loss()}
        self._add(pl_module, row)
        pl_module.log_dict({k: v for k, v in pl_module.history[-1].items() if k != "epoch"},
                           prog_bar=True)

    def _add(self, pl_module: Any, row: dict[str, float]) -> None:
        row.update(self.measure(pl_module.method.model, pl_module.device))
        pl_module.history.append(row)
        if self.on_row is not None:
            self.on_row(pl_module)
