"""k-means as DeepCluster runs it: faiss, a fixed number of iterations, every point used, nearest-centroid labels."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np


@dataclass
class KMeansResult:
    assignments: np.ndarray  # int64 (N,): cluster of each point
    centroids: np.ndarray  # float32 (k, d)
    sizes: np.ndarray  # int64 (k,): points per cluster; 0 for a cluster that stayed empty
    loss: float  # sum of squared distances of the points to their assigned centroids


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 20) -> KMeansResult:
    """Cluster the rows of ``x`` (N, d) into ``k`` clusters with faiss, ``iters`` Lloyd iterations.

    faiss would otherwise train on a subsample of 256 points per centroid; DeepCluster clusters all of them.
    Clusters that become empty during training are re-seeded by faiss (it splits a large one); ``sizes``
    reports any still empty after the final assignment. The seed is reduced to faiss's 31-bit range.
    """
    x = _as_points(x)
    n, d = x.shape
    if k < 2:
        raise ValueError(f"k-means needs k >= 2 clusters, got k={k}")
    if n < k:
        raise ValueError(f"k-means needs at least as many points as clusters: {n} points for k={k}")
    km = faiss.Kmeans(
        d, k, niter=iters, seed=seed % 2**31, verbose=False, spherical=False,
        max_points_per_centroid=-(-n // k) + 1,  # never subsample
        min_points_per_centroid=1,  # few points per cluster is legitimate here; only silences faiss's warning
    )  # fmt: skip
    km.train(x)
    centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
    distances, assignments = _nearest(x, centroids)
    return KMeansResult(
        assignments=assignments,
        centroids=centroids,
        sizes=np.bincount(assignments, minlength=k).astype(np.int64),
        loss=float(distances.sum(dtype=np.float64)),
    )


def assign_to_centroids(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index (int64) of the nearest centroid (Euclidean) of every row of ``x``."""
    return _nearest(_as_points(x), np.ascontiguousarray(centroids, dtype=np.float32))[1]


def _as_points(x: np.ndarray) -> np.ndarray:
    if x.ndim != 2:
        raise ValueError(f"points must be a 2-D array (N, d), got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _nearest(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if centroids.ndim != 2 or centroids.shape[1] != x.shape[1]:
        raise ValueError(f"centroids of shape {centroids.shape} do not match points of dimension {x.shape[1]}")
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(centroids)
    distances, labels = index.search(x, 1)
    return distances[:, 0], labels[:, 0].astype(np.int64)
