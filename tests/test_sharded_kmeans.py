"""Sharded PCA-whitening and k-means: 2 real gloo processes with different, uneven shards against one process
holding every row, the single-process path against faiss from the same initial centroids, and the torch search
(what runs on a GPU without faiss-gpu; here on the CPU) against faiss's."""

import os

import faiss
import numpy as np
import pytest
import torch
import torch.distributed as dist

from conftest import run_two_ranks
from xdc.clustering import sharded
from xdc.clustering.features import (
    centred_scatter,
    centring_scale,
    largest_magnitude,
    pca_matrix,
    preprocess_features,
    project,
)
from xdc.clustering.kmeans import init_keys, kmeans, smallest_keys
from xdc.clustering.sharded import (
    assemble_labels,
    sharded_initial_centroids,
    sharded_kmeans,
    sharded_preprocess_features,
)
from xdc.config import load_config
from xdc.errors import UserError


def _mixture(n: int, dim: int, groups: int, seed: int = 0):
    """Anisotropic Gaussian groups: few directions dominate, as in encoder features."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, dim)) * 4
    x = centres[rng.integers(0, groups, n)] + rng.standard_normal((n, dim))
    return (x * np.linspace(0.5, 3, dim) + 2).astype(np.float32)


def _blobs_2d():
    """Three tight blobs of 200 points in 4-d, and initial centroids that leave two clusters empty: a
    duplicate of the first centre (ties go to the lower index) and a point far from everything."""
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0, 0, 0], [10, 0, 0, 0], [0, 10, 5, 0]], np.float32)
    y = (np.repeat(centres, 200, axis=0) + rng.standard_normal((600, 4))).astype(np.float32)
    init = np.concatenate([centres, centres[:1] + 1.5, centres[:1], [[500, 500, 500, 500]]]).astype(np.float32)
    return y, init


def _with_outlier(y: np.ndarray) -> np.ndarray:
    """``y`` with its first row 64 times as far from the origin."""
    y = y.copy()
    y[0] *= 64
    return y


N, D, DIM, K, SEED, ITERS = 2000, 80, 32, 16, 3, 15


def _split(rank: int) -> np.ndarray:
    """Uneven shards of shuffled ids: rank 0 holds 1300 rows, rank 1 700."""
    perm = np.random.default_rng(7).permutation(N)
    return np.sort(perm[:1300]) if rank == 0 else perm[1300:]


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    res = {}
    ids = _split(rank)
    z = sharded_preprocess_features(_mixture(N, D, 12)[ids], dim=DIM)
    same = preprocess_features(_mixture(N, D, 12), dim=DIM)[ids]  # k-means apart: the same rows however split
    r = sharded_kmeans(same, K, seed=SEED, iters=ITERS, ids=ids)
    res["mixture"] = (ids, z, r, assemble_labels(r.assignments, ids, N + 5))
    res["torch"] = sharded_kmeans(same, K, seed=SEED, iters=ITERS, ids=ids, search="torch")
    res["both"] = sharded_kmeans(z, K, seed=SEED, iters=ITERS, ids=ids).assignments  # PCA and k-means over ranks
    if rank == 0:  # rank 0 clusters every row by itself while rank 1 goes on to the next collective
        x = _mixture(N, D, 12)
        z_all = sharded_preprocess_features(x, dim=DIM, alone=True)
        res["alone"] = (z_all, sharded_kmeans(z_all, K, seed=SEED, iters=ITERS, alone=True, search="torch"))

    y, init = _blobs_2d()
    shard = y[:350] if rank == 0 else y[350:]  # default ids: positions in rank order
    res["empty"] = (sharded_kmeans(shard, len(init), seed=0, iters=5, init=init),
                    sharded_initial_centroids(shard, 6, seed=11))  # fmt: skip
    res["empty_rank"] = sharded_kmeans(y if rank == 0 else y[:0], 3, seed=2, iters=4)
    huge = np.ldexp(_with_outlier(y), 70)  # the outlier on rank 0: the ranks' own scales would differ
    res["huge"] = (sharded_kmeans(huge[:350] if rank == 0 else huge[350:], 5, seed=2, iters=4, search="torch"),
                   sharded_kmeans(huge if rank == 0 else huge[:0], 3, seed=0, iters=4, init=np.ldexp(init[:3], 70),
                                  search="torch"))  # fmt: skip

    bad = _mixture(300, D, 4)
    if rank == 1:
        bad[5, 3] = np.nan
    try:
        sharded_preprocess_features(bad, dim=DIM)
        res["nan"] = None
    except ValueError as e:
        res["nan"] = str(e)
    try:  # the sharded k-means of rows with NaN on one rank: until 2026-12-02 an IndexError there, none on rank 0
        sharded_kmeans(bad[:, :4], 3, seed=0, iters=2)
        res["nan_kmeans"] = None
    except ValueError as e:
        res["nan_kmeans"] = str(e)
    res["ids"] = _bad_ids(rank, same, shard)
    out[rank] = res
    dist.destroy_process_group()


def _bad_ids(rank: int, x: np.ndarray, y: np.ndarray) -> list[str | None]:
    """The errors of sharded_kmeans given bad ids on one rank or on both: until 2026-12-02 duplicates within a rank
    gave an initial centroid of zeros, across ranks one that was the sum of two rows, both without a word; ids of
    the wrong length raised on their rank alone (the other waited in the all-gather)."""
    errors = []
    ids = _split(rank)
    if rank == 1:
        ids = np.concatenate([ids[:-1], ids[:1]])  # its first id twice, its last lost
    both = np.arange(250)  # both ranks name their rows 0, 1, ...: the same candidates on both
    for rows, names in ((x, ids), (y[:250], both), (x, _split(rank)[rank:])):  # the last: one id short on rank 1
        try:
            sharded_kmeans(rows, K, seed=SEED, iters=1, ids=names)
            errors.append(None)
        except ValueError as e:
            errors.append(str(e))
    return errors


@pytest.fixture(scope="module")
def two_ranks() -> dict:
    return run_two_ranks(_worker)


def test_two_ranks_match_one_process(two_ranks):
    x = _mixture(N, D, 12)
    z_ref = sharded_preprocess_features(x, dim=DIM)
    ref = sharded_kmeans(z_ref, K, seed=SEED, iters=ITERS, ids=np.arange(N))
    z = np.zeros_like(z_ref)
    assignments, both = np.full(N, -1), np.full(N, -1)
    for rank in (0, 1):
        ids, z_rank, r, labels = two_ranks[rank]["mixture"]
        z[ids], assignments[ids], both[ids] = z_rank, r.assignments, two_ranks[rank]["both"]
        np.testing.assert_array_equal(r.centroids, two_ranks[0]["mixture"][2].centroids)  # bitwise, all ranks
        np.testing.assert_allclose(r.centroids, ref.centroids, atol=1e-6)
        np.testing.assert_array_equal(r.sizes, ref.sizes)
        assert r.loss == pytest.approx(ref.loss, rel=1e-6)  # float32 distances to near-identical centroids
        np.testing.assert_array_equal(labels[:N], ref.assignments)  # assembled on every rank
        assert (labels[N:] == -1).all()  # ids no rank holds
    # float32 scatter matrices (as faiss's and preprocess_features'), their rows added in another order: the
    # weakest whitened components move by about 1e-4 (until 2026-12-02 float64 ones: 1e-6, three times the time)
    np.testing.assert_allclose(z, z_ref, atol=1e-3)
    np.testing.assert_array_equal(assignments, ref.assignments)
    np.testing.assert_array_equal(both, ref.assignments)
    assert ref.sizes.sum() == N and (ref.sizes > 0).all()
    torch_labels = np.full(N, -1)
    for rank in (0, 1):  # the torch search over the same shards: the same k-means
        ids, r = two_ranks[rank]["mixture"][0], two_ranks[rank]["torch"]
        torch_labels[ids] = r.assignments
        np.testing.assert_allclose(r.centroids, ref.centroids, atol=1e-6)
        assert r.iterations == ref.iterations
    np.testing.assert_array_equal(torch_labels, ref.assignments)


def test_alone_clusters_every_row_inside_a_process_group(two_ranks):
    """alone=True on rank 0 only: no collective (rank 1 would have hung or mixed in its rows), one process's result."""
    z_all, r = two_ranks[0]["alone"]
    x = _mixture(N, D, 12)
    np.testing.assert_array_equal(z_all, sharded_preprocess_features(x, dim=DIM))
    ref = sharded_kmeans(z_all, K, seed=SEED, iters=ITERS, search="torch")
    np.testing.assert_array_equal(r.assignments, ref.assignments)
    np.testing.assert_array_equal(r.centroids, ref.centroids)
    assert "alone" not in two_ranks[1]


def test_sharded_pca_is_preprocess_features():
    """One process holding every row computes what preprocess_features does, to the bit (until 2026-12-02 a float64
    scatter matrix against faiss's float32 one: 1e-4 apart)."""
    x = _mixture(N, D, 12)
    ours = sharded_preprocess_features(x, dim=DIM)
    assert ours.shape == (N, DIM) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, preprocess_features(x, dim=DIM))
    square = x[:, :DIM]  # exactly dim columns: whitened, not reduced, as preprocess_features
    ours = sharded_preprocess_features(square, dim=DIM)
    np.testing.assert_array_equal(ours, preprocess_features(square, dim=DIM))
    assert np.abs(ours - square / np.linalg.norm(square, axis=1, keepdims=True)).max() > 0.1  # not normalised only
    small = x[:20]  # no more rows than dim: normalisation only, as preprocess_features
    np.testing.assert_allclose(sharded_preprocess_features(small, dim=DIM), preprocess_features(small, dim=DIM))
    rank_deficient = np.repeat(x[:, :10], 8, axis=1)  # 80 columns of rank 10: relative eps keeps it finite
    assert np.isfinite(sharded_preprocess_features(rank_deficient, dim=DIM)).all()
    many = _mixture(3 * 1000 * 8, 8, 12)  # past faiss's default sample of 1,000 rows per dimension: all rows still
    np.testing.assert_array_equal(sharded_preprocess_features(many, dim=4), preprocess_features(many, dim=4))


def test_the_gpus_pca_blocks_compute_the_cpus(monkeypatch):
    """What a CUDA device runs for the PCA (tests/test_cuda.py runs it there), here by torch on the CPU, in blocks
    (the last one partial): the scatter matrix and the projection that numpy computes."""
    monkeypatch.setattr(sharded, "_CHUNK", 300)
    x = _mixture(N, D, 12)
    scale = centring_scale(largest_magnitude(x))
    centre = (x.mean(axis=0, dtype=np.float64) * scale).astype(np.float32)
    scatter = centred_scatter(x, centre, scale)
    np.testing.assert_allclose(sharded._device_scatter(x, centre, scale, torch.device("cpu")), scatter,
                               atol=1e-6 * scatter.max())  # float32 sums in another order  # fmt: skip
    matrix = pca_matrix(scatter, DIM, whiten=True, eps=1e-5)
    np.testing.assert_allclose(sharded._device_project(x, centre, scale, torch.from_numpy(matrix)),
                               project(x, centre, scale, matrix), atol=1e-4)  # fmt: skip


def test_sharded_kmeans_is_faiss_kmeans_from_the_same_start():
    z = preprocess_features(_mixture(N, D, 12), dim=DIM)
    init = z[smallest_keys(init_keys(np.arange(N), SEED), K)]
    np.testing.assert_array_equal(sharded_initial_centroids(z, K, SEED), init)  # kmeans's draw
    km = faiss.Kmeans(DIM, K, niter=ITERS, max_points_per_centroid=N, min_points_per_centroid=1)
    km.train(z, init_centroids=init)
    assert sum(s["nsplit"] for s in km.iteration_stats) == 0  # no empty cluster: both are plain Lloyd here
    ours = sharded_kmeans(z, K, seed=SEED, iters=ITERS)
    np.testing.assert_allclose(ours.centroids, km.centroids, atol=1e-5)  # faiss sums in float32
    np.testing.assert_array_equal(ours.assignments, km.assign(z)[1])
    np.testing.assert_array_equal(ours.assignments, kmeans(z, K, seed=SEED, iters=ITERS).assignments)


def test_the_torch_search_is_the_faiss_search():
    z = preprocess_features(_mixture(N, D, 12), dim=DIM)
    by_faiss, by_torch = (sharded_kmeans(z, K, seed=SEED, iters=ITERS, search=s) for s in ("faiss", "torch"))
    np.testing.assert_array_equal(by_torch.assignments, by_faiss.assignments)
    np.testing.assert_allclose(by_torch.centroids, by_faiss.centroids, atol=1e-6)  # float64 sums, other order
    np.testing.assert_array_equal(by_torch.sizes, by_faiss.sizes)
    assert by_torch.iterations == by_faiss.iterations > 1
    assert by_torch.loss == pytest.approx(by_faiss.loss, rel=1e-5)
    y, init = _blobs_2d()  # two clusters go empty and are split: the same rule on both paths
    by_faiss, by_torch = (sharded_kmeans(y, 6, seed=0, iters=5, init=init, search=s) for s in ("faiss", "torch"))
    np.testing.assert_array_equal(by_torch.assignments, by_faiss.assignments)
    np.testing.assert_allclose(by_torch.centroids, by_faiss.centroids, atol=1e-6)
    # ties go to the lower index, as in faiss: the duplicate centroid (index 4 of the first centre) starts empty
    tied = sharded_kmeans(y, len(init), seed=0, iters=0, init=init, search="torch")
    assert tied.sizes[4] == 0 and tied.sizes[0] > 0
    with pytest.raises(ValueError, match="search must be"):
        sharded_kmeans(z, K, seed=SEED, search="cuda")


def test_empty_clusters_are_split_identically_on_every_rank(two_ranks):
    y, init = _blobs_2d()
    ref = sharded_kmeans(y, len(init), seed=0, iters=5, init=init)
    for rank in (0, 1):
        r, _ = two_ranks[rank]["empty"]
        np.testing.assert_array_equal(r.centroids, two_ranks[0]["empty"][0].centroids)
        np.testing.assert_allclose(r.centroids, ref.centroids, atol=1e-6)
        np.testing.assert_array_equal(r.sizes, ref.sizes)
    assert (ref.sizes > 0).all()  # both empty clusters were re-seeded and took points
    # one iteration by hand: clusters 4 (a duplicate) and 5 (far away) are empty; each takes half of the
    # largest cluster at that moment, its centroid perturbed by 1/1024 in alternating directions
    one = sharded_kmeans(y, len(init), seed=0, iters=1, init=init)
    labels = ((y[:, None] - init[None]) ** 2).sum(-1).argmin(1)
    means = np.stack([y[labels == c].astype(np.float64).mean(0) for c in range(4)])
    counts = np.bincount(labels, minlength=6)
    assert counts[4] == counts[5] == 0
    sign = np.array([1, -1, 1, -1]) / 1024
    first = int(np.argmax(counts))  # split for cluster 4
    expected = np.concatenate([means, np.zeros((2, 4))])
    expected[4], expected[first] = means[first] * (1 + sign), means[first] * (1 - sign)
    counts[4], counts[first] = counts[first] // 2, counts[first] - counts[first] // 2
    second = int(np.argmax(counts))  # split for cluster 5, from the updated counts
    expected[5], expected[second] = expected[second] * (1 + sign), expected[second] * (1 - sign)
    np.testing.assert_allclose(one.centroids, expected, rtol=1e-6)


def test_initial_centroids_do_not_depend_on_the_split(two_ranks):
    y, _ = _blobs_2d()
    single = sharded_initial_centroids(y, 6, seed=11)
    np.testing.assert_array_equal(single, y[smallest_keys(init_keys(np.arange(600), 11), 6)])
    for rank in (0, 1):
        np.testing.assert_array_equal(two_ranks[rank]["empty"][1], single)


def test_a_rank_without_rows_takes_part(two_ranks):
    y, _ = _blobs_2d()
    ref = sharded_kmeans(y, 3, seed=2, iters=4)
    np.testing.assert_array_equal(two_ranks[0]["empty_rank"].assignments, ref.assignments)
    assert two_ranks[1]["empty_rank"].assignments.shape == (0,)
    np.testing.assert_array_equal(two_ranks[1]["empty_rank"].centroids, ref.centroids)


def test_points_of_extreme_magnitude_are_scaled_alike_on_every_rank(two_ranks):
    """Points of 1e21 (2**70), split over two ranks (one without rows in the second run): until 2026-12-03 the torch
    search's float32 squared distances overflowed (wrong labels, NaN centroids); now every rank divides by the same
    power of two, from the largest magnitude of all ranks, and the result is that of unit points, scaled back."""
    y, init = _blobs_2d()
    y = _with_outlier(y)
    for run, ref in enumerate((sharded_kmeans(y, 5, seed=2, iters=4), sharded_kmeans(y, 3, seed=0, iters=4,
                                                                                     init=init[:3]))):  # fmt: skip
        got = [two_ranks[rank]["huge"][run] for rank in (0, 1)]
        np.testing.assert_array_equal(np.concatenate([g.assignments for g in got]), ref.assignments)
        for g in got:
            np.testing.assert_allclose(np.ldexp(g.centroids, -70), ref.centroids, rtol=1e-6)
            assert np.ldexp(g.loss, -140) == pytest.approx(ref.loss, rel=1e-6)


def test_nan_on_one_rank_raises_on_every_rank(two_ranks):
    for rank in (0, 1):
        assert "NaN" in two_ranks[rank]["nan"]
        assert two_ranks[rank]["nan_kmeans"] == "points contain NaN or infinite values"


def test_bad_ids_raise_on_every_rank(two_ranks):
    dup = int(_split(1)[0])
    first = smallest_keys(init_keys(np.arange(250), SEED), K)
    for rank in (0, 1):
        within, across, short = two_ranks[rank]["ids"]
        assert within == f"point ids must be distinct: id {dup} names more than one point"
        assert across == f"point ids must be distinct across ranks: id {first.min()} names a row on more than one rank"
    assert two_ranks[1]["ids"][2] == f"{len(_split(1)) - 1} ids for {len(_split(1))} points"
    assert two_ranks[0]["ids"][2].startswith("another rank's point ids are not")


def test_single_process_is_deterministic_and_checks_k():
    z = preprocess_features(_mixture(500, 16, 5), dim=8)
    a, b = sharded_kmeans(z, 8, seed=4, iters=6), sharded_kmeans(z, 8, seed=4, iters=6)
    np.testing.assert_array_equal(a.assignments, b.assignments)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.loss == b.loss
    assert not np.array_equal(a.assignments, sharded_kmeans(z, 8, seed=5, iters=6).assignments)
    with pytest.raises(ValueError, match="k >= 2"):
        sharded_kmeans(z, 1, seed=0)
    with pytest.raises(ValueError, match="500 points for k=501"):
        sharded_kmeans(z, 501, seed=0)
    with pytest.raises(ValueError, match="init must be"):
        sharded_kmeans(z, 8, seed=0, init=z[:7])


def test_cluster_on_is_validated():
    assert load_config(None, ["train.cluster_on=shards"]).train.cluster_on == "shards"
    with pytest.raises(UserError, match="'rank0' or 'shards'"):
        load_config(None, ["train.cluster_on=everywhere"])
    assert load_config(None, ["train.cluster_on=shards", "train.assign=sinkhorn"]).train.assign == "sinkhorn"


def test_it_stops_at_a_fixed_point():
    y, init = _blobs_2d()  # three tight blobs: the assignment settles within a few iterations
    result = sharded_kmeans(y, 3, seed=0, iters=50, init=init[:3])
    assert 1 <= result.iterations < 50
    # another Lloyd step by hand changes neither the labels nor the centroids
    labels = ((y[:, None] - result.centroids[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(labels, result.assignments)
    means = np.stack([y[labels == c].astype(np.float64).mean(0) for c in range(3)])
    np.testing.assert_allclose(means, result.centroids, atol=1e-6)
    assert sharded_kmeans(y, 3, seed=0, iters=0, init=init[:3]).iterations == 0
