"""Explanation metrics: faithfulness (deletion, insertion, ROAD, PEDS), localisation
against masks (pointing game, energy pointing game, IoU, Dice) and the
model-randomisation sanity check; explanation equivariance (does a map move with the image).

>>> import torch
>>> from viscope import evaluate, models
>>> model = models.create("resnet18", num_classes=3).eval()
>>> images, maps = torch.rand(2, 3, 32, 32), torch.rand(2, 32, 32)
>>> evaluate.deletion_auc(model, images, maps, target=[0, 1]).shape
torch.Size([2])
"""

# segmentation (per-image Dice/IoU of binary masks with an ignore value, for weak labels) is
# reached as a module, evaluate.segmentation.dice: not localisation's map-thresholding dice
from viscope.evaluate import segmentation as segmentation
from viscope.evaluate.equivariance import (
    ExplanationEquivariance,
    equivariance_cell,
    explanation_invariance,
)
from viscope.evaluate.faithfulness import (
    deletion_auc,
    deletion_curve,
    insertion_auc,
    noisy_linear_impute,
    peds,
    road,
)
from viscope.evaluate.localisation import dice, energy_pointing_game, iou, pointing_game
from viscope.evaluate.sanity import model_randomization, spearman

__all__ = [
    "ExplanationEquivariance",
    "deletion_auc",
    "deletion_curve",
    "dice",
    "energy_pointing_game",
    "equivariance_cell",
    "explanation_invariance",
    "insertion_auc",
    "iou",
    "model_randomization",
    "noisy_linear_impute",
    "peds",
    "pointing_game",
    "road",
    "spearman",
]
