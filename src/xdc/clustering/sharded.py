"""PCA-whitening and k-means of features sharded over ranks: every rank holds only its own rows.

Beyond one machine's memory (tens of millions of clips) the features cannot be gathered anywhere. Both steps
need only sums over the rows, so every rank reduces its rows to small statistics that are all-reduced:

- PCA: the row count, the largest magnitude and the column sums, then the D x D scatter matrix of the rows
  centred on the mean of all ranks (float32, as ``preprocess_features`` sums it); rank 0 eigendecomposes it and
  broadcasts the projection, so every rank applies exactly the same one to its rows.
- Lloyd k-means: every rank assigns its rows to the nearest centroid and the per-cluster sums and counts are
  all-reduced (float64); every rank then computes the same centroids from the same numbers. Empty clusters are
  re-seeded by splitting the largest one, the same way on every rank. The search is faiss's flat L2 search
  (on the GPU where faiss has GPUs), or torch matrix products on a CUDA device when faiss has none
  (:func:`torch_search`): faiss-gpu is not needed to cluster on the GPU.

Nothing of size N crosses the network except the final labels (:func:`assemble_labels`). Everything works
without a process group (one process holding every row) and then matches the single-process functions:
:func:`sharded_preprocess_features` is ``preprocess_features``, and :func:`sharded_kmeans` starts from the same
points as ``kmeans`` for the same seed and ids. ``alone=True`` does the same inside a process group: this
process holds every row and calls no collective (rank 0 clustering by itself). Collectives use the default
group; pass ``device`` = the rank's CUDA device under NCCL (tensors must live there), the CPU under gloo.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch
import torch.distributed as dist
from scipy.sparse import csr_matrix

from xdc.clustering.arguments import integer
from xdc.clustering.features import (
    centred_scatter,
    centring_scale,
    check_eps,
    check_features_shape,
    largest_magnitude,
    pca_matrix,
    project,
    scale_to_one,
)
from xdc.clustering.kmeans import (
    LABEL_DTYPE,
    KMeansResult,
    all_finite,
    check_finite,
    check_iters,
    check_k,
    duplicate_message,
    first_duplicate,
    flat_index,
    ids_problem,
    init_keys,
    safe_exponent,
    smallest_keys,
)

_CHUNK = 16384  # rows per block: bounds the temporaries to ~CHUNK x max(D, k) x 8 bytes
_SPLIT_EPS = 1 / 1024  # relative perturbation of a split centroid (faiss uses the same)
_NO_KEY = torch.iinfo(torch.int64).max  # padding of a rank's candidate keys: larger than every real key


def torch_search(device: torch.device | str) -> bool:
    """Whether ``sharded_kmeans(search="auto")`` on ``device`` searches with torch: on a CUDA device when this
    faiss build has no GPUs (faiss-cpu). faiss's own GPU search is used where it has them, the CPU's otherwise."""
    return torch.device(device).type == "cuda" and faiss.get_num_gpus() == 0


def sharded_preprocess_features(
    x: np.ndarray, dim: int = 256, whiten: bool = True, eps: float = 1e-5, device: torch.device | str = "cpu",
    alone: bool = False,
) -> np.ndarray:  # fmt: skip
    """``preprocess_features`` of the rows of all ranks together; each rank passes and gets back its own rows.

    Same semantics: PCA to ``dim`` (whitened, ``eps`` relative to the largest eigenvalue) only when the
    features have more dimensions and the ranks together more rows than ``dim``, then unit L2 rows; float32.
    Non-finite values or rows without dimensions (N, 0) on any rank, ``dim`` < 1 or an ``eps`` that is not finite
    and > 0 raise ``ValueError`` on every rank (none is left waiting in a collective). On the CPU one process
    holding every row (or ``alone``) computes exactly what ``preprocess_features`` does; over ranks the scatter
    matrix adds the rows in another order (float32 rounding). On a CUDA ``device`` the scatter matrix and the
    projection are computed there.
    """
    check_features_shape(x, dim)
    check_eps(eps)  # the same eps on every rank: every rank raises
    x = np.ascontiguousarray(x, dtype=np.float32)
    device, ranks = torch.device(device), Ranks(alone)
    flags = [len(x), int(not np.isfinite(x).all()), int(len(x) > 0 and not x.shape[1])]
    n, bad, flat = ranks.sum(torch.tensor(flags, device=device)).tolist()
    if bad:
        raise ValueError("features contain NaN or infinite values (has the encoder diverged?)")
    if flat:
        raise ValueError(f"features have no dimensions (shape {x.shape}): nothing to cluster by")
    if x.shape[1] >= dim and n > dim:
        out = scale_to_one(_pca(x, n, dim, whiten, eps, device, ranks))
    else:
        out = scale_to_one(x.copy())  # each rank its own scale: rows are normalised one by one
    faiss.normalize_L2(out)  # in place, as preprocess_features
    return out


def sharded_kmeans(
    x: np.ndarray, k: int, seed: int, iters: int = 20, *, ids: np.ndarray | None = None,
    init: np.ndarray | None = None, device: torch.device | str = "cpu", search: str = "auto", alone: bool = False,
) -> KMeansResult:  # fmt: skip
    """Lloyd k-means of the rows of all ranks together, ``iters`` iterations, then a final assignment.

    Stops early, with the same result, once an iteration moves no point to another cluster (the centroids
    would not change any more); ``iterations`` counts the centroid updates made.

    ``ids``: distinct non-negative integers naming this rank's rows across all ranks (video indices); default:
    the row's position in the concatenation of the ranks' rows in rank order. The initial centroids are
    ``init`` (k, d), the same on every rank, or else the rows with the smallest ``init_keys(ids, seed)`` over
    all ranks, as ``kmeans`` draws them. Returns this rank's ``assignments``; ``centroids``, ``sizes`` and
    ``loss`` are global and identical on every rank.

    ``search``: ``"faiss"`` (flat L2 search; faiss's GPU if it has one), ``"torch"`` (matrix products on
    ``device``) or ``"auto"`` (:func:`torch_search` decides). Both give the same labels up to float rounding.

    Points of any finite magnitude, scaled as ``kmeans`` scales them (:func:`xdc.clustering.kmeans.safe_exponent`).
    ``ValueError``, on every rank: as ``kmeans`` (k < 2, fewer points than k, non-finite points or ``init``,
    points without dimensions, ``iters`` < 0, ``ids`` that are not one distinct non-negative integer per row:
    duplicates across ranks only where both rows are candidates for the initial centroids, see
    :func:`check_ids_on_ranks`), k, seed or iters that are not integers.
    """
    k, seed, iters = integer(k, "k"), integer(seed, "seed"), integer(iters, "iters")  # the same on every rank
    if x.ndim != 2:
        raise ValueError(f"points must be a 2-D array (N, d), got shape {x.shape}")
    if not x.shape[1]:  # every rank's points have the same d: every rank raises
        raise ValueError(f"points have no dimensions (shape {x.shape}): nothing to cluster by")
    if search not in ("auto", "faiss", "torch"):
        raise ValueError(f"search must be 'auto', 'faiss' or 'torch', not {search!r}")
    check_iters(iters)  # else the loop ran until no point moved
    x = np.ascontiguousarray(x, dtype=np.float32)
    device, ranks = torch.device(device), Ranks(alone)
    counts = ranks.counts(len(x), device)
    check_k(int(counts.sum()), k)  # the same global numbers everywhere: every rank raises, or none does
    if global_count(int(not all_finite(x)), device, ranks):  # faiss's search failed on NaN, torch's kept it
        raise ValueError("points contain NaN or infinite values")
    top = ranks.max(torch.tensor(largest_magnitude(x), dtype=torch.float64, device=device)).item()
    if init is None:
        e = safe_exponent(top)  # the same on every rank; scaled back at the end, as kmeans does
        x = np.ldexp(x, -e) if e else x
        centroids = _initial_centroids(x, k, seed, ids, device, ranks, counts)
    else:
        centroids = np.ascontiguousarray(init, dtype=np.float32)
        if centroids.shape != (k, x.shape[1]):
            raise ValueError(f"init must be {k} x {x.shape[1]} centroids, got shape {centroids.shape}")
        check_finite(centroids, "init centroids")  # the same on every rank
        e = safe_exponent(max(top, largest_magnitude(centroids)))
        x, centroids = (np.ldexp(x, -e), np.ldexp(centroids, -e)) if e else (x, centroids)
    use_torch = search == "torch" or (search == "auto" and torch_search(device))
    rows = _TorchRows(x, device) if use_torch else _FaissRows(x, device)
    done = 0
    while True:
        moved = rows.assign(centroids)
        if done == iters:
            break
        stats = torch.zeros(k + 1, x.shape[1] + 1, dtype=torch.float64, device=device)
        stats[:k] = rows.sums(k)
        stats[k, 0] = moved
        stats = ranks.sum(stats).cpu().numpy()  # one all-reduce per iteration
        if stats[k, 0] == 0:  # no point changed cluster: the update would give the same centroids, a fixed point
            break
        centroids, done = _update(stats[:k]), done + 1
    assignments, loss = rows.result()
    tail = torch.zeros(k + 1, dtype=torch.float64, device=device)  # sizes, then the loss: one all-reduce
    tail[:k] = torch.from_numpy(np.bincount(assignments, minlength=k).astype(np.float64)).to(device)
    tail[k] = loss
    tail = ranks.sum(tail).cpu().numpy()
    return KMeansResult(assignments=assignments, centroids=np.ldexp(centroids, e), sizes=tail[:k].astype(np.int64),
                        loss=float(np.ldexp(tail[k], 2 * e)), iterations=done)  # fmt: skip


def sharded_initial_centroids(
    x: np.ndarray, k: int, seed: int, ids: np.ndarray | None = None, device: torch.device | str = "cpu",
    alone: bool = False,
) -> np.ndarray:  # fmt: skip
    """The k rows of all ranks with the smallest ``init_keys(ids, seed)``, smallest first, on every rank.

    No rank sees another's rows: each offers the keys of its k best candidates (an all-gather of W x k
    int64), every rank finds the same global k smallest, and each owner writes its chosen rows into a zeroed
    k x d buffer that is summed over the ranks.
    """
    device, ranks = torch.device(device), Ranks(alone)
    return _initial_centroids(x, k, seed, ids, device, ranks, ranks.counts(len(x), device))


def _initial_centroids(
    x: np.ndarray, k: int, seed: int, ids: np.ndarray | None, device: torch.device, ranks: Ranks,
    counts: np.ndarray,
) -> np.ndarray:  # fmt: skip
    if ids is None:
        ids = int(counts[: ranks.rank].sum()) + np.arange(len(x))
    check_ids_on_ranks(ids, len(x), device, ranks)
    keys = init_keys(ids, seed)
    mine = smallest_keys(keys, min(k, len(x)))
    offered = torch.full((2, k), _NO_KEY, dtype=torch.int64, device=device)  # the candidates' keys, then their ids
    offered[0, : mine.size] = torch.from_numpy(keys[mine]).to(device)
    offered[1, : mine.size] = torch.from_numpy(np.asarray(ids)[mine].astype(np.int64)).to(device)
    candidates = torch.stack(ranks.gather(offered), 1).flatten(1).cpu().numpy()
    order = np.argsort(candidates[0], kind="stable")
    keys_in_order = candidates[0, order]
    # two ranks offering one key (one id) would add both rows into one centroid and leave another zero; every rank
    # sees the same candidates, so all raise together. Duplicates across ranks outside the candidates go unseen.
    twice = (keys_in_order[1:] == keys_in_order[:-1]) & (keys_in_order[1:] != _NO_KEY)
    if twice.any():
        dup = int(candidates[1, order][1:][twice].min())
        raise ValueError(f"point ids must be distinct across ranks: id {dup} names a row on more than one rank")
    best = keys_in_order[:k]
    slot = np.searchsorted(best, keys[mine])  # keys are distinct: a key among the best sits at its own slot
    chosen = slot < k
    chosen[chosen] = best[slot[chosen]] == keys[mine[chosen]]
    buffer = torch.zeros(k, x.shape[1], dtype=torch.float32, device=device)
    buffer[torch.from_numpy(slot[chosen])] = torch.from_numpy(x[mine[chosen]]).to(device)
    return ranks.sum(buffer).cpu().numpy()  # adding zeros is exact: each row arrives unchanged


def check_ids_on_ranks(ids: np.ndarray, n: int, device: torch.device, ranks: Ranks) -> None:
    """``kmeans``'s check of this rank's ``ids`` for its ``n`` rows (:func:`check_ids`), raised on every rank.

    A rank with bad ids says why; the others say that another rank's ids are bad. Duplicates within a rank are
    named on every rank (the smallest over the ranks: an all-reduce of two int64). Duplicates across ranks are
    only caught among the candidates for the initial centroids (:func:`_initial_centroids`): a full check would
    move every rank's ids.
    """
    problem = ids_problem(ids, n)
    dup = first_duplicate(ids) if problem is None else None
    none = torch.iinfo(torch.int64).min  # the max of the negated duplicates is the smallest duplicate
    flags = torch.tensor([int(problem is not None), none if dup is None else -dup], device=device)
    bad, smallest = ranks.max(flags).tolist()
    if problem is not None:
        raise ValueError(problem)
    if bad:
        raise ValueError("another rank's point ids are not one distinct non-negative integer per row (its error "
                         "says which)")  # fmt: skip
    if smallest != none:
        raise ValueError(duplicate_message(-smallest))


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
    if Ranks().active:
        dist.all_reduce(full, op=dist.ReduceOp.MAX)  # each id is owned by one rank; the others hold -1
    return full.cpu().numpy()


def global_count(n: int, device: torch.device | str = "cpu", ranks: Ranks | None = None) -> int:
    """``n`` summed over the ranks (of ``ranks``; default: the default group's)."""
    return int((ranks or Ranks()).sum(torch.tensor([n], device=torch.device(device))).item())


# --- PCA ------------------------------------------------------------------------------------------------------


def _pca(
    x: np.ndarray, n: int, dim: int, whiten: bool, eps: float, device: torch.device, ranks: Ranks
) -> np.ndarray:
    """This rank's rows (float32, N x dim) of the PCA of all ranks' ``n`` rows, fitted as ``preprocess_features``
    fits it (xdc.clustering.features), from the largest magnitude, the column sums and the scatter matrix of all
    ranks. Rank 0 decomposes the scatter matrix and broadcasts the projection: every rank applies exactly the same
    one (degenerate eigenvalues leave the basis to LAPACK). On a CUDA ``device`` the blocks go there."""
    top = ranks.max(torch.tensor(largest_magnitude(x), dtype=torch.float64, device=device)).item()
    scale = centring_scale(top)
    sums = ranks.sum(torch.from_numpy(x.sum(axis=0, dtype=np.float64)).to(device)).cpu().numpy()
    centre = (sums / n * scale).astype(np.float32)  # the bits of preprocess_features' (mean * scale)
    cuda = device.type == "cuda"
    scatter = _device_scatter(x, centre, scale, device) if cuda else torch.from_numpy(centred_scatter(x, centre, scale))
    scatter = ranks.sum(scatter.to(device, torch.float64)).cpu().numpy()
    matrix = torch.zeros(x.shape[1], dim, dtype=torch.float32, device=device)
    if ranks.rank == 0:
        matrix.copy_(torch.from_numpy(pca_matrix(scatter, dim, whiten, eps)))
    matrix = ranks.broadcast(matrix)
    return _device_project(x, centre, scale, matrix) if cuda else project(x, centre, scale, matrix.numpy())


def _device_scatter(x: np.ndarray, centre: np.ndarray, scale: np.float32, device: torch.device) -> torch.Tensor:
    """``centred_scatter`` computed on ``device`` (and left there)."""
    scatter = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32, device=device)
    for block in _device_blocks(x, centre, scale, device):
        scatter.addmm_(block.T, block)
    return scatter


def _device_project(x: np.ndarray, centre: np.ndarray, scale: np.float32, matrix: torch.Tensor) -> np.ndarray:
    """``project`` computed on the device of ``matrix``: a 1M x 512 projection is 0.27 TFLOP, seconds on a few CPU
    cores."""
    out = np.empty((len(x), matrix.shape[1]), dtype=np.float32)
    for start, block in zip(range(0, len(x), _CHUNK), _device_blocks(x, centre, scale, matrix.device)):
        out[start : start + _CHUNK] = (block @ matrix).cpu().numpy()
    return out


def _device_blocks(x: np.ndarray, centre: np.ndarray, scale: np.float32, device: torch.device):
    """The blocks of rows of ``x`` times ``scale`` minus ``centre``, float32 on ``device``."""
    centre = torch.from_numpy(centre).to(device)
    for start in range(0, len(x), _CHUNK):
        yield (torch.from_numpy(x[start : start + _CHUNK]).to(device) * float(scale)).sub_(centre)


# --- Lloyd ----------------------------------------------------------------------------------------------------


class _FaissRows:
    """This rank's rows in host memory, searched by faiss (its GPU where it has one) and summed by scipy."""

    def __init__(self, x: np.ndarray, device: torch.device):
        self.x, self.device = x, device
        self.index = flat_index(x.shape[1], gpu=(device.index or 0) if device.type == "cuda" else 0)
        self.labels, self.distances = np.full(len(x), -1, np.int64), np.zeros(len(x), np.float32)

    def assign(self, centroids: np.ndarray) -> int:
        """Each row's nearest centroid; returns how many rows changed cluster (all of them the first time)."""
        if not len(self.x):  # a rank without rows still takes part in every collective
            return 0
        self.index.reset()
        self.index.add(centroids)
        distances, labels = self.index.search(self.x, 1)
        moved = np.count_nonzero(labels[:, 0] != self.labels)
        self.distances, self.labels = distances[:, 0], labels[:, 0].astype(np.int64)
        return moved

    def sums(self, k: int) -> torch.Tensor:
        """(k, d + 1) float64 on the device: per-cluster sums of the rows, then the counts.

        A sparse k x rows membership matrix times the rows: scipy multiplies in float64, in row order, about
        ten times faster here than torch's index_add_/scatter_add_ on the CPU.
        """
        d = self.x.shape[1]
        sums = np.zeros((k, d + 1))
        for start in range(0, len(self.x), _CHUNK):
            labels = self.labels[start : start + _CHUNK]
            members = csr_matrix((np.ones(len(labels)), (labels, np.arange(len(labels)))), shape=(k, len(labels)))
            sums[:, :d] += members @ self.x[start : start + _CHUNK]
        sums[:, d] = np.bincount(self.labels, minlength=k)
        return torch.from_numpy(sums).to(self.device)

    def result(self) -> tuple[np.ndarray, float]:
        return self.labels, float(self.distances.sum(dtype=np.float64))


class _TorchRows:
    """This rank's rows as float32 on ``device``, searched and summed by matrix products there.

    Squared distances are |x|^2 - 2 x.c + |c|^2 (float32, as faiss's own BLAS search computes them), per block
    of rows. The per-cluster sums are a one-hot membership matrix times the rows in float64: deterministic,
    unlike atomic scatter-adds on a GPU. The rows move to a CUDA device once when they take at most a quarter
    of its free memory (:func:`free_device_memory`), else block by block at every iteration.
    """

    def __init__(self, x: np.ndarray, device: torch.device):
        self.device, self.dim = device, x.shape[1]
        rows = torch.from_numpy(x)
        if device.type != "cuda" or x.nbytes <= free_device_memory(device) // 4:
            rows = rows.to(device)
        self.blocks = rows.split(_CHUNK)
        self.labels = torch.full((len(x),), -1, dtype=torch.int64, device=device)
        self.distances = torch.zeros(len(x), dtype=torch.float32, device=device)

    def assign(self, centroids: np.ndarray) -> int:
        c = torch.from_numpy(centroids).to(self.device)
        c_sq = c.square().sum(1)
        moved = torch.zeros((), dtype=torch.int64, device=self.device)
        with torch.autocast(self.device.type, enabled=False):  # distances in float32 whatever the caller set
            for start, block in zip(range(0, len(self.labels), _CHUNK), self.blocks):
                block = block.to(self.device)
                best, labels = torch.addmm(c_sq, block, c.T, alpha=-2).min(1)  # lowest index on ties
                rows = slice(start, start + len(block))
                moved += (labels != self.labels[rows]).sum()
                self.labels[rows] = labels
                self.distances[rows] = (best + block.square().sum(1)).clamp_(min=0)
        return int(moved)

    def sums(self, k: int) -> torch.Tensor:
        d = self.dim
        sums = torch.zeros(k, d + 1, dtype=torch.float64, device=self.device)
        for start, block in zip(range(0, len(self.labels), _CHUNK), self.blocks):
            labels = self.labels[start : start + len(block), None]
            members = torch.zeros(len(block), k, dtype=torch.float64, device=self.device).scatter_(1, labels, 1.0)
            sums[:, :d].addmm_(members.T, block.to(self.device).double())  # converted on the device
        sums[:, d] = torch.bincount(self.labels, minlength=k).to(torch.float64)
        return sums

    def result(self) -> tuple[np.ndarray, float]:
        return self.labels.cpu().numpy(), float(self.distances.sum(dtype=torch.float64))


def free_device_memory(device: torch.device) -> int:
    """Bytes free on a CUDA device, counting what PyTorch's allocator has cached but not handed out (e.g. the
    activations of the feature extraction just before), which the rows can reuse."""
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return torch.cuda.mem_get_info(device)[0] + cached


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


# --- collectives ----------------------------------------------------------------------------------------------


class Ranks:
    """The default process group's collectives, or none: without a group, or ``alone`` (this process holds every
    row, e.g. rank 0 clustering by itself while the others wait). Tensors must live where the group's backend
    works (the rank's CUDA device under NCCL)."""

    def __init__(self, alone: bool = False):
        self.active = not alone and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.active else 0

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(t)  # ring/tree reductions hand every rank the same bits of the result
        return t

    def max(self, t: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        if not self.active:
            return [t]
        out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(out, t)
        return out

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``t`` on every rank."""
        if self.active:
            dist.broadcast(t, 0)
        return t

    def counts(self, n: int, device: torch.device) -> np.ndarray:
        """Rows per rank (int64, W), on every rank."""
        if not self.active:
            return np.array([n], dtype=np.int64)
        counts = torch.zeros(dist.get_world_size(), dtype=torch.int64, device=device)
        counts[self.rank] = n
        return self.sum(counts).cpu().numpy()
