"""PCA, ZCA and K-Means filters against independent NumPy / scikit-learn computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import MiniBatchKMeans

from viscope.init.filters import kmeans_filters, pca_filters, rescale, zca_filters


def hand_patches(images: np.ndarray, k: int, stride: int) -> np.ndarray:
    """All k×k windows at ``stride`` (no padding), flattened (C, kh, kw), by loops."""
    rows = []
    for img in images:
        c, h, w = img.shape
        for y in range(0, h - k + 1, stride):
            for x in range(0, w - k + 1, stride):
                rows.append(img[:, y:y + k, x:x + k].reshape(-1))
    return np.array(rows)


@pytest.fixture
def patches() -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.random((20, 2, 9, 9)).cumsum(axis=2)  # correlated pixels, unequal variance
    return hand_patches(images, 3, 2)  # 20 × 16 windows of D = 18


def test_pca_filters_are_orthonormal_top_principal_subspace(patches: np.ndarray) -> None:
    k = 5
    got = pca_filters(torch.from_numpy(patches).float(), k).numpy()
    assert got.shape == (k, patches.shape[1])
    np.testing.assert_allclose(got @ got.T, np.eye(k), atol=1e-6)
    cov = np.cov(patches.astype(np.float32).astype(np.float64), rowvar=False)
    values, vectors = np.linalg.eig(cov)
    top = vectors[:, np.argsort(-values.real)[:k]].real  # (D, k)
    # same subspace: projectors equal
    np.testing.assert_allclose(got.T @ got, top @ top.T, atol=1e-5)
    # and each filter is the component of its rank (up to sign)
    np.testing.assert_allclose(np.abs((got @ top).diagonal()), 1.0, atol=1e-5)


def test_pca_keeps_only_components_with_variance() -> None:
    rng = np.random.default_rng(1)
    basis = rng.normal(size=(3, 10))
    patches = rng.normal(size=(200, 3)) @ basis  # rank 3 in D = 10
    got = pca_filters(torch.from_numpy(patches), 8)
    assert got.shape == (3, 10)


def test_zca_whitens_the_sampled_patches(patches: np.ndarray) -> None:
    x = torch.from_numpy(patches).double()
    w = zca_filters(x, patches.shape[1], eps=1e-12).numpy()
    cov = np.cov(patches, rowvar=False)
    np.testing.assert_allclose(w @ cov @ w.T, np.eye(len(w)), atol=1e-5)
    values, vectors = np.linalg.eigh(cov)
    full = vectors @ np.diag(values ** -0.5) @ vectors.T  # the textbook ZCA matrix
    order = np.argsort(-np.diag(cov), kind="stable")
    np.testing.assert_allclose(w, full[order], atol=1e-6)  # largest-variance entries first
    sub = zca_filters(x, 4, eps=1e-12).numpy()
    np.testing.assert_allclose(sub, full[order[:4]], atol=1e-6)
    np.testing.assert_allclose(sub @ cov @ sub.T, np.eye(4), atol=1e-5)


def test_kmeans_filters_are_sklearn_centroids(patches: np.ndarray) -> None:
    got = kmeans_filters(torch.from_numpy(patches), 4, seed=3).numpy()
    centred = patches - patches.mean(0)
    ref = MiniBatchKMeans(n_clusters=4, random_state=3, batch_size=1024, n_init=3).fit(centred)
    order = np.argsort(-np.bincount(ref.labels_, minlength=4), kind="stable")
    np.testing.assert_allclose(got, ref.cluster_centers_[order], atol=1e-6)


def test_kmeans_nearest_filter_reconstructs_better_than_random(patches: np.ndarray) -> None:
    centred = patches - patches.mean(0)
    centres = kmeans_filters(torch.from_numpy(patches), 6, seed=0).numpy()
    nearest = ((centred[:, None] - centres[None]) ** 2).sum(-1).min(1)
    rng = np.random.default_rng(0)
    random = rng.normal(size=centres.shape)
    random *= np.linalg.norm(centres, axis=1, keepdims=True) / np.linalg.norm(random, axis=1,
                                                                               keepdims=True)
    nearest_random = ((centred[:, None] - random[None]) ** 2).sum(-1).min(1)
    assert nearest.mean() < 0.5 * nearest_random.mean()


def test_rescale_sets_each_norm() -> None:
    f = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    np.testing.assert_allclose(rescale(f, 2.0).norm(dim=1).numpy(), [2.0, 0.0, 2.0])
