"""Explanations: class-activation maps, perturbation maps and gradient attributions.

>>> import torch
>>> from viscope import explain, models
>>> model = models.create("resnet18", num_classes=3).eval()
>>> maps = explain.attribute(model, torch.rand(2, 3, 64, 64), method="gradcam", target=[0, 2])
>>> maps.shape, float(maps.amax()) <= 1.0
(torch.Size([2, 64, 64]), True)
"""

from viscope.lazy import attach

# imported on first use (viscope.lazy): `viscope --help` must not import torch
_EXPORTS = {
    "METHODS": "viscope.explain.api",
    "Method": "viscope.explain.api",
    "attribute": "viscope.explain.api",
    "list_methods": "viscope.explain.api",
    "normalize_maps": "viscope.explain.api",
    "CAM": "viscope.explain.cam",
    "EigenCAM": "viscope.explain.cam",
    "GradCAM": "viscope.explain.cam",
    "GradCAMPlusPlus": "viscope.explain.cam",
    "HiResCAM": "viscope.explain.cam",
    "LayerCAM": "viscope.explain.cam",
    "ScoreCAM": "viscope.explain.cam",
    "XGradCAM": "viscope.explain.cam",
    "LayerTap": "viscope.explain.layouts",
    "auto_layer": "viscope.explain.layouts",
    "to_grid": "viscope.explain.layouts",
    "cbrise": "viscope.explain.perturbation",
    "perturbation_baseline": "viscope.explain.perturbation",
    "rise": "viscope.explain.perturbation",
    "rise_masks": "viscope.explain.perturbation",
    "attention_rollout": "viscope.explain.rollout",
    "RegionTarget": "viscope.explain.targets",
    "Target": "viscope.explain.targets",
    "resolve_target": "viscope.explain.targets",
}
__all__ = attach(__name__, _EXPORTS)
