"""k-means as DeepCluster runs it: faiss, a fixed number of iterations, every point used, nearest-centroid labels.

faiss runs on the GPU where this faiss build reports GPUs (faiss-gpu: ``faiss.get_num_gpus() > 0``), else on the
CPU (faiss-cpu). The initial centroids are drawn by :func:`init_keys`, the same rule the sharded k-means
(:mod:`xdc.clustering.sharded`) uses, so both start from the same points for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import faiss
import numpy as np

from xdc.clustering.arguments import integer
from xdc.clustering.features import largest_magnitude
from xdc.clustering.sampler import MASK63, mix63


LABEL_DTYPE = np.int32  # every video's pseudo-label, which every rank holds: 4 B per video (-1: none)


@dataclass
class KMeansResult:
    assignments: np.ndarray  # int64 (N,): cluster of each point (sharded k-means: of this rank's points)
    centroids: np.ndarray  # float32 (k, d)
    sizes: np.ndarray  # int64 (k,): points per cluster; 0 for a cluster that stayed empty
    loss: float  # sum of squared distances of the points to their assigned centroids
    iterations: int = 0  # Lloyd iterations run: fewer than asked once the assignment stopped changing


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 20, ids: np.ndarray | None = None) -> KMeansResult:
    """Cluster the rows of ``x`` (N, d) into ``k`` clusters with faiss, ``iters`` Lloyd iterations.

    faiss would otherwise train on a subsample of 256 points per centroid; DeepCluster clusters all of them.
    The initial centroids are k distinct rows drawn by ``seed``: those whose ``ids`` (distinct non-negative
    integers naming the rows, e.g. video indices; default: row numbers) have the smallest :func:`init_keys`.
    The draw does not depend on the order of the rows, nor on which process holds them. Duplicate ids are refused
    (:func:`check_ids`): their rows share a key, and which of them is drawn depended on the order of the rows.
    Clusters that become empty during training are re-seeded by faiss (it splits a large one); ``sizes``
    reports any still empty after the final assignment. faiss stops before ``iters`` once the objective stops
    decreasing (``iterations`` says how many ran). Points of any finite magnitude: see :func:`safe_exponent`.
    ``ValueError``: k < 2, fewer points than k, points without dimensions (N, 0), non-finite points, ``iters`` < 0,
    ``ids`` that are not one distinct non-negative integer per point, and k, seed or iters that are not integers
    (numpy ones are taken).
    """
    k, seed, iters = integer(k, "k"), integer(seed, "seed"), integer(iters, "iters")
    x = _as_points(x)
    n, d = x.shape
    check_k(n, k)
    check_iters(iters)
    check_finite(x)
    if ids is not None:
        check_ids(ids, n)
    e = safe_exponent(largest_magnitude(x))
    x = np.ldexp(x, -e) if e else x  # exact: the same labels, centroids and loss as unscaled points, scaled back
    init = x[smallest_keys(init_keys(np.arange(n) if ids is None else ids, seed), k)]
    km = faiss.Kmeans(
        d, k, niter=iters, seed=seed % 2**31, verbose=False, spherical=False, gpu=faiss.get_num_gpus() > 0,
        max_points_per_centroid=-(-n // k) + 1,  # never subsample
        min_points_per_centroid=1,  # few points per cluster is legitimate here; only silences faiss's warning
    )  # fmt: skip
    km.train(x, init_centroids=init)
    centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
    distances, assignments = _nearest(x, centroids)
    return KMeansResult(
        assignments=assignments,
        centroids=np.ldexp(centroids, e),
        sizes=np.bincount(assignments, minlength=k).astype(np.int64),
        loss=float(np.ldexp(distances.sum(dtype=np.float64), 2 * e)),
        iterations=len(km.obj),
    )


def assign_to_centroids(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index (int64) of the nearest centroid (Euclidean) of every row of ``x``. ``ValueError`` for no centroids
    or non-finite points or centroids, which faiss labelled -1 (as if unassigned)."""
    x, centroids = _as_points(x), np.ascontiguousarray(centroids, dtype=np.float32)
    if centroids.ndim != 2 or not len(centroids):
        raise ValueError(f"need at least one centroid (k, d), got shape {centroids.shape}")
    check_finite(x)
    check_finite(centroids, "centroids")
    e = safe_exponent(max(largest_magnitude(x), largest_magnitude(centroids)))
    return _nearest(np.ldexp(x, -e), np.ldexp(centroids, -e))[1] if e else _nearest(x, centroids)[1]


def safe_exponent(top: float) -> int:
    """The power of two e such that points of largest magnitude ``top`` divided by 2**e (exact) can be squared in
    float32 by faiss's and the torch search's distances: 0 (no scaling, no copy) for ``top`` within
    [2**-32, 2**32], else the one that brings ``top`` into [0.5, 1). Until 2026-12-03 points past about 1e18
    overflowed there (faiss's k-means aborted the process, the sharded faiss search raised an IndexError, the torch
    search and ``assign_to_centroids`` gave wrong labels) and points below about 1e-19 underflowed (every point in
    one cluster, the loss 0)."""
    return 0 if top == 0 or 2.0**-32 <= top <= 2.0**32 else int(np.frexp(top)[1])


def init_keys(ids: np.ndarray, seed: int) -> np.ndarray:
    """A pseudo-random key in [0, 2**63) per id, keyed by ``seed`` (int64); distinct ids get distinct keys.

    The k points with the smallest keys are k-means' initial centroids: a uniform draw of k distinct points
    that any process can evaluate for the ids it holds.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or (ids.size and ids.min() < 0):
        raise ValueError("point ids must be a 1-D array of non-negative integers")
    seed = integer(seed, "seed")
    key = np.random.SeedSequence([seed % 2**63, 0x6B6D65616E73]).generate_state(1, np.uint64)[0] & MASK63
    return mix63((key + ids.astype(np.uint64)) & MASK63).astype(np.int64)  # a bijection of the id


def check_ids(ids: np.ndarray, n: int) -> None:
    """``ValueError`` unless ``ids`` are ``n`` distinct non-negative integers (1-D); a duplicate is named."""
    problem = ids_problem(ids, n)
    if problem is None and (dup := first_duplicate(ids)) is not None:
        problem = duplicate_message(dup)
    if problem is not None:
        raise ValueError(problem)


def ids_problem(ids: np.ndarray, n: int) -> str | None:
    """What makes ``ids`` unfit to name ``n`` points, duplicates aside (:func:`first_duplicate`); None: nothing."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or (ids.size and ids.min() < 0):
        return "point ids must be a 1-D array of non-negative integers"
    if len(ids) != n:
        return f"{len(ids)} ids for {n} points"
    return None


def first_duplicate(ids: np.ndarray) -> int | None:
    """The smallest id that occurs more than once in ``ids`` (1-D integers), or None.

    Ids in increasing order cost one pass of comparisons (a 1-byte mask per id); others a sorted copy: 8 bytes per
    int64 id, 0.5 GB at 65M ids on a rank, and about 0.4 s per 10M ids on one CPU core (np.unique took 30 times as
    long).
    """
    ids = np.asarray(ids)
    if ids.size < 2 or (ids[1:] > ids[:-1]).all():
        return None
    ids = np.sort(ids)
    same = ids[1:] == ids[:-1]
    return int(ids[1 + same.argmax()]) if same.any() else None


def duplicate_message(dup: int) -> str:
    return f"point ids must be distinct: id {dup} names more than one point"


def smallest_keys(keys: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` smallest ``keys``, smallest first."""
    part = np.argpartition(keys, k - 1)[:k] if k < keys.size else np.arange(keys.size)
    return part[np.argsort(keys[part], kind="stable")]


def check_k(n: int, k: int) -> None:
    if k < 2:
        raise ValueError(f"k-means needs k >= 2 clusters, got k={k}")
    if n < k:
        raise ValueError(f"k-means needs at least as many points as clusters: {n} points for k={k}")


def check_iters(iters: int) -> None:
    if iters < 0:  # faiss ran none, the sharded k-means ran until nothing moved: neither is what was asked
        raise ValueError(f"k-means needs iters >= 0, got {iters}")


def check_finite(x: np.ndarray, what: str = "points") -> None:
    """``ValueError`` where ``x`` holds NaN or infinity, which faiss refused with a RuntimeError naming its C++
    source (k-means) or labelled -1 (search)."""
    if not all_finite(x):
        raise ValueError(f"{what} contain NaN or infinite values")


def all_finite(x: np.ndarray) -> bool:
    """Whether ``x`` holds no NaN or infinity; a block of rows at a time: no N x d mask."""
    return all(np.isfinite(x[start : start + _CHECK_ROWS]).all() for start in range(0, len(x), _CHECK_ROWS))


_CHECK_ROWS = 16384


def flat_index(d: int, gpu: int = 0) -> faiss.Index:
    """An exact L2 index: on GPU ``gpu`` where this faiss build has GPUs, else on the CPU."""
    index = faiss.IndexFlatL2(d)
    if faiss.get_num_gpus() > 0:  # only faiss-gpu builds; untested on the project's CPU-only CI
        index = faiss.index_cpu_to_gpu(_gpu_resources(), gpu, index)
    return index


@cache
def _gpu_resources() -> faiss.StandardGpuResources:
    return faiss.StandardGpuResources()  # one per process: it reserves scratch memory on creation


def _as_points(x: np.ndarray) -> np.ndarray:
    if x.ndim != 2:
        raise ValueError(f"points must be a 2-D array (N, d), got shape {x.shape}")
    if not x.shape[1]:  # faiss's k-means training died of SIGFPE on them, until 2026-12-02
        raise ValueError(f"points have no dimensions (shape {x.shape}): nothing to cluster by")
    return np.ascontiguousarray(x, dtype=np.float32)


def _nearest(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if centroids.ndim != 2 or centroids.shape[1] != x.shape[1]:
        raise ValueError(f"centroids of shape {centroids.shape} do not match points of dimension {x.shape[1]}")
    index = flat_index(x.shape[1])
    index.add(centroids)
    distances, labels = index.search(x, 1)
    return distances[:, 0], labels[:, 0].astype(np.int64)
