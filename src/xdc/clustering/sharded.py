"""PCA-whitening and k-means of features sharded over ranks: every rank holds only its own rows.

Beyond one machine's memory (tens of millions of clips) the features cannot be gathered anywhere. Both steps
need only sums over the rows, so every rank reduces its rows to small statistics that are all-reduced:

- PCA: the row count, the column sums and the D x D scatter matrix (float64); rank 0 eigendecomposes it and
  broadcasts the projection, so every rank applies exactly the same one to its rows.
- Lloyd k-means: every rank assigns its rows to the nearest centroid (faiss flat L2 search, on the GPU where
  faiss has GPUs) and the per-cluster sums and counts are all-reduced (float64); every rank then computes the
  same centroids from the same numbers. Empty clusters are re-seeded by splitting the largest one, the same
  way on every rank.

Nothing of size N crosses the network except the final labels (:func:`assemble_labels`). Everything works
without a process group (one process holding every row) and then matches the single-process functions:
:func:`sharded_preprocess_features` is ``preprocess_features``, and :func:`sharded_kmeans` starts from the same
points as ``kmeans`` for the same seed and ids. Collectives use the default group; pass ``device`` = the rank's
CUDA device under NCCL (tensors must live there), the CPU under gloo.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch
import torch.distributed as dist
from scipy.sparse import csr_matrix

from xdc.clustering.kmeans import LABEL_DTYPE, KMeansResult, check_k, flat_index, init_keys, smallest_keys

_CHUNK = 16384  # rows per float64 block: bounds the temporary memory to ~CHUNK x D x 8 bytes
_SPLIT_EPS = 1 / 1024  # relative perturbation of a split centroid (faiss uses the same)
_NO_KEY = torch.iinfo(torch.int64).max  # padding of a rank's candidate keys: larger than every real key


def sharded_preprocess_features(
    x: np.ndarray, dim: int = 256, whiten: bool = True, eps: float = 1e-5, device: torch.device | str = "cpu"
) -> np.ndarray:
    """``preprocess_features`` of the rows of all ranks together; each rank passes and gets back its own rows.

    Same semantics: PCA to ``dim`` (whitened, ``eps`` relative to the largest eigenvalue) only when the
    features have more dimensions and the ranks together more rows than ``dim``, then unit L2 rows; float32.
    Non-finite values on any rank raise ``ValueError`` on every rank (none is left waiting in a collective).
    Whitened components have unit variance here (faiss's have 1/N); the normalisation removes the difference.
    """
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D array (N, D), got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    device = torch.device(device)
    n, bad = _all_sum(torch.tensor([len(x), int(not np.isfinite(x).all())], device=device)).tolist()
    if bad:
        raise ValueError("features contain NaN or infinite values (has the encoder diverged?)")
    out = _apply(x, _projection(x, n, dim, whiten, eps, device)) if x.shape[1] > dim and n > dim else x.copy()
    faiss.normalize_L2(out)  # in place, as preprocess_features
    return out


def sharded_kmeans(
    x: np.ndarray, k: int, seed: int, iters: int = 20, *, ids: np.ndarray | None = None,
    init: np.ndarray | None = None, device: torch.device | str = "cpu",
) -> KMeansResult:  # fmt: skip
    """Lloyd k-means of the rows of all ranks together, ``iters`` iterations, then a final assignment.

    Stops early, with the same result, once an iteration moves no point to another cluster (the centroids
    would not change any more); ``iterations`` counts the centroid updates made.

    ``ids``: distinct non-negative integers naming this rank's rows across all ranks (video indices); default:
    the row's position in the concatenation of the ranks' rows in rank order. The initial centroids are
    ``init`` (k, d), the same on every rank, or else the rows with the smallest ``init_keys(ids, seed)`` over
    all ranks, as ``kmeans`` draws them. Returns this rank's ``assignments``; ``centroids``, ``sizes`` and
    ``loss`` are global and identical on every rank.
    """
    if x.ndim != 2:
        raise ValueError(f"points must be a 2-D array (N, d), got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    device = torch.device(device)
    counts = _rank_counts(len(x), device)
    check_k(int(counts.sum()), k)  # the same global numbers everywhere: every rank raises, or none does
    if init is None:
        centroids = sharded_initial_centroids(x, k, seed, ids=ids, device=device, counts=counts)
    else:
        centroids = np.ascontiguousarray(init, dtype=np.float32)
        if centroids.shape != (k, x.shape[1]):
            raise ValueError(f"init must be {k} x {x.shape[1]} centroids, got shape {centroids.shape}")
    index = flat_index(x.shape[1], gpu=(device.index or 0) if device.type == "cuda" else 0)
    previous, done = None, 0
    while done < iters:
        distances, assignments = _nearest(index, x, centroids)
        sums, moved = _cluster_sums(x, assignments, previous, k, device)
        if moved == 0:  # no point changed cluster: the update would give the same centroids, a fixed point
            break
        centroids, previous, done = _update(sums), assignments, done + 1
    else:
        distances, assignments = _nearest(index, x, centroids)
    tail = torch.zeros(k + 1, dtype=torch.float64, device=device)  # sizes, then the loss: one all-reduce
    tail[:k] = torch.from_numpy(np.bincount(assignments, minlength=k).astype(np.float64)).to(device)
    tail[k] = float(distances.sum(dtype=np.float64))
    tail = _all_sum(tail).cpu().numpy()
    return KMeansResult(assignments=assignments, centroids=centroids, sizes=tail[:k].astype(np.int64),
                        loss=float(tail[k]), iterations=done)  # fmt: skip


def sharded_initial_centroids(
    x: np.ndarray, k: int, seed: int, ids: np.ndarray | None = None, device: torch.device | str = "cpu",
    counts: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """The k rows of all ranks with the smallest ``init_keys(ids, seed)``, smallest first, on every rank.

    No rank sees another's rows: each offers the keys of its k best candidates (an all-gather of W x k
    int64), every rank finds the same global k smallest, and each owner writes its chosen rows into a zeroed
    k x d buffer that is summed over the ranks. ``counts`` (rows per rank) saves a collective if known.
    """
    device = torch.device(device)
    if ids is None:
        rank = dist.get_rank() if _distributed() else 0
        counts = _rank_counts(len(x), device) if counts is None else counts
        ids = int(counts[:rank].sum()) + np.arange(len(x))
    if len(ids) != len(x):
        raise ValueError(f"{len(ids)} ids for {len(x)} rows")
    keys = init_keys(ids, seed)
    mine = smallest_keys(keys, min(k, len(x)))
    offered = torch.full((k,), _NO_KEY, dtype=torch.int64, device=device)
    offered[: mine.size] = torch.from_numpy(keys[mine]).to(device)
    best = np.sort(torch.cat(_all_gather(offered)).cpu().numpy())[:k]
    slot = np.searchsorted(best, keys[mine])  # keys are distinct: a key among the best sits at its own slot
    chosen = slot < k
    chosen[chosen] = best[slot[chosen]] == keys[mine[chosen]]
    buffer = torch.zeros(k, x.shape[1], dtype=torch.float32, device=device)
    buffer[torch.from_numpy(slot[chosen])] = torch.from_numpy(x[mine[chosen]]).to(device)
    return _all_sum(buffer).cpu().numpy()  # adding zeros is exact: each row arrives unchanged


def assemble_labels(
    labels: np.ndarray, ids: np.ndarray, total: int, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Every rank's ``labels`` of rows ``ids`` (int64 in [0, total)) as one ``LABEL_DTYPE`` (int32) vector of
    length ``total`` on every rank, -1 where no rank had the id. An all-reduce (max) of ``total`` int32: 4 bytes
    per id."""
    full = torch.full((total,), -1, dtype=torch.int32, device=torch.device(device))
    full[torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(full.device)] = torch.from_numpy(
        np.asarray(labels, dtype=LABEL_DTYPE)
    ).to(full.device)
    if _distributed():
        dist.all_reduce(full, op=dist.ReduceOp.MAX)  # each id is owned by one rank; the others hold -1
    return full.cpu().numpy()


def global_count(n: int, device: torch.device | str = "cpu") -> int:
    """``n`` summed over the ranks."""
    return int(_all_sum(torch.tensor([n], device=torch.device(device))).item())


# --- PCA ------------------------------------------------------------------------------------------------------


def _projection(x: np.ndarray, n: int, dim: int, whiten: bool, eps: float, device: torch.device) -> np.ndarray:
    """(dim, D + 1) float64: the PCA matrix A, then the bias column b = -A mean; rank 0's, on every rank."""
    d = x.shape[1]
    stats = torch.zeros(d + 1, d, dtype=torch.float64, device=device)  # row 0: column sums; rows 1..D: scatter
    for start in range(0, len(x), _CHUNK):
        block = torch.from_numpy(x[start : start + _CHUNK]).to(device, torch.float64)
        stats[0] += block.sum(0)
        stats[1:].addmm_(block.T, block)
    stats = _all_sum(stats).cpu().numpy()
    packed = np.zeros((dim, d + 1))
    if not _distributed() or dist.get_rank() == 0:
        mean = stats[0] / n
        values, vectors = np.linalg.eigh(stats[1:] / n - np.outer(mean, mean))  # ascending
        values, vectors = values[::-1][:dim], vectors[:, ::-1][:, :dim]
        matrix = vectors.T
        if whiten:  # relative eps as in preprocess_features; clipping float noise below zero changes nothing
            top = float(values[0])
            matrix = matrix / np.sqrt(np.maximum(values, 0.0) + (eps * top if top > 0 else 1.0))[:, None]
        packed[:, :d], packed[:, d] = matrix, -matrix @ mean
    if _distributed():  # degenerate eigenvalues leave the basis to LAPACK: one rank's choice for every rank
        shared = torch.from_numpy(packed).to(device)
        dist.broadcast(shared, 0)
        packed = shared.cpu().numpy()
    return packed


def _apply(x: np.ndarray, packed: np.ndarray) -> np.ndarray:
    matrix, bias = packed[:, :-1].T.astype(np.float32), packed[:, -1].astype(np.float32)
    out = np.empty((len(x), len(bias)), dtype=np.float32)
    for start in range(0, len(x), _CHUNK):
        out[start : start + _CHUNK] = x[start : start + _CHUNK] @ matrix + bias
    return out


# --- Lloyd ----------------------------------------------------------------------------------------------------


def _nearest(index, x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not len(x):  # a rank without rows still takes part in every collective
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    index.reset()
    index.add(centroids)
    distances, labels = index.search(x, 1)
    return distances[:, 0], labels[:, 0].astype(np.int64)


def _cluster_sums(
    x: np.ndarray, assignments: np.ndarray, previous: np.ndarray | None, k: int, device: torch.device
) -> tuple[np.ndarray, int]:
    """(k, d + 1) float64 over all ranks: per-cluster sums of the rows, then the counts; and the number of
    points (over all ranks) whose cluster differs from ``previous`` (-1 without one). One all-reduce.

    A sparse k x rows membership matrix times the rows: scipy multiplies in float64, in row order, about ten
    times faster here than torch's index_add_/scatter_add_ on the CPU.
    """
    d = x.shape[1]
    sums = np.zeros((k + 1, d + 1))  # the last row carries the count of moved points
    for start in range(0, len(x), _CHUNK):
        labels = assignments[start : start + _CHUNK]
        members = csr_matrix((np.ones(len(labels)), (labels, np.arange(len(labels)))), shape=(k, len(labels)))
        sums[:k, :d] += members @ x[start : start + _CHUNK]
    sums[:k, d] = np.bincount(assignments, minlength=k)
    sums[k, 0] = -1 if previous is None else np.count_nonzero(assignments != previous)
    sums = _all_sum(torch.from_numpy(sums).to(device)).cpu().numpy()
    return sums[:k], -1 if previous is None else int(sums[k, 0])


def _update(sums: np.ndarray) -> np.ndarray:
    """Centroids (float32) from the global sums and counts; each empty cluster takes half of the largest.

    Like faiss, the empty cluster copies the centroid of the one it splits, and the two move apart by a
    relative 1/1024 in alternating directions per dimension; the count is split in two for the next choice.
    Unlike faiss, which draws the cluster to split at random, the largest is taken (lowest index on ties): a
    choice every rank makes identically from the same global counts, with no shared random state.
    """
    centroids, counts = sums[:, :-1].copy(), sums[:, -1].copy()
    filled = counts > 0
    centroids[filled] /= counts[filled, None]
    sign = np.where(np.arange(centroids.shape[1]) % 2 == 0, _SPLIT_EPS, -_SPLIT_EPS)
    for empty in np.flatnonzero(~filled):
        largest = int(np.argmax(counts))
        centroids[empty] = centroids[largest] * (1 + sign)
        centroids[largest] *= 1 - sign
        counts[empty] = counts[largest] // 2
        counts[largest] -= counts[empty]
    return centroids.astype(np.float32)


# --- collectives (no-ops without a process group) --------------------------------------------------------------


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_sum(t: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(t)  # ring/tree reductions hand every rank the same bits of the result
    return t


def _all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    if not _distributed():
        return [t]
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return out


def _rank_counts(n: int, device: torch.device) -> np.ndarray:
    """Rows per rank (int64, W), on every rank."""
    if not _distributed():
        return np.array([n], dtype=np.int64)
    counts = torch.zeros(dist.get_world_size(), dtype=torch.int64, device=device)
    counts[dist.get_rank()] = n
    return _all_sum(counts).cpu().numpy()
