"""Weak labels: a classifier trained on image-level labels gives class-activation maps,
the maps give pseudo-masks, the pseudo-masks train a segmentation UNet.

The single steps work on their own:

>>> import torch
>>> from viscope import weakseg
>>> maps = torch.rand(2, 16, 16)
>>> weakseg.threshold(maps, "percentile", 75).float().mean().item()
0.25
"""

from viscope.lazy import attach

# imported on first use (viscope.lazy): `viscope --help` must not import torch
_EXPORTS = {
    "PseudoMasks": "viscope.weakseg.pseudo",
    "class_maps": "viscope.weakseg.pseudo",
    "pseudo_masks": "viscope.weakseg.pseudo",
    "refine": "viscope.weakseg.pseudo",
    "roi_otsu": "viscope.weakseg.pseudo",
    "best_threshold": "viscope.weakseg.thresholds",
    "confident": "viscope.weakseg.thresholds",
    "sweep": "viscope.weakseg.thresholds",
    "threshold": "viscope.weakseg.thresholds",
    "run": "viscope.weakseg.run",
}
__all__ = attach(__name__, _EXPORTS)
