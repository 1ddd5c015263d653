"""Training on Lightning: one ``fit`` that every job trains through.

:func:`fit` trains a model from :func:`viscope.models.create` on a dataset's train
split, augmenting each batch with a transformation family, keeps the epoch with the best
validation value (accuracy by default) in ``out/best.pt``, reports on the test split
once at the end, and records everything in ``out/train.json`` and ``out/config.yaml`` (a
second call with the same configuration returns the stored result; an interrupted run
resumes). :func:`evaluate` gives accuracy on clean or transformed images.

What plugs into ``fit`` without changing it: objectives (loss terms with their own
heads and validation metrics, :data:`OBJECTIVES`, cross-entropy the first), initialisers
(:data:`INITIALISERS`, called on the model with the train split before training) and
timm's optimizers and schedules (:class:`OptimSettings`).

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

from viscope.lazy import attach

# imported on first use (viscope.lazy): `viscope --help` must not import torch
_EXPORTS = {
    "BatchAugment": "viscope.train.augment",
    "describe_family": "viscope.train.augment",
    "resolve_family": "viscope.train.augment",
    "ThroughputMeter": "viscope.train.callbacks",
    "EpochShuffleSampler": "viscope.train.data",
    "collate": "viscope.train.data",
    "make_loader": "viscope.train.data",
    "resolve_splits": "viscope.train.data",
    "evaluate": "viscope.train.evaluate",
    "forward_with_features": "viscope.train.features",
    "fit": "viscope.train.fit",
    "INITIALISERS": "viscope.train.initialisers",
    "Classifier": "viscope.train.module",
    "TrainModule": "viscope.train.module",
    "OBJECTIVES": "viscope.train.objectives",
    "CrossEntropy": "viscope.train.objectives",
    "Objective": "viscope.train.objectives",
    "Step": "viscope.train.objectives",
    "register_objective": "viscope.train.objectives",
    "OptimSettings": "viscope.train.optim",
    "make_optimizer": "viscope.train.optim",
    "TrainResult": "viscope.train.run",
    "InvarianceTracker": "viscope.train.tracking",
}
__all__ = attach(__name__, _EXPORTS)
