"""Data-driven initialisation of the first convolution or patch embedding, and
mimetic initialisation of attention.

>>> from viscope import data, init, models
>>> model = models.create("test_resnet", num_classes=4)
>>> init.apply(model, data.create("shapes", n=8), "pca", samples=500).layer
'conv1.0'

Names registered in :data:`viscope.train.INITIALISERS` (``fit(init="pca")``,
``viscope train --init pca``): ``default``, ``pca``, ``zca``, ``kmeans``, ``mimetic``.
"""

from viscope.lazy import attach

__all__ = attach(__name__, {
    "InitReport": "viscope.init.methods",
    "Initialiser": "viscope.init.methods",
    "METHODS": "viscope.init.methods",
    "apply": "viscope.init.methods",
    "make": "viscope.init.methods",
    "first_layer": "viscope.init.layers",
    "attention_layers": "viscope.init.mimetic",
    "mimetic": "viscope.init.mimetic",
    "pca_filters": "viscope.init.filters",
    "zca_filters": "viscope.init.filters",
    "kmeans_filters": "viscope.init.filters",
    "sample_patches": "viscope.init.patches",
    "all_windows": "viscope.init.patches",
})
