"""Explanations: class-activation maps, perturbation maps and gradient attributions.

>>> import torch
>>> from viscope import explain, models
>>> model = models.create("resnet18", num_classes=3).eval()
>>> maps = explain.attribute(model, torch.rand(2, 3, 64, 64), method="gradcam", target=[0, 2])
>>> maps.shape, float(maps.amax()) <= 1.0
(torch.Size([2, 64, 64]), True)
"""

from viscope.explain.api import METHODS, Method, attribute, list_methods, normalize_maps
from viscope.explain.cam import (
    CAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from viscope.explain.layouts import LayerTap, auto_layer, to_grid
from viscope.explain.perturbation import cbrise, perturbation_baseline, rise, rise_masks
from viscope.explain.rollout import attention_rollout
from viscope.explain.targets import RegionTarget, Target, resolve_target

__all__ = [
    "CAM",
    "METHODS",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "LayerTap",
    "Method",
    "RegionTarget",
    "ScoreCAM",
    "Target",
    "XGradCAM",
    "attention_rollout",
    "attribute",
    "auto_layer",
    "cbrise",
    "list_methods",
    "normalize_maps",
    "perturbation_baseline",
    "resolve_target",
    "rise",
    "rise_masks",
    "to_grid",
]
