"""Clustering: feature preprocessing, k-means, Sinkhorn, cluster statistics, the cluster-balanced sampler."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections import Counter
from functools import partial
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
import xdc
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from xdc.clustering import kmeans as kmeans_module
from xdc.clustering import sinkhorn as sinkhorn_module
from xdc.clustering.features import preprocess_features
from xdc.clustering.kmeans import assign_to_centroids, init_keys, kmeans, smallest_keys
from xdc.clustering.metrics import (
    agreement,
    ari_of_table,
    cluster_stats,
    collapse_threshold,
    contingency,
    nmi,
    nmi_of_table,
)
from xdc.clustering.sampler import ClusterBalancedSampler, shuffled_draws
from xdc.clustering.sharded import sharded_kmeans, sharded_preprocess_features
from xdc.clustering.sinkhorn import balance, balanced_assign, sinkhorn


def _blobs(sizes: list[int], dim: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs (unit variance) around centres of scale ``spread``; points and their blob labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(sizes), dim)) * spread
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return (centres[labels] + rng.standard_normal((labels.size, dim))).astype(np.float32), labels


# ---- features


def test_pca_whitening_makes_features_isotropic():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3000, 300)) * np.linspace(1, 20, 300)).astype(np.float32)  # very anisotropic
    out = preprocess_features(x, dim=256)
    assert out.shape == (3000, 256) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # whitened Gaussian data normalised to the sphere has covariance I / dim
    assert np.abs(np.cov(out.T) * 256 - np.eye(256)).max() < 0.2
    plain = preprocess_features(x, dim=256, whiten=False)
    assert np.abs(np.cov(plain.T) * 256 - np.eye(256)).max() > 1.0


def test_pca_of_rank_deficient_features_stays_finite():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1000, 10)) @ rng.standard_normal((10, 300))).astype(np.float32)  # rank 10
    out = preprocess_features(x, dim=256)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_pca_of_features_far_from_the_origin_is_that_of_centred_ones():
    """A fresh or collapsing encoder's ReLU features: a mean far above their spread. Until 2026-12-02 faiss formed
    their covariance as x'x - n mean mean' in float32, which cancelled: noise eigenvalues, the negative ones
    whitened into NaN (and k-means crashed on them)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 32)) * np.geomspace(1, 1e-2, 32)  # a decaying spectrum, as encoders give
    out = preprocess_features((x + 30).astype(np.float32), dim=32)
    assert np.isfinite(out).all()
    centred = preprocess_features((x - x.mean(0)).astype(np.float32), dim=32)
    np.testing.assert_allclose(out @ out.T, centred @ centred.T, atol=1e-3)  # the same up to a rotation


@pytest.mark.parametrize("dim", [16, 64])  # PCA, and none (more dimensions asked than there are)
@pytest.mark.parametrize("scale", [1e20, 1e-25])
def test_features_of_extreme_magnitude_are_those_of_unit_ones(dim, scale):
    """A diverging encoder's features (1e20, finite): until 2026-12-02 faiss's float32 squares overflowed, into
    NaN after PCA (k-means crashed) and rows of zeros without; tiny ones underflowed into noise."""
    from xdc.clustering.sharded import sharded_preprocess_features

    x = np.random.default_rng(0).standard_normal((300, 32)).astype(np.float32)
    for preprocess in preprocess_features, sharded_preprocess_features:
        out = preprocess(x * np.float32(scale), dim=dim)
        np.testing.assert_allclose(out @ out.T, preprocess(x, dim=dim) @ preprocess(x, dim=dim).T, atol=1e-4)


def test_features_near_the_float32_limit_far_from_the_origin_are_those_of_unit_ones():
    """A diverging, collapsing encoder's finite features: about 1e36, their mean 100 times their spread. Until
    2026-12-02 faiss applied the whitening to the unscaled rows, whose products overflowed: NaN, on which k-means
    crashed."""
    from xdc.clustering.sharded import sharded_preprocess_features

    x = np.random.default_rng(0).standard_normal((1000, 32)) * np.geomspace(1, 1e-2, 32) + 100
    unit = (x / 128).astype(np.float32)
    for preprocess in preprocess_features, sharded_preprocess_features:
        out = preprocess(unit * np.float32(2.0**120), dim=32)  # a power of two: the same rows, scaled exactly
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out, preprocess(unit, dim=32), atol=1e-5)


def test_subnormal_features_are_those_of_unit_ones():
    """Features that all underflowed below float32's normal range (1e-38): until 2026-12-02 the power of two that
    scales them for the PCA (2**130 and more) was infinite in float32, and the output NaN."""
    from xdc.clustering.sharded import sharded_preprocess_features

    tiny = np.ldexp(np.random.default_rng(0).standard_normal((300, 32)).astype(np.float32), -140)
    exact = np.ldexp(tiny, 140)  # the same values, exactly, in the normal range
    for preprocess in preprocess_features, sharded_preprocess_features:
        np.testing.assert_allclose(preprocess(tiny, dim=16), preprocess(exact, dim=16), atol=1e-6)


@pytest.mark.parametrize("shape", [(500, 100), (200, 300), (256, 300), (256, 256)])
def test_pca_skipped_with_fewer_dims_than_dim_or_no_more_samples(shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = preprocess_features(x, dim=256)
    np.testing.assert_allclose(out, x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-5)


def test_features_of_exactly_dim_dimensions_are_whitened():
    """SPEC: PCA is skipped with fewer dimensions than 256, not at 256 (the small preset's features)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3000, 256)) * np.linspace(1, 20, 256)).astype(np.float32)  # very anisotropic
    out = preprocess_features(x, dim=256)
    assert out.shape == (3000, 256) and np.abs(np.cov(out.T) * 256 - np.eye(256)).max() < 0.2


def test_pca_reduces_to_dim_and_zero_rows_stay_zero():
    x = np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32)
    x[3] = 0
    out = preprocess_features(x, dim=8)
    assert out.shape == (100, 8)
    out = preprocess_features(x, dim=32)  # no PCA: the zero row survives normalisation as zeros
    assert np.isfinite(out).all() and not out[3].any()


def test_non_finite_features_are_rejected():
    x = np.ones((10, 4), np.float32)
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        preprocess_features(x)


def test_features_all_identical_come_out_finite():
    for x in (np.ones((50, 8), np.float32), np.zeros((50, 8), np.float32)):
        assert not preprocess_features(x, dim=4).any()  # PCA: no variance, rows of zeros (not NaN)
    np.testing.assert_allclose(preprocess_features(np.full((3, 4), 7, np.float32), dim=8), 0.5)  # no PCA
    assert preprocess_features(np.zeros((0, 8), np.float32)).shape == (0, 8)


def _outcome(code: str) -> tuple[int, str]:
    """Return code and last line of stderr of ``code`` run in a fresh interpreter: a native crash (SIGFPE) there
    fails the test instead of killing pytest."""
    env = {**os.environ, "PYTHONPATH": str(Path(xdc.__file__).parents[1])}
    r = subprocess.run([sys.executable, "-c", "import numpy as np\n" + code], capture_output=True, text=True,
                       env=env, timeout=120)  # fmt: skip
    return r.returncode, (r.stderr.strip().splitlines() or [""])[-1]


@pytest.mark.parametrize("call", [
    "from xdc.clustering.kmeans import kmeans; kmeans(np.zeros((5, 0), np.float32), 2, seed=0)",
    "from xdc.clustering.sinkhorn import balanced_assign; balanced_assign(np.zeros((5, 0), np.float32), 2, seed=0)",
    "from xdc.clustering.sharded import sharded_kmeans; sharded_kmeans(np.zeros((5, 0), np.float32), 2, seed=0)",
    "from xdc.clustering.features import preprocess_features; preprocess_features(np.zeros((5, 0), np.float32))",
    "from xdc.clustering.kmeans import assign_to_centroids as a; a(np.zeros((5, 0), np.float32), np.zeros((2, 0)))",
])  # fmt: skip
def test_points_without_dimensions_are_refused_not_a_crash(call):
    """faiss's k-means of points of no dimension died of SIGFPE (a native crash, no Python error) until
    2026-12-02; the others clustered them all into cluster 0."""
    rc, last = _outcome(call)
    assert (rc, last) == (1, f"ValueError: {'features' if 'preprocess' in call else 'points'} have no dimensions "
                             "(shape (5, 0)): nothing to cluster by")  # fmt: skip


def test_pca_to_less_than_one_dimension_and_complex_features_are_refused():
    x = np.ones((5, 3), np.float32)
    for preprocess in (preprocess_features, sharded_preprocess_features):
        with pytest.raises(ValueError, match="PCA needs dim >= 1, got 0"):
            preprocess(x, dim=0)
        with pytest.raises(ValueError, match="real numbers, got dtype complex64"):
            preprocess(x.astype(np.complex64))  # its imaginary parts were dropped until 2026-12-02
    rank_deficient = np.random.default_rng(0).standard_normal((100, 10)).astype(np.float32)[:, [*range(10)] * 2]
    for preprocess in (preprocess_features, sharded_preprocess_features):
        assert np.isfinite(preprocess(rank_deficient, dim=16, eps=1e-5)).all()
        for eps in (-1e-5, 0.0, math.nan, math.inf):  # until 2026-12-03 rows of NaN, or of zeros at infinity
            with pytest.raises(ValueError, match="eps must be a finite number > 0"):
                preprocess(rank_deficient, dim=16, eps=eps)


# ---- k-means


def test_kmeans_recovers_separated_blobs_and_is_deterministic():
    x, truth = _blobs([120, 100, 80, 60], dim=16, spread=10)
    # random initialisation (DeepCluster's) can merge two blobs; the lowest loss over a few seeds must not
    a = min((kmeans(x, 4, seed=s) for s in range(8)), key=lambda r: r.loss)
    assert nmi(a.assignments, truth) > 0.99
    assert a.assignments.dtype == np.int64 and a.sizes.dtype == np.int64 and a.centroids.dtype == np.float32
    assert a.centroids.shape == (4, 16) and sorted(a.sizes) == [60, 80, 100, 120]
    expected = ((x - a.centroids[a.assignments]) ** 2).sum()
    assert a.loss == pytest.approx(expected, rel=1e-4)
    a, b = kmeans(x, 4, seed=3), kmeans(x, 4, seed=3)
    np.testing.assert_array_equal(a.assignments, b.assignments)
    np.testing.assert_array_equal(a.centroids, b.centroids)


def test_kmeans_seeds_differ_on_unstructured_data():
    x = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
    runs = [kmeans(x, 10, seed=s).assignments for s in range(3)]
    assert any(nmi(runs[0], r) < 0.99 for r in runs[1:])


def test_kmeans_uses_every_point_for_the_given_iterations(monkeypatch):
    built = []

    class Spy(faiss.Kmeans):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(kmeans_module.faiss, "Kmeans", Spy)
    k, n = 4, 100 * 4 * 256  # far above faiss's default of 256 points per centroid
    x = np.random.default_rng(0).standard_normal((n, 2)).astype(np.float32)
    result = kmeans(x, k, seed=0, iters=7)
    (km,) = built
    assert km.cp.max_points_per_centroid * k >= n and km.cp.niter == 7 and len(km.obj) == 7
    assert not km.cp.spherical and result.sizes.sum() == n


def test_kmeans_rejects_bad_k():
    x = np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError, match="k >= 2"):
        kmeans(x, 1, seed=0)
    with pytest.raises(ValueError, match="5 points for k=6"):
        kmeans(x, 6, seed=0)


@pytest.mark.parametrize("search", [None, "faiss", "torch"])
def test_kmeans_refuses_non_finite_points_and_negative_iterations(search):
    """Until 2026-12-02 faiss's k-means raised a RuntimeError naming its C++ source, the sharded one's faiss
    search an IndexError, its torch search returned NaN centroids and a NaN loss; iters=-1 ran none (faiss) or
    ran until nothing moved (sharded)."""
    run = kmeans if search is None else lambda *a, **kw: sharded_kmeans(*a, search=search, **kw)
    x = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    for bad in (np.nan, np.inf):
        y = x.copy()
        y[4, 1] = bad
        with pytest.raises(ValueError, match="points contain NaN or infinite values"):
            run(y, 3, seed=0)
    with pytest.raises(ValueError, match="iters >= 0, got -1"):
        run(x, 3, seed=0, iters=-1)
    assert run(x, 3, seed=0, iters=0).iterations == 0


def test_kmeans_of_points_of_extreme_magnitude_is_that_of_unit_ones():
    """Points are scaled by a power of two (exact) before faiss or torch square them in float32: until 2026-12-03
    points of 1e-25 all fell in one cluster (their squared distances underflowed to 0), and points of 1e20
    overflowed: faiss's k-means aborted the whole process, the sharded faiss search raised an IndexError, the torch
    search and assign_to_centroids gave wrong labels."""
    x, _ = _blobs([40, 30, 50], dim=5, spread=4)
    runs = {"kmeans": kmeans, "faiss": partial(sharded_kmeans, search="faiss"),
            "torch": partial(sharded_kmeans, search="torch")}  # fmt: skip
    for name, run in runs.items():
        ref = run(x, 3, seed=2, iters=8)
        assert (ref.sizes > 0).all()
        for power in (-84, 70):  # 2**-84 ~ 5e-26, 2**70 ~ 1e21
            got = run(np.ldexp(x, power), 3, seed=2, iters=8)
            np.testing.assert_array_equal(got.assignments, ref.assignments, err_msg=f"{name} at 2**{power}")
            np.testing.assert_allclose(np.ldexp(got.centroids, -power), ref.centroids, rtol=1e-6)
            assert np.ldexp(got.loss, -2 * power) == pytest.approx(ref.loss, rel=1e-5)
            assert assign_to_centroids(np.ldexp(x, power), got.centroids).tolist() == ref.assignments.tolist()


def test_assign_to_centroids_is_the_nearest():
    rng = np.random.default_rng(0)
    x, c = rng.standard_normal((200, 5)).astype(np.float32), rng.standard_normal((7, 5)).astype(np.float32)
    expected = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
    got = assign_to_centroids(x, c)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)



def test_assign_to_centroids_refuses_what_it_cannot_label():
    """faiss labelled every point -1, as if unassigned, without centroids or for NaN points, until 2026-12-02."""
    x, c = np.ones((4, 3), np.float32), np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="at least one centroid"):
        assign_to_centroids(x, c[:0])
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match="points contain NaN"):
        assign_to_centroids(x, c)
    c[0, 0] = np.inf
    with pytest.raises(ValueError, match="centroids contain NaN"):
        assign_to_centroids(x[[0]], c)
    assert assign_to_centroids(x[:0], c[1:]).shape == (0,)


# ---- Sinkhorn


def test_sinkhorn_marginals():
    scores = torch.randn(600, 12, generator=torch.Generator().manual_seed(0)) * 0.5
    q = sinkhorn(scores, epsilon=0.05, iters=50)
    assert q.shape == (600, 12) and q.dtype == scores.dtype and (q >= 0).all()
    torch.testing.assert_close(q.sum(1), torch.ones(600), rtol=0, atol=1e-5)
    torch.testing.assert_close(q.sum(0), torch.full((12,), 50.0), rtol=1e-2, atol=0)
    torch.testing.assert_close(sinkhorn(scores).sum(1), torch.ones(600), rtol=0, atol=1e-5)  # rows last
    assert torch.isfinite(sinkhorn(scores * 1e4)).all()  # exp(2e5) overflows without the log domain


def test_sinkhorn_of_integer_half_or_complex_scores():
    """Until 2026-12-03 Q was returned in the dtype of integer scores (every probability truncated to 0; True for
    booleans), and complex scores lost their imaginary parts with a warning."""
    scores = torch.randint(-3, 4, (40, 5), generator=torch.Generator().manual_seed(0))
    q = sinkhorn(scores, epsilon=1.0, iters=10)
    assert q.dtype == torch.get_default_dtype()
    torch.testing.assert_close(q, sinkhorn(scores.to(q.dtype), epsilon=1.0, iters=10))
    torch.testing.assert_close(q.sum(1), torch.ones(40))
    assert sinkhorn(scores > 0, iters=10).dtype == torch.get_default_dtype()
    for low in (torch.float16, torch.bfloat16):  # computed in float64, returned in their own dtype
        q_low = sinkhorn(scores.to(low), epsilon=1.0, iters=10)
        assert q_low.dtype == low
        torch.testing.assert_close(q_low.float(), q, atol=1e-2, rtol=0)
    with pytest.raises(ValueError, match="real numbers"):
        sinkhorn(scores.to(torch.complex64))


def test_sinkhorn_refuses_scores_that_are_not_finite():
    """Until 2026-12-02 an infinite or NaN score, or -distance^2 / epsilon overflowing, made Q NaN: labels of
    nothing."""
    for bad in (math.inf, math.nan):
        scores = torch.zeros(6, 3)
        scores[2, 1] = bad
        with pytest.raises(ValueError, match="scores / epsilon are NaN or infinite"):
            sinkhorn(scores)
    with pytest.raises(ValueError, match="too small an epsilon"):
        sinkhorn(torch.full((6, 3), 1e30, dtype=torch.float64), epsilon=1e-300)
    x, _ = _blobs([30, 30, 30], dim=4, spread=5)
    clusters = kmeans(x, 3, seed=0)
    with pytest.raises(ValueError, match="too small an epsilon"):
        balance(x, clusters, epsilon=1e-307)  # squared distances of tens: past the largest float64
    x[4, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite points"):
        balance(x, clusters)
    for epsilon in (math.inf, math.nan, 0.0):  # until 2026-12-03 an infinite one gave a uniform Q: labels by id alone
        with pytest.raises(ValueError, match=f"finite epsilon > 0 and iters >= 1, got epsilon={epsilon}"):
            balance(x[:4], clusters, epsilon=epsilon)



def test_sinkhorn_refuses_no_points_or_no_clusters():
    """A "math domain error" from log(0) until 2026-12-02."""
    for shape in ((0, 3), (3, 0)):
        with pytest.raises(ValueError, match=re.escape(f"of N, K >= 1, got shape {shape}")):
            sinkhorn(torch.zeros(shape))
    x, _ = _blobs([30, 30, 30], dim=4, spread=5)
    with pytest.raises(ValueError, match="got 0 points and 3 centroids"):
        balance(x[:0], kmeans(x, 3, seed=0))
    assert torch.equal(sinkhorn(torch.zeros(1, 1)), torch.ones(1, 1))  # one point, one cluster


def test_sinkhorn_in_blocks_of_rows_is_the_whole_matrix_computation(monkeypatch):
    scores = torch.randn(300, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    log_q = scores / 0.05  # the textbook form, each log-sum-exp over the whole matrix
    for _ in range(20):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(7)
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(300)
    expected = log_q.exp() * 300
    monkeypatch.setattr(sinkhorn_module, "BLOCK_ROWS", 32)  # 10 blocks, the last one partial
    torch.testing.assert_close(sinkhorn(scores, 0.05, 20), expected, rtol=1e-12, atol=1e-15)
    x, _ = _blobs([200, 60, 40], dim=8, spread=4)
    x = preprocess_features(x)
    blocked = balanced_assign(x, 3, seed=0)
    monkeypatch.setattr(sinkhorn_module, "BLOCK_ROWS", 1 << 20)
    whole = balanced_assign(x, 3, seed=0)
    np.testing.assert_array_equal(blocked.assignments, whole.assignments)
    assert blocked.loss == pytest.approx(whole.loss, rel=1e-12)


def test_balance_refuses_points_of_another_dimension_than_the_centroids():
    """Until 2026-12-03 torch's cdist raised a RuntimeError ("X1 and X2 must have the same number of columns")."""
    x, _ = _blobs([20, 20], dim=6, spread=5)
    clusters = kmeans(x, 2, seed=0)
    for bad in (x[:, :4], x[0], x[None]):
        with pytest.raises(ValueError, match=r"^points must be a 2-D array \(N, 6\) for centroids of dimension 6"):
            balance(bad, clusters)
    assert balance(x, clusters).sizes.tolist() == [20, 20]


def test_balanced_assign_balances_what_kmeans_leaves_skewed():
    x, _ = _blobs([1000, 20, 20, 20], dim=8, spread=4)
    x = preprocess_features(x)
    k, fair = 4, len(x) / 4
    plain = kmeans(x, k, seed=0)
    balanced = balanced_assign(x, k, seed=0)
    assert plain.sizes.min() < 0.3 * fair
    assert 0.9 * fair < balanced.sizes.min() and balanced.sizes.max() <= np.ceil(fair)
    assert balanced.sizes.sum() == len(x) and balanced.assignments.dtype == np.int64
    np.testing.assert_array_equal(balanced.centroids, plain.centroids)
    assert balanced.loss >= plain.loss  # balance costs distortion


@pytest.mark.parametrize("noise", [1e-3, 0.0])
def test_balanced_assign_cannot_collapse_on_degenerate_features(noise):
    # a collapsed encoder: (nearly) the same feature for every clip, so Q is almost uniform and its plain
    # argmax piles most points into a few clusters; the capacity ceil(N/k) still holds
    rng = np.random.default_rng(0)
    x = preprocess_features((rng.standard_normal(64) + noise * rng.standard_normal((3000, 64))).astype(np.float32))
    result = balanced_assign(x, 16, seed=1)
    assert result.sizes.max() <= -(-3000 // 16) and result.sizes.sum() == 3000
    if noise:
        sq_dist = torch.cdist(torch.from_numpy(x).double(), torch.from_numpy(result.centroids).double()) ** 2
        plain_argmax = sinkhorn(-sq_dist, 0.05, 50).argmax(1)
        assert torch.bincount(plain_argmax, minlength=16).max() > 2 * 3000 / 16
        assert result.sizes.min() > 0.8 * 3000 / 16


# ---- statistics


def test_cluster_stats_detects_collapse():
    assignments = np.array([0] * 90 + [3] * 6 + [7] * 4)
    s = cluster_stats(assignments, k=10)
    assert (s.k, s.non_empty, s.largest, s.smallest_non_empty, s.median) == (10, 3, 90, 4, 6.0)
    assert s.largest_fraction == pytest.approx(0.9) and s.collapsed
    assert 0 < s.entropy_ratio < 0.25
    assert s.to_dict()["collapsed"] is True
    assert not cluster_stats(assignments, k=10, collapse_fraction=0.95).collapsed


def test_a_collapse_is_judged_against_an_even_split_at_small_k():
    # at k = 2 an even split is already half of the points: 56/44 is no collapse, 80/20 is
    assert not cluster_stats(np.array([0] * 56 + [1] * 44), k=2).collapsed
    assert cluster_stats(np.array([0] * 80 + [1] * 20), k=2).collapsed
    assert cluster_stats(np.zeros(50, dtype=int), k=2).collapsed
    assert collapse_threshold(2, 0.5) == 0.75 and collapse_threshold(1000, 0.5) == pytest.approx(0.5005)
    assert not cluster_stats(np.zeros(50, dtype=int), k=1).collapsed  # one cluster: nothing to balance


def test_the_entropy_of_a_total_collapse_is_zero_not_minus_zero():
    """-(1 * log 1) is -0.0, which tables, model cards and reports printed as "-0.000" until 2026-12-02."""
    s = cluster_stats(np.full(50, 3), k=8)
    assert s.entropy_ratio == 0.0 and math.copysign(1.0, s.entropy_ratio) == 1.0
    assert f"{s.entropy_ratio:.3f}" == "0.000"


def test_cluster_stats_of_a_balanced_assignment():
    s = cluster_stats(np.arange(100) % 4, k=4)
    assert s.non_empty == 4 and s.largest_fraction == 0.25 and not s.collapsed
    assert s.entropy_ratio == pytest.approx(1.0)
    with pytest.raises(ValueError):
        cluster_stats(np.array([0, 4]), k=4)



def test_cluster_stats_refuse_labels_that_are_not_cluster_ids():
    """A numpy TypeError (floats) or UFuncNoLoopError (strings) until 2026-12-02; k = 0 a ZeroDivisionError."""
    for labels in (np.array([0.0, 1.0]), np.array(["a", "b"])):
        with pytest.raises(ValueError, match="assignments must be integer cluster ids"):
            cluster_stats(labels, k=2)
    with pytest.raises(ValueError, match="k >= 1"):
        collapse_threshold(0, 0.5)
    with pytest.raises(ValueError, match=r"^assignments must be 1-D, got shape \(2, 2\)$"):  # until 2026-12-03 numpy's
        cluster_stats(np.array([[0, 1], [1, 0]]), k=2)  # "object too deep for desired array"


def test_nmi():
    a = np.arange(300) % 3
    assert nmi(a, (a + 1) % 3) == pytest.approx(1.0)  # a relabelling
    assert nmi(a, np.random.default_rng(0).integers(0, 3, 300)) < 0.05



def test_nmi_of_degenerate_labelings_is_scikit_learns_or_an_error():
    # no points, one point, both constant: 1 (nothing to disagree on); one constant: 0 (it tells nothing)
    cases = [([], []), ([3], [7]), ([0] * 5, [4] * 5), ([0] * 5, list(range(5))), (list(range(5)), [1] * 5)]
    for a, b in cases:
        assert nmi(a, b) == normalized_mutual_info_score(a, b) == (0.0 if len(set(a)) != len(set(b)) else 1.0)
    words = np.array(["b", "a", "b", "c"])
    assert nmi(words, [1, 0, 1, 2]) == pytest.approx(1.0)  # strings are labels like any others
    # Until 2026-12-02: NaN labels were counted as one more label, silently; the others failed in numpy.
    with pytest.raises(ValueError, match="labels contain NaN"):
        nmi(np.array([np.nan, 1.0, np.nan]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="must be 1-D"):
        nmi(np.zeros((2, 3), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="one sortable kind"):
        nmi(np.array(["a", 1], dtype=object), np.array([0, 1]))
    assert agreement([0, 1, 1], [1, 0, 0], shuffles=2)[0] == pytest.approx(1.0)  # lists, as nmi takes them
    with pytest.raises(ValueError, match="integer cluster ids"):
        agreement(words, words)


@pytest.mark.parametrize("n", [0, 1, 7, 5000])
@pytest.mark.parametrize("sizes", [(1, 1), (1, 6), (4, 4), (60, 9), (3000, 3000)])
def test_nmi_ari_and_contingency_are_scikit_learns(n, sizes):
    """Counted directly (a dense table, or the pairs that occur when it would be large), with scikit-learn's
    limit cases, for any labels: small integers used as they are, others (large, negative, strings) renumbered."""
    rng = np.random.default_rng(n + sizes[0])
    a, b = rng.integers(0, sizes[0], n), rng.integers(0, sizes[1], n)
    strings = (a.astype(str), np.char.add("c", b.astype(str)))
    pairs = [(a, b), (a, (3 * a + 1) % sizes[1]), (a.astype(np.int32) * 10**6, -b), strings]
    for x, y in pairs:
        expected = normalized_mutual_info_score(x, y, average_method="arithmetic")
        assert nmi(x, y) == pytest.approx(expected, abs=1e-12)
        table = contingency(x, y)
        np.testing.assert_array_equal(table, contingency_matrix(x, y))
        assert nmi_of_table(table) == pytest.approx(expected, abs=1e-12)
        assert ari_of_table(table) == pytest.approx(adjusted_rand_score(x, y), abs=1e-12)


def test_ari_does_not_overflow():
    # Pair counts near N^2 multiply to about N^4: past int64 from N = 55,000 on (here 1e21). scikit-learn takes
    # Python integers, so must we.
    table = np.array([[100_000, 20_000], [10_000, 170_000]])
    x = np.repeat([0, 0, 1, 1], table.ravel())
    y = np.repeat([0, 1, 0, 1], table.ravel())
    assert ari_of_table(table) == pytest.approx(adjusted_rand_score(x, y), abs=1e-12)


def test_agreement_against_its_chance_level():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 32, 400)  # many clusters for few points: chance NMI is far from 0
    same, chance = agreement(a, (a + 5) % 32)
    assert same == pytest.approx(1.0) and 0.2 < chance < 0.5
    independent, chance = agreement(a, rng.integers(0, 32, 400))
    assert independent == pytest.approx(chance, abs=0.03)
    assert agreement(a, rng.integers(0, 32, 400), seed=3)[1] == pytest.approx(chance, abs=0.02)
    b = a.copy()
    b[:200] = -1  # unassigned points are left out, not counted as a cluster
    assert agreement(a, b)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no point"):
        agreement(np.full(5, -1), np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match="shuffles >= 1, got 0"):  # a NaN chance level until 2026-12-03
        agreement(a, a, shuffles=0)


# ---- sampler


def _videos(sampler: ClusterBalancedSampler) -> list[int]:
    return [v for v, _ in sampler]


def test_sampler_draws_every_cluster_equally_and_skips_unlabelled():
    labels = np.full(400, -1)
    labels[:200] = 0  # large
    labels[200:290] = 2  # label 1 never occurs: an empty cluster
    labels[290:293] = 5  # small
    sampler = ClusterBalancedSampler([labels], epoch_size=301, seed=0)
    videos = _videos(sampler)
    assert len(videos) == len(sampler) == 301
    per_cluster = Counter(labels[videos].tolist())
    assert set(per_cluster) == {0, 2, 5}  # no -1, no absent label
    assert max(per_cluster.values()) - min(per_cluster.values()) <= 1
    large = [v for v in videos if labels[v] == 0]
    assert len(set(large)) == len(large)  # ~100 draws from 200 videos: no repeats
    assert {m.dtype for m in sampler.clusters[0]} == {np.dtype(np.int32)}  # 4 B per video held, not 8
    small = Counter(v for v in videos if labels[v] == 5)
    assert set(small) == {290, 291, 292} and max(small.values()) - min(small.values()) <= 1  # repeated evenly


def test_sampler_takes_labels_of_any_size():
    """Cluster ids need not be small: until 2026-12-03 the members were counted by a bincount up to the largest
    label (a MemoryError of 8 TiB for a label of 2**40)."""
    labels = np.array([2**40, 0, 2**40, 5, -1, 2**40, 2**62])
    draws = [v for v, _ in ClusterBalancedSampler([labels], epoch_size=8, seed=3)]
    assert sorted(Counter(labels[draws]).values()) == [2, 2, 2, 2] and 4 not in draws
    big = [v for v in draws if labels[v] == 2**40]
    assert len(set(big)) == 2 and set(big) <= {0, 2, 5}  # two distinct of its three members: its quota


def test_shuffled_draws_give_every_item_once_per_epoch_and_start_anywhere():
    sampler = shuffled_draws(37, seed=3)
    epochs = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
        assert sorted(_videos(sampler)) == list(range(37))
    assert _videos(sampler) != list(range(37)) and epochs[0] != epochs[1]
    sampler.set_epoch(1)
    sampler.set_start(10)
    assert list(sampler) == epochs[1][10:]  # the same videos and draw seeds from position 10 on


def test_shuffled_draws_of_no_items_say_so():
    """Until 2026-12-03 n = 0 was "epoch_size must be >= 1" (the sampler's argument, not the caller's), and n < 0
    numpy's "negative dimensions are not allowed"."""
    for n in (0, -1):
        with pytest.raises(ValueError, match=rf"^shuffled_draws needs at least one item to draw, got n = {n}$"):
            shuffled_draws(n, seed=0)


def test_sampler_splits_the_epoch_over_label_sets():
    video_clusters = np.where(np.arange(200) < 100, np.arange(200) % 5, -1)
    audio_clusters = np.where(np.arange(200) >= 100, np.arange(200) % 3, -1)
    videos = np.array(_videos(ClusterBalancedSampler([video_clusters, audio_clusters], epoch_size=120, seed=1)))
    assert (videos < 100).sum() == 60 and (videos >= 100).sum() == 60
    assert set(Counter(video_clusters[videos[videos < 100]]).values()) == {12}
    assert set(Counter(audio_clusters[videos[videos >= 100]]).values()) == {20}


def test_sampler_is_deterministic_per_seed_round_epoch():
    labels = np.arange(1000) % 10

    def draws(seed: int, epoch: int, round: int) -> list[tuple[int, int]]:
        sampler = ClusterBalancedSampler([labels], epoch_size=500, seed=seed)
        sampler.set_epoch(epoch, round)
        return list(sampler)

    first = draws(0, 2, 1)
    torch.manual_seed(123)
    np.random.seed(123)
    assert draws(0, 2, 1) == first
    assert draws(0, 3, 1) != first and draws(0, 2, 2) != first and draws(1, 2, 1) != first
    seeds = [s for _, s in first]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**63 for s in seeds)
    assert all(isinstance(v, int) and isinstance(s, int) for v, s in first)


def test_sampler_set_epoch_without_a_round_keeps_the_round():
    """Called as torch's DistributedSampler is, set_epoch(epoch) stays in the round set before (until 2026-12-03
    it went back to round 0)."""
    labels = np.arange(60) % 6

    def draws(epoch: int, round: int) -> list[tuple[int, int]]:
        sampler = ClusterBalancedSampler([labels], epoch_size=30, seed=2)
        sampler.set_epoch(epoch, round)
        return list(sampler)

    sampler = ClusterBalancedSampler([labels], epoch_size=30, seed=2)
    sampler.set_epoch(0)
    assert list(sampler) == draws(0, 0)  # round 0 at first
    sampler.set_epoch(0, round=3)
    sampler.set_epoch(1)
    assert list(sampler) == draws(1, 3) != draws(1, 0)


def test_sampler_set_start_yields_the_tail():
    sampler = ClusterBalancedSampler([np.arange(100) % 7], epoch_size=90, seed=4)
    sampler.set_epoch(5, 2)
    full = list(sampler)
    sampler.set_start(37)
    assert len(sampler) == 53 and list(sampler) == full[37:]
    sampler.set_start(96)  # past the end, e.g. resuming after a partial last batch: nothing left
    assert len(sampler) == 0 and list(sampler) == []
    sampler.set_epoch(6, 2)  # a new epoch starts from its beginning
    assert len(sampler) == 90
    with pytest.raises(ValueError):
        sampler.set_start(-1)


def test_sampler_ranks_interleave_the_padded_global_sequence():
    labels = np.arange(50) % 4
    ranks = [ClusterBalancedSampler([labels], epoch_size=41, seed=2, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(3)
    videos, seeds = ranks[0].global_sequence()
    assert len(videos) == 42 and videos[41] == videos[0]  # padded from the start
    parts = [list(s) for s in ranks]
    assert len(parts[0]) == len(parts[1]) == len(ranks[1]) == 21
    for r, part in enumerate(parts):
        assert part == list(zip(videos[r::2].tolist(), seeds[r::2].tolist()))
    single = ClusterBalancedSampler([labels], epoch_size=41, seed=2)
    single.set_epoch(3)
    assert [v for v, _ in single] == videos[:41].tolist()
    ranks[1].set_start(5)
    assert list(ranks[1]) == parts[1][5:]


def test_shuffled_draws_on_ranks_are_the_one_process_sequence_unpadded():
    """Finetuning's draws: each item once per epoch in all ranks together, as in one process (the padding of the
    balanced sampler drew a training video twice per epoch on 2 ranks until 2026-12-01)."""
    single = shuffled_draws(31, seed=4)
    single.set_epoch(2)
    expected = list(single)
    ranks = [shuffled_draws(31, seed=4, rank=r, world_size=3) for r in range(3)]
    for s in ranks:
        s.set_epoch(2)
    assert [len(s) for s in ranks] == [11, 10, 10]
    assert [list(s) for s in ranks] == [expected[r::3] for r in range(3)]
    assert np.array_equal(ranks[2].global_sequence()[0], [v for v, _ in expected])
    ranks[1].set_start(4)
    assert list(ranks[1]) == expected[1::3][4:] and len(ranks[1]) == 6


def test_sampler_rejects_bad_input():
    with pytest.raises(ValueError, match="no labelled item"):
        ClusterBalancedSampler([np.full(10, -1)], epoch_size=5, seed=0)
    with pytest.raises(ValueError, match="rank"):
        ClusterBalancedSampler([np.zeros(10, int)], epoch_size=5, seed=0, rank=2, world_size=2)
    # label sets of different lengths cannot label the same videos: drawn without a word until 2026-12-03
    with pytest.raises(ValueError, match=r"lengths differ: \[10, 9\]"):
        ClusterBalancedSampler([np.zeros(10, int), np.zeros(9, int)], epoch_size=5, seed=0)
    stacked = np.stack([np.arange(10) % 2, np.arange(10) % 5])  # a 2-D array of sets: numpy's "truth value of an
    as_list = ClusterBalancedSampler(list(stacked), epoch_size=6, seed=0)  # array ... is ambiguous" until then
    assert list(ClusterBalancedSampler(stacked, epoch_size=6, seed=0)) == list(as_list)
    with pytest.raises(ValueError, match="at least one set"):
        ClusterBalancedSampler(np.zeros((0, 10), int), epoch_size=5, seed=0)


@pytest.mark.parametrize("run", [kmeans, sharded_kmeans])
def test_kmeans_refuses_duplicate_ids(run):
    """Until 2026-12-02 duplicate ids were taken: rows sharing an id share its key, so the rows drawn as initial
    centroids depended on their order (kmeans), or two landed in one centroid's slot and left another at zero
    (sharded_kmeans)."""
    x = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
    ids = np.arange(40)[::-1].copy()  # any order
    first = int(ids[smallest_keys(init_keys(ids, 5), 3)[0]])  # the first initial centroid's id, named twice
    ids[ids == (first + 1) % 40] = first
    ids[ids == (first + 2) % 40] = first + 40
    ids[ids == (first + 3) % 40] = first + 40
    with pytest.raises(ValueError, match=f"^point ids must be distinct: id {first} names more than one point$"):
        run(x, 3, seed=5, ids=ids)
    with pytest.raises(ValueError, match="^39 ids for 40 points$"):
        run(x, 3, seed=5, ids=np.arange(39))
    with pytest.raises(ValueError, match="non-negative integers"):
        run(x, 3, seed=5, ids=np.arange(40) - 1)
    assert run(x, 3, seed=5, ids=np.arange(40)[::-1].copy()).sizes.sum() == 40


def test_numpy_integer_arguments_are_taken_and_floats_refused():
    """k, seed and iters computed with numpy (e.g. ``labels.max() + 1``): until 2026-12-03 faiss refused a numpy k
    or iters with a SWIG TypeError, a numpy int64 seed overflowed (OverflowError), cluster_stats logged numpy values
    that json could not write, and a float k or epoch_size failed later with a TypeError."""
    import json

    x, _ = _blobs([30, 30, 30], dim=4, spread=5)
    one = np.int64(1)
    ref = kmeans(x, 3, seed=5, iters=4)
    for run in (kmeans, sharded_kmeans):
        got = run(x, 3 * one, seed=5 * one, iters=4 * one)
        np.testing.assert_array_equal(got.assignments, ref.assignments)
    assert balanced_assign(x, 3 * one, seed=5 * one, iters=4, sinkhorn_iters=3 * one).sizes.tolist() == [30] * 3
    json.dumps(cluster_stats(ref.assignments, 3 * one).to_dict())
    labels = ref.assignments.astype(np.int32)
    sampler = ClusterBalancedSampler([labels], epoch_size=9 * one, seed=-one, world_size=2 * one)
    sampler.set_epoch(one, round=2 * one)
    sampler.set_start(one)
    same = ClusterBalancedSampler([labels], epoch_size=9, seed=-1, world_size=2)
    same.set_epoch(1, round=2)
    same.set_start(1)
    assert list(sampler) == list(same) and len(sampler) == 4
    for call in (lambda: kmeans(x, 3.0, seed=0), lambda: sharded_kmeans(x, 3, seed=0.5),
                 lambda: cluster_stats(labels, 2.5), lambda: ClusterBalancedSampler([labels], 3.5, seed=0),
                 lambda: preprocess_features(x, dim=2.0), lambda: kmeans(x, 3, seed=0, iters=True)):  # fmt: skip
        with pytest.raises(ValueError, match="must be an integer"):
            call()
