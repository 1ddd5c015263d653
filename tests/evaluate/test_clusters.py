"""Map clusters: shares sum to 1, mean maps are the members' means, known groups found."""

import numpy as np
import pytest
import torch

from viscope.errors import ViscopeError
from viscope.evaluate.clusters import class_means, cluster_maps


def blobs(n_per: int, centres, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Gaussian blobs around known centres, with noise: the groups are known."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    maps, truth = [], []
    for c, (cy, cx) in enumerate(centres):
        for _ in range(n_per):
            jy, jx = torch.rand(2, generator=g) - 0.5
            m = torch.exp(-((yy - cy - jy) ** 2 + (xx - cx - jx) ** 2) / 8.0)
            maps.append((m + 0.05 * torch.rand(size, size, generator=g)).float())
            truth.append(c)
    return torch.stack(maps), np.array(truth)


@pytest.mark.parametrize("method", ["kmeans", "nmf"])
def test_clusters_recover_known_groups_and_means_are_member_means(method):
    centres = [(3, 3), (3, 12), (12, 3), (12, 12)]
    maps, truth = blobs(5, centres)
    c = cluster_maps(maps, k=4, method=method, size=None)
    assert c.k == 4
    assert float(c.shares.sum()) == pytest.approx(1.0)
    labels = c.labels.numpy()
    # every true group lands in one cluster, and different groups in different clusters
    owner = [set(labels[truth == t]) for t in range(4)]
    assert all(len(o) == 1 for o in owner)
    assert len(set().union(*owner)) == 4
    for j in range(4):
        members = maps[c.labels == j]
        assert c.sizes[j] == len(members)
        torch.testing.assert_close(c.means[j], members.mean(0))
    assert c.shares.tolist() == pytest.approx([0.25] * 4)


def test_unequal_shares_and_downsampled_clustering_keeps_full_size_means():
    maps, truth = blobs(6, [(4, 4)], size=64)
    other, _ = blobs(2, [(50, 50)], size=64, seed=1)
    allm = torch.cat([maps, other])
    c = cluster_maps(allm, k=2, method="kmeans", size=16)
    assert sorted(c.shares.tolist()) == pytest.approx([0.25, 0.75])
    assert c.means.shape == (2, 64, 64) and c.components.shape == (2, 64, 64)
    big = int(c.sizes.argmax())
    torch.testing.assert_close(c.means[big], allm[c.labels == big].mean(0))


def test_class_means_brute_force():
    g = torch.Generator().manual_seed(3)
    maps = torch.rand(10, 5, 7, generator=g)
    labels = torch.tensor([0, 2, 2, 0, 1, 2, 0, 0, 1, 2])
    means, counts = class_means(maps, labels, 4)
    assert counts.tolist() == [4, 2, 4, 0]
    for k in range(3):
        torch.testing.assert_close(means[k], maps[labels == k].mean(0))
    assert torch.equal(means[3], torch.zeros(5, 7))


def test_bad_input():
    maps = torch.rand(3, 4, 4)
    with pytest.raises(ViscopeError, match="1 <= k <= the number of maps"):
        cluster_maps(maps, k=4)
    with pytest.raises(ViscopeError, match="Unknown clustering method"):
        cluster_maps(maps, k=2, method="dbscan")
    with pytest.raises(ViscopeError, match="non-negative"):
        cluster_maps(maps - 0.5, k=2, method="nmf")
    bad = maps.clone()
    bad[1, 0, 0] = float("nan")
    with pytest.raises(ViscopeError, match=r"maps \[1\] hold NaN"):
        cluster_maps(bad, k=2)
    with pytest.raises(ViscopeError, match=r"\(N, H, W\)"):
        cluster_maps(torch.rand(4, 4), k=2)
    with pytest.raises(ViscopeError, match="one label per map"):
        class_means(maps, [0, 1], 2)
