"""Training loops on Lightning: classification with augmentation on the batch.

:func:`fit` trains a model from :func:`viscope.models.create` on a dataset's train
split, augmenting each batch with a transformation family, keeps the epoch with the best
validation accuracy in ``out/best.pt``, reports test accuracy once at the end, and
records everything in ``out/train.json`` (a second call with the same configuration
returns the stored result; an interrupted run resumes). :func:`evaluate` gives accuracy
on clean or transformed images.

>>> import torch
>>> from viscope import data, models
>>> from viscope.train import Classifier, evaluate
>>> model = models.create("test_vit", img_size=32, num_classes=5)
>>> module = Classifier(model, num_classes=5, augment="rotation")
>>> x = torch.rand(2, 3, 32, 32)
>>> torch.equal(module.augment_batch(x), module.augment.family.apply(x, module.last_params))
True
>>> 0.0 <= evaluate(model, data.create("shapes", n=20)) <= 1.0
True
"""

from viscope.train.augment import BatchAugment, describe_family, resolve_family
from viscope.train.callbacks import ThroughputMeter
from viscope.train.data import EpochShuffleSampler, collate, make_loader, resolve_splits
from viscope.train.evaluate import evaluate
from viscope.train.fit import fit
from viscope.train.module import Classifier, make_optimizer
from viscope.train.run import TrainResult

__all__ = [
    "BatchAugment",
    "Classifier",
    "EpochShuffleSampler",
    "ThroughputMeter",
    "TrainResult",
    "collate",
    "describe_family",
    "evaluate",
    "fit",
    "make_loader",
    "make_optimizer",
    "resolve_family",
    "resolve_splits",
]
