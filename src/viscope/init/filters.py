"""Filters from a sample of patches: principal components, ZCA whitening, K-Means.

Each function takes patches (n, D) (rows flattened as a Conv2d's ``weight[o]``) and
returns *unscaled* filters (k, D) in float64, the most informative first; k may be
smaller than asked (fewer useful components than filters). :func:`rescale` then gives
them the layer's norm.
"""

from __future__ import annotations

import numpy as np
import torch

from viscope.errors import ViscopeError


def covariance(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean (D,) and unbiased covariance (D, D) of ``patches``, in float64."""
    x = patches.to(torch.float64)
    mean = x.mean(0)
    centred = x - mean
    return mean, centred.T @ centred / max(1, len(x) - 1)


def _eigen(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns) of the patch covariance."""
    _, cov = covariance(patches)
    values, vectors = torch.linalg.eigh(cov)
    return values.flip(0), vectors.flip(1)


def _useful(values: torch.Tensor, k: int, tol: float = 1e-6) -> int:
    """How many components carry variance (eigenvalue > tol × the largest), at most k."""
    top = float(values[0]) if len(values) else 0.0
    return min(k, int((values > tol * top).sum())) if top > 0 else 0


def pca_filters(patches: torch.Tensor, k: int) -> torch.Tensor:
    """The top principal components of the mean-centred patches (orthonormal rows).

    Each component's sign is fixed so that its largest-magnitude entry is positive
    (eigenvectors have no sign of their own; this makes the result reproducible).

    Args:
        patches: (n, D).
        k: the most components wanted.

    Returns:
        (k', D) float64, k' = min(k, D, components with variance > 1e-6 × the largest).
    """
    values, vectors = _eigen(patches)
    k = _useful(values, k)
    rows = vectors[:, :k].T
    pivot = rows.abs().argmax(1)
    signs = torch.sign(rows[torch.arange(k), pivot])
    return rows * signs[:, None]


def zca_filters(patches: torch.Tensor, k: int, eps: float = 1e-2) -> torch.Tensor:
    """Rows of the ZCA whitening matrix ``W = U diag(1/sqrt(λ + eps)) Uᵀ``.

    ``W x`` whitens a centred patch ``x`` (``W Σ Wᵀ ≈ I``; Bell & Sejnowski 1997, Coates &
    Ng 2011 use it on image patches). Row i is a centre-surround filter centred on input
    entry i (a pixel of one channel). With fewer filters than entries, the rows centred on
    the entries of largest variance (diagonal of Σ) come first (stable order on ties).

    Args:
        patches: (n, D).
        k: the most filters wanted.
        eps: added to each eigenvalue; damps the directions of tiny variance (noise).

    Returns:
        (k', D) float64, k' = min(k, D).

    Raises:
        ViscopeError: eps < 0.
    """
    if eps < 0:
        raise ViscopeError(f"Expected eps >= 0 for ZCA whitening; got {eps}.")
    _, cov = covariance(patches)
    values, vectors = torch.linalg.eigh(cov)
    values = values.clamp_min(0)
    whiten = vectors @ torch.diag(1.0 / torch.sqrt(values + eps)) @ vectors.T
    order = torch.from_numpy(np.argsort(-cov.diagonal().numpy(), kind="stable"))
    return whiten[order[: min(k, len(order))]]


def kmeans_filters(
    patches: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    normalize: bool = False,
    batch_size: int = 1024,
    n_init: int = 3,
) -> torch.Tensor:
    """Centroids of the mean-centred patches, by scikit-learn's MiniBatchKMeans.

    Args:
        patches: (n, D).
        k: the number of clusters (at most n).
        seed: MiniBatchKMeans' ``random_state``.
        normalize: scale each centred patch to unit L2 norm first (clusters by shape of
            the patch, not by its contrast; Coates & Ng 2011).
        batch_size: MiniBatchKMeans' batch size.
        n_init: MiniBatchKMeans' restarts.

    Returns:
        (k', D) float64 cluster centres, k' = min(k, n), largest clusters first.
    """
    from sklearn.cluster import MiniBatchKMeans  # heavy; imported when used

    x = centred_patches(patches, normalize=normalize).numpy()
    k = min(k, len(x))
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=batch_size,
                         n_init=n_init).fit(x)
    sizes = np.bincount(km.labels_, minlength=k)
    order = np.argsort(-sizes, kind="stable")
    return torch.from_numpy(km.cluster_centers_[order].astype(np.float64))


def centred_patches(patches: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """``patches`` in float64 minus their mean, each row at unit norm if ``normalize``."""
    x = patches.to(torch.float64)
    x = x - x.mean(0)
    if normalize:
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x


def rescale(filters: torch.Tensor, norm: float) -> torch.Tensor:
    """Each row of ``filters`` at L2 norm ``norm`` (an all-zero row stays zero)."""
    lengths = filters.norm(dim=1, keepdim=True)
    return torch.where(lengths > 0, filters / lengths.clamp_min(1e-30) * norm, filters)
