"""Groups of explanation maps: per-class averages and clusters (K-Means, NMF).

A model that looks at the same structure on every image gives maps that fall into few
groups; the share of images in each group and the group's mean map say *what* the model
looks at and *how often* (the validation of FGR-Net's maps; Khalid et al.). The
clustering itself is scikit-learn's (``KMeans``, ``NMF``); this module only shapes maps
into the rows those take and back into pictures.

>>> import torch
>>> maps = torch.zeros(6, 4, 4)
>>> maps[:3, 0, 0] = 1.0; maps[3:, 3, 3] = 1.0   # two obvious groups
>>> c = cluster_maps(maps, k=2, method="kmeans")
>>> sorted(c.shares.tolist()), sorted(c.sizes.tolist())
([0.5, 0.5], [3, 3])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from viscope.errors import ViscopeError

#: The clustering methods of :func:`cluster_maps`.
CLUSTER_METHODS = ("kmeans", "nmf")


@dataclass
class MapClusters:
    """Maps grouped into ``k`` clusters.

    Attributes:
        method: ``"kmeans"`` or ``"nmf"``.
        labels: (N,) the cluster of each map.
        sizes: (k,) how many maps each cluster holds (a cluster may be empty with NMF:
            a component that is no map's largest).
        shares: (k,) ``sizes / N``; sums to 1.
        means: (k, H, W) the mean of each cluster's maps (at the maps' resolution; zeros
            for an empty cluster).
        components: (k, H, W) what the method found: K-Means' centroids or NMF's
            components (at the resolution it ran at, upsampled to the maps').
    """

    method: str
    labels: torch.Tensor
    sizes: torch.Tensor
    shares: torch.Tensor
    means: torch.Tensor
    components: torch.Tensor

    @property
    def k(self) -> int:
        """The number of clusters."""
        return int(self.sizes.numel())


def check_maps(maps: torch.Tensor) -> torch.Tensor:
    """``maps`` as a float (N, H, W) tensor on the CPU.

    Raises:
        ViscopeError: not (N, H, W), empty, or holding NaN / inf.
    """
    if not isinstance(maps, torch.Tensor) or maps.ndim != 3 or maps.shape[0] == 0:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ViscopeError(
            f"Expected maps of shape (N, H, W) with N >= 1; got {shape}. Pass the (N, H, W) "
            "output of viscope.explain.attribute."
        )
    maps = maps.detach().float().cpu()
    bad = (~torch.isfinite(maps)).flatten(1).any(1)
    if bad.any():
        raise ViscopeError(
            f"Expected finite maps; maps {bad.nonzero().flatten()[:5].tolist()} hold NaN or "
            "inf. Drop them (or recompute them) before grouping."
        )
    return maps


def class_means(maps: torch.Tensor, labels: torch.Tensor | Sequence[int], num_classes: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean map of each class.

    Args:
        maps: (N, H, W).
        labels: (N,) class of each map (the true or the predicted class).
        num_classes: K.

    Returns:
        ``(means (K, H, W), counts (K,))``; a class without maps has a zero mean map.

    Raises:
        ViscopeError: labels of another length than the maps, or outside 0..K-1.
    """
    maps = check_maps(maps)
    labels = torch.as_tensor(labels, dtype=torch.long).cpu().flatten()
    if labels.numel() != maps.shape[0]:
        raise ViscopeError(
            f"Expected one label per map; got {labels.numel()} labels for {maps.shape[0]} maps."
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ViscopeError(
            f"Expected labels in 0..{num_classes - 1}; got {labels.min()}..{labels.max()}."
        )
    counts = torch.bincount(labels, minlength=num_classes)
    sums = torch.zeros(num_classes, *maps.shape[1:]).index_add_(0, labels, maps)
    return sums / counts.clamp_min(1)[:, None, None], counts


def cluster_maps(maps: torch.Tensor, k: int = 4, method: str = "kmeans", *, seed: int = 0,
                 size: int | None = 32) -> MapClusters:
    """Cluster maps with scikit-learn's K-Means or NMF.

    The maps are flattened into rows (after an area downsampling to ``size`` x ``size``
    when they are larger: the clusters are about where a map lies, not about its
    pixel-level detail, and it keeps NMF quick). K-Means (``n_init=10``) labels each map
    with its nearest centroid. NMF (``init="nndsvda"``) factors the maps into ``k``
    non-negative components; each map belongs to the component with its largest
    coefficient. Shares and mean maps are computed from those labels on the maps at their
    own resolution, so a cluster's mean map is exactly the mean of its members.

    Args:
        maps: (N, H, W), N >= k; NMF needs non-negative maps (as
            :func:`viscope.explain.attribute` gives them with ``normalize=True``).
        k: the number of clusters.
        method: ``"kmeans"`` or ``"nmf"``.
        seed: the random state of both.
        size: the side the maps are clustered at (``None``: their own).

    Returns:
        The :class:`MapClusters`.

    Raises:
        ViscopeError: an unknown method, ``k`` < 1 or more than the maps, negative maps
            for NMF, or maps that are not finite (N, H, W).
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import NMF

    maps = check_maps(maps)
    if method not in CLUSTER_METHODS:
        raise ViscopeError(
            f"Unknown clustering method {method!r}; expected one of {', '.join(CLUSTER_METHODS)}."
        )
    n, h, w = maps.shape
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ViscopeError(
            f"Expected 1 <= k <= the number of maps ({n}); got k={k!r}. Use fewer clusters or "
            "explain more images."
        )
    if method == "nmf" and maps.min() < 0:
        raise ViscopeError(
            f"Expected non-negative maps for NMF; the smallest value is {float(maps.min()):.3g}. "
            "Use normalised maps (attribute(..., normalize=True)) or method='kmeans'."
        )
    small = maps
    if size is not None and (h > size or w > size):
        small = F.adaptive_avg_pool2d(maps[:, None], (min(h, size), min(w, size)))[:, 0]
    rows = small.flatten(1).double().numpy()
    if method == "kmeans":
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(rows)
        labels = torch.as_tensor(km.labels_, dtype=torch.long)
        comps = np.asarray(km.cluster_centers_)
    else:
        nmf = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=2000)
        weights = nmf.fit_transform(rows)
        labels = torch.as_tensor(weights.argmax(1), dtype=torch.long)
        comps = np.asarray(nmf.components_)
    components = torch.as_tensor(comps, dtype=torch.float32).reshape(k, *small.shape[1:])
    if components.shape[1:] != (h, w):
        components = F.interpolate(components[:, None], size=(h, w), mode="bilinear",
                                   align_corners=False)[:, 0]
    means, sizes = class_means(maps, labels, k)
    return MapClusters(method, labels, sizes, sizes.double() / n, means, components)


__all__ = ["CLUSTER_METHODS", "MapClusters", "class_means", "cluster_maps"]
