"""Each streaming measure against a brute-force NumPy computation on random grids.

Streaming (random batch splits) == one-shot == two shards merged, including the 0/0 -> 1
and x/0 -> inf cases of the Normalized Variance.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from viscope.invariance import functional as F
from viscope.invariance.measures import (
    MEASURES,
    Anova,
    Goodfellow,
    MeasureOptions,
    NormalizedDistance,
    NormalizedVariance,
)
from viscope.invariance.stats import Moments, finite_mean, safe_divide


def grid(n=23, m=7, units=(3, 4, 5), seed=0, degenerate=True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, m, *units)) * rng.uniform(0.1, 3, size=units)
    if degenerate:
        flat = a.reshape(n, m, -1)
        flat[:, :, 0] = 0.0  # constant unit: TV = SV = 0 -> NV = 1
        flat[:, :, 1] = rng.normal(size=(1, m))  # varies with t, same for all samples: SV=0
        flat[:, :, 2] = rng.normal(size=(n, 1))  # invariant: TV = 0, SV > 0 -> NV = 0
    return a


def brute_nv(a: np.ndarray, variance=False, spatial_dims=()):
    """Quiroga et al. 2023 / tmeasures definitions, written as plainly as possible."""
    n, m = a.shape[:2]
    f = np.var if variance else np.std
    tv = np.mean([f(a[i], axis=0, ddof=1) for i in range(n)], axis=0)
    sv = np.mean([f(a[:, j], axis=0, ddof=1) for j in range(m)], axis=0)
    if spatial_dims:
        tv, sv = tv.mean(axis=spatial_dims), sv.mean(axis=spatial_dims)
    nv = np.empty_like(tv)
    for idx in np.ndindex(tv.shape):
        t, s = tv[idx], sv[idx]
        nv[idx] = t / s if s > 0 else (1.0 if t <= 0 else np.inf)
    return tv, sv, nv


def stream(state, a: np.ndarray, splits, stage=0):
    start = 0
    for stop in [*splits, a.shape[0]]:
        if stop > start:
            state.update(torch.from_numpy(a[start:stop]), stage)
        start = stop
    return state


@pytest.mark.parametrize("variance", [False, True])
@pytest.mark.parametrize("spatial", [False, True])
def test_nv_streaming_equals_bruteforce(variance, spatial):
    a = grid().astype(np.float32).astype(np.float64)
    opts = MeasureOptions(spatial=spatial, variance=variance)
    sd = (1, 2) if spatial else ()
    tv, sv, nv = brute_nv(a, variance, sd)
    st = stream(NormalizedVariance(7, (3, 4, 5), (1, 2), opts), a, [1, 5, 6, 17])
    out = st.compute()
    np.testing.assert_allclose(out["tv"].numpy(), tv, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out["sv"].numpy(), sv, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out["nv"].numpy(), nv, rtol=1e-9, atol=1e-12)
    if not spatial:
        flat = out["nv"].numpy().reshape(-1)
        assert flat[0] == 1.0 and np.isinf(flat[1]) and flat[2] == 0.0


def test_nv_oneshot_and_sharded_merge_equal_streaming():
    a = grid(n=40, seed=3)
    whole = stream(NormalizedVariance(7, (3, 4, 5)), a, [8, 16, 24, 32]).compute()
    oneshot = F.nv(torch.from_numpy(a))
    s1 = stream(NormalizedVariance(7, (3, 4, 5)), a[:13], [4])
    s2 = stream(NormalizedVariance(7, (3, 4, 5)), a[13:], [20])
    # merge through the tensors interface, as torch.distributed does
    merged = NormalizedVariance(7, (3, 4, 5)).with_tensors(s1.tensors()).merge_(
        NormalizedVariance(7, (3, 4, 5)).with_tensors(s2.tensors())).compute()
    for k in ("tv", "sv", "nv"):
        np.testing.assert_allclose(whole[k].numpy(), oneshot[k].numpy(), rtol=1e-12)
        np.testing.assert_allclose(merged[k].numpy(), oneshot[k].numpy(), rtol=1e-12)


def test_nv_single_transformation_has_zero_tv():
    a = grid(m=1, degenerate=False)
    out = stream(NormalizedVariance(1, (3, 4, 5)), a, [10]).compute()
    assert torch.all(out["tv"] == 0) and torch.all(out["nv"] == 0)


def test_state_memory_is_2m_plus_1_per_unit():
    m, units = 16, (8, 4, 4)
    st = NormalizedVariance(m, units)
    floats = sum(t.numel() for t in st.tensors())
    per_unit = (floats - m - 2) / np.prod(units)  # minus the counts and the epsilon
    assert per_unit == 2 * m + 1
    assert all(t.dtype == torch.float64 for t in st.tensors())


def test_safe_divide_cases():
    num = torch.tensor([0.0, 2.0, 3.0, 0.0])
    den = torch.tensor([0.0, 0.0, 1.5, 2.0])
    assert safe_divide(num, den).tolist() == [1.0, float("inf"), 2.0, 0.0]
    assert finite_mean([1.0, np.inf, np.nan, 3.0]) == 2.0


def test_moments_chan_merge_is_exact():
    x = torch.randn(101, 5, dtype=torch.float64) * 1e3 + 1e6  # large offset: Welford's case
    parts = [Moments.of(x[:1]), Moments.of(x[1:50]), Moments.of(x[50:])]
    m = parts[0]
    for p in parts[1:]:
        m.merge_(p)
    np.testing.assert_allclose(m.var().numpy(), x.var(0).numpy(), rtol=1e-10)
    np.testing.assert_allclose(m.mean.numpy(), x.mean(0).numpy(), rtol=1e-14)


def test_anova_equals_scipy_f_oneway():
    a = grid(n=30, m=5, units=(6,), degenerate=False)
    a[:, 2, 0] += 3.0  # unit 0 strongly depends on the transformation
    st = stream(Anova(5, (6,)), a, [7, 19])
    out = st.compute()
    for u in range(6):
        ref = scipy.stats.f_oneway(*[a[:, j, u] for j in range(5)])
        np.testing.assert_allclose(out["f"][u].item(), ref.statistic, rtol=1e-9)
        np.testing.assert_allclose(out["p"][u].item(), ref.pvalue, rtol=1e-6, atol=1e-300)
    assert out["variant"][0] == 1.0


def test_anova_bonferroni_is_stricter():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(40, 4, 200))
    a[:, 1, :] += 0.45  # a modest effect: many units near the threshold
    plain = stream(Anova(4, (200,), options=MeasureOptions(bonferroni=False)), a, []).compute()
    bonf = stream(Anova(4, (200,), options=MeasureOptions(bonferroni=True)), a, []).compute()
    assert bonf["variant"].sum() < plain["variant"].sum()
    np.testing.assert_array_equal(bonf["p"].numpy(), plain["p"].numpy())
    assert torch.all(bonf["variant"] <= plain["variant"])


def test_goodfellow_equals_bruteforce():
    rng = np.random.default_rng(2)
    n, m, u = 300, 6, 10
    ref = rng.normal(size=(n, 1, u))
    moved = ref + rng.normal(scale=np.linspace(0.01, 2, u), size=(n, m, u))
    q = 0.9
    st = Goodfellow(m, (u,), options=MeasureOptions(firing_quantile=q))
    stream(st, ref, [100], stage=0)
    st.end_stage(0)
    stream(st, np.concatenate([ref, moved], 1), [50, 170], stage=1)
    out = st.compute()
    r = ref[:, 0]
    thr = r.mean(0) + r.std(0, ddof=1) * scipy.stats.norm.ppf(q)
    fires = r > thr
    g = fires.mean(0)
    local = np.array([(moved[fires[:, k], :, k] > thr[k]).mean() for k in range(u)])
    np.testing.assert_allclose(out["global_rate"].numpy(), g, rtol=1e-12)
    np.testing.assert_allclose(out["local_rate"].numpy(), local, rtol=1e-12)
    np.testing.assert_allclose(out["invariance"].numpy(), local / g, rtol=1e-12)
    inv = out["invariance"].numpy()
    assert inv[0] > inv[-1]  # less noise under transformation -> more invariant


def test_distance_equals_bruteforce_within_one_block():
    a = grid(n=9, m=5, units=(4,), degenerate=False)
    out = stream(NormalizedDistance(5, (4,)), a, []).compute()
    td = np.mean([[np.mean([abs(a[i, p, u] - a[i, q, u]) for p in range(5)
                            for q in range(p + 1, 5)]) for u in range(4)] for i in range(9)], 0)
    sd = np.mean([[np.mean([abs(a[i, t, u] - a[k, t, u]) for i in range(9)
                            for k in range(i + 1, 9)]) for u in range(4)] for t in range(5)], 0)
    np.testing.assert_allclose(out["td"].numpy(), td, rtol=1e-12)
    np.testing.assert_allclose(out["sd"].numpy(), sd, rtol=1e-12)
    np.testing.assert_allclose(out["nd"].numpy(), td / sd, rtol=1e-12)


def run_blocks(spec, data: dict, blocks, shard_of):
    """Feed blocks of rows to shards, merging across shards after each stage as the
    engine does under torch.distributed; return the computed result."""
    shards = [spec.state(4, (5,)) for _ in range(max(shard_of) + 1)]
    for s, stage in enumerate(spec.state.stages):
        for (lo, hi), k in zip(blocks, shard_of, strict=True):
            shards[k].update(torch.from_numpy(data[stage][lo:hi]), s)
        merged = shards[0].with_tensors(shards[0].tensors())
        for st in shards[1:]:
            merged.merge_(st)
        merged.end_stage(s)
        for st in shards:
            st.adopt(merged)
    return merged.compute()


@pytest.mark.parametrize("name", MEASURES.names())
def test_every_registered_measure_merges_across_shards(name):
    """Registry-driven: the same blocks of rows on one shard or spread over three shards
    give the same result (what torch.distributed relies on)."""
    a = grid(n=24, m=4, units=(5,), degenerate=False, seed=7)
    ref = a[:, :1]
    data = {"grid": a, "reference": ref, "grid+reference": np.concatenate([ref, a], 1)}
    blocks = [(0, 5), (5, 12), (12, 13), (13, 24)]
    one = run_blocks(MEASURES.get(name), data, blocks, [0, 0, 0, 0])
    three = run_blocks(MEASURES.get(name), data, blocks, [0, 2, 1, 2])
    assert set(one) == set(three)
    for k in one:
        np.testing.assert_allclose(one[k].numpy(), three[k].numpy(), rtol=1e-10, equal_nan=True)
