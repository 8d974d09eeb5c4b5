"""Balanced assignment with Sinkhorn-Knopp (SeLa / SwAV): an alternative to nearest-centroid labels that
cannot put most points in one cluster."""

from __future__ import annotations

import math

import numpy as np
import torch

from xdc.clustering.arguments import integer
from xdc.clustering.kmeans import KMeansResult, kmeans
from xdc.clustering.sharded import Ranks, check_ids_on_ranks

BLOCK_ROWS = 16_384  # rows per block of the passes over N x K: temporaries of BLOCK_ROWS x K, not N x K


def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iters: int = 3) -> torch.Tensor:
    """Soft assignment Q (N, K) of N points to K clusters from logits ``scores`` (N, K).

    Q is exp(scores / epsilon) rescaled by ``iters`` rounds of: columns to sum 1/K, rows to sum 1/N; returned
    times N, so each row sums to 1 and each column to about N/K. Computed in float64 in the log domain (every
    normalisation is a log-sum-exp, i.e. with max subtraction), so no entry overflows and no row or column
    underflows to all zeros, however large scores / epsilon gets. Returned in the dtype of floating ``scores``,
    in torch's default dtype for integer or boolean ones (until 2026-12-03 Q was cast to theirs: all zeros).
    Non-finite scores / epsilon raise ``ValueError`` (they made Q NaN), as do no points or no clusters and complex
    scores (whose imaginary parts were dropped until 2026-12-03).
    """
    if scores.ndim != 2 or not scores.numel():  # empty: a "math domain error" from log(0), until 2026-12-02
        raise ValueError(f"scores must be a 2-D tensor (N, K) of N, K >= 1, got shape {tuple(scores.shape)}")
    if scores.is_complex():
        raise ValueError(f"scores must be real numbers, got dtype {scores.dtype}")
    _check(epsilon, iters)
    log_q = scores.detach().to(torch.float64) / epsilon
    if not bool(log_q.isfinite().all()):
        raise ValueError(_NOT_FINITE)
    log_q = _log_sinkhorn(log_q, iters)
    dtype = scores.dtype if scores.is_floating_point() else torch.get_default_dtype()  # a probability needs floats
    return (log_q.exp_() * scores.shape[0]).to(dtype)


def balanced_assign(
    x: np.ndarray, k: int, seed: int, iters: int = 20, epsilon: float = 0.05, sinkhorn_iters: int = 50,
    device: torch.device | str = "cpu",
) -> KMeansResult:  # fmt: skip
    """k-means centroids (faiss), then labels from a Sinkhorn-balanced assignment (:func:`balance`) on
    ``device``."""
    _check(epsilon, sinkhorn_iters)
    return balance(x, kmeans(x, k, seed, iters), epsilon, sinkhorn_iters, device)


def balance(
    x: np.ndarray, clusters: KMeansResult, epsilon: float = 0.05, sinkhorn_iters: int = 50,
    device: torch.device | str = "cpu", *, ids: np.ndarray | None = None, sharded: bool = False,
    comm_device: torch.device | str | None = None,
) -> KMeansResult:  # fmt: skip
    """Labels of the points ``x`` (N, d) from a Sinkhorn-balanced assignment to the centroids of ``clusters``
    (k-means' result for ``x``), instead of the nearest centroid. Non-finite scores (NaN or infinite points or
    centroids, or too small an ``epsilon``) raise ``ValueError``, on every rank, as do points whose dimension is not
    the centroids'.

    Scores are negative squared distances to the centroids (without balancing, the best score is the nearest
    centroid). Each point takes its most probable cluster under Q, but no cluster takes more than ceil(N/k)
    points: plain argmax of Q is only balanced on average and does collapse when features are nearly
    identical (Q is then almost uniform) or centroids coincide. Among equally confident points a cluster takes
    the smallest ``ids`` first (distinct non-negative integers naming the points, e.g. video indices; default:
    their positions). ``centroids`` and ``iterations`` are k-means'; ``sizes`` and ``loss`` describe the balanced
    labels.

    ``sharded`` (train.cluster_on=shards): ``x`` is this rank's share of the points of all the ranks of the
    default process group (``ids`` then name them across ranks; default: positions in rank order). Each Sinkhorn
    step all-reduces its column sums, and each cluster's choice of points is made from all-reduced counts, so no
    point leaves its rank; every rank gets its own points' labels, and the global ``sizes`` and ``loss``. The
    labels are those of one process holding every point, up to the float rounding of the column sums, which
    add the ranks' rows in another order (a point at a near-tie can take another cluster). ``comm_device``: where
    the collectives' tensors go (the rank's CUDA device under NCCL; default ``device``).

    Memory: one N x K float64 matrix on ``device`` (``memory_bytes``; N this rank's points), which every step
    updates in place; the points go there a block of rows at a time. The arithmetic is the same on every device;
    where a distance or a sum rounds differently, a point at a near-tie can take another cluster.
    """
    _check(epsilon, sinkhorn_iters)
    d = clusters.centroids.shape[1]  # the same centroids on every rank: a mismatch raises on every rank alike
    if np.ndim(x) != 2 or np.shape(x)[1] != d:  # a torch RuntimeError from cdist, until 2026-12-03
        raise ValueError(f"points must be a 2-D array (N, {d}) for centroids of dimension {d}, got {np.shape(x)}")
    device = torch.device(device)
    ranks = _Collectives(Ranks(alone=not sharded), torch.device(comm_device or device))
    points = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).split(BLOCK_ROWS)  # views, not copies
    centroids = torch.from_numpy(clusters.centroids).to(device, torch.float64)
    k = len(centroids)
    counts = ranks.counts(len(x))  # points per rank
    if ids is None:
        ids = int(counts[: ranks.rank].sum()) + np.arange(len(x))
    check_ids_on_ranks(np.asarray(ids), len(x), ranks.device, ranks.ranks)  # k-means' check, on every rank alike
    if not counts.sum() or not k:  # the same numbers on every rank: every rank raises
        raise ValueError(f"balance needs points and centroids, got {int(counts.sum())} points and {k} centroids")
    ids = torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(device)
    log_q = torch.empty(len(x), k, dtype=torch.float64, device=device)
    bad = torch.zeros((), dtype=torch.bool, device=device)
    for block, out in zip(points, log_q.split(BLOCK_ROWS)):  # scores / epsilon: -distance^2 / epsilon
        out.copy_(torch.cdist(block.to(device).double(), centroids).square_().mul_(-1 / epsilon))
        bad |= ~out.isfinite().all()
    if ranks.count(int(bad)):  # every rank raises, or none: none is left waiting in a collective
        raise ValueError(_NOT_FINITE)
    n = int(counts.sum())
    labels = _capacity_argmax(_log_sinkhorn(log_q, sinkhorn_iters, ranks, n), ids, n, ranks)
    del log_q
    tail = torch.zeros(k + 1, dtype=torch.float64, device=device)  # sizes, then the loss: one all-reduce
    tail[:k] = torch.bincount(labels, minlength=k)
    for block, assigned in zip(points, labels.split(BLOCK_ROWS)):
        tail[k] += (block.to(device).double() - centroids[assigned]).square_().sum()
    tail = ranks.sum(tail).cpu()
    return KMeansResult(
        assignments=labels.cpu().numpy(),
        centroids=clusters.centroids,
        sizes=tail[:k].numpy().astype(np.int64),
        loss=float(tail[k]),
        iterations=clusters.iterations,
    )


def memory_bytes(n: int, k: int, dim: int) -> int:
    """What ``balanced_assign`` of ``n`` points of ``dim`` features into ``k`` clusters holds at its peak, beyond
    its input: the N x K float64 matrix, the labels and the blocks' temporaries (k-means' own memory aside)."""
    return 8 * (n * k + n) + 8 * min(n, BLOCK_ROWS) * (3 * k + 2 * dim)


_NOT_FINITE = "scores / epsilon are NaN or infinite: non-finite points, centroids or scores, or too small an epsilon"


def _check(epsilon: float, iters: int) -> None:
    # an infinite epsilon made every score 0 and Q uniform: labels by id alone, until 2026-12-03
    if not 0 < epsilon < math.inf or integer(iters, "sinkhorn iters") < 1:
        raise ValueError(f"sinkhorn needs a finite epsilon > 0 and iters >= 1, got epsilon={epsilon}, iters={iters}")


def _log_sinkhorn(log_q: torch.Tensor, iters: int, ranks: _Collectives | None = None, n: int | None = None
                  ) -> torch.Tensor:  # fmt: skip
    """``log_q`` (N, K) float64 = scores / epsilon, turned in place into log(Q / N): rows sum (in Q / N) to 1/N
    after the last step, columns to about 1/K. Each log-sum-exp runs over blocks of rows, so that its
    temporaries are blocks, not copies of the matrix. With ``ranks``, ``log_q`` is this rank's rows of the
    ``n`` of all ranks, whose column maxima and sums are all-reduced."""
    rows, k = log_q.shape
    ranks, n = ranks or _ALONE, rows if n is None else n
    blocks = log_q.split(BLOCK_ROWS)
    for _ in range(iters):
        # per column, for the exponentials of the column sums
        top = log_q.amax(dim=0, keepdim=True) if rows else log_q.new_full((1, k), -math.inf)
        top = ranks.max(top)
        total = torch.zeros_like(top)
        for block in blocks:
            total += (block - top).exp_().sum(dim=0, keepdim=True)
        log_q -= ranks.sum(total).log_().add_(top).add_(math.log(k))
        for block in blocks:
            block -= torch.logsumexp(block, dim=1, keepdim=True) + math.log(n)
    return log_q


def _capacity_argmax(log_q: torch.Tensor, ids: torch.Tensor, n: int, ranks: _Collectives,
                     max_rounds: int = 20) -> torch.Tensor:  # fmt: skip
    """Row-wise argmax of ``log_q`` (this rank's rows of ``n``, K) where no column takes more than ceil(n/K) rows
    (int64 labels, on ``log_q``'s device).

    In rounds: every unplaced row proposes to its best column that still has room, each column keeps its most
    confident proposals up to its room (the smallest ``ids`` first among equally confident ones), the rest
    propose again. After Sinkhorn a handful of rounds places everything; only ties (identical features fill one
    column per round) remain after ``max_rounds``, and those fill the remaining room in column order, by id.
    """
    k = log_q.shape[1]
    device = log_q.device
    room = torch.full((k,), -(-n // k), dtype=torch.int64, device=device)
    labels = torch.empty(len(log_q), dtype=torch.int64, device=device)
    todo = torch.argsort(ids)  # unplaced rows, kept in the order of their ids
    for _ in range(max_rounds):
        if not ranks.count(todo.numel()):
            break
        best, confidence = _best_with_room(log_q, todo, room == 0)
        keep = _keep_across_ranks if ranks.active else _keep
        kept = keep(best, confidence, ids[todo], room, ranks)
        labels[todo[kept]] = best[kept]
        room -= ranks.sum(torch.bincount(best[kept], minlength=k))
        todo = todo[~kept]
    if ranks.count(todo.numel()):
        fill = torch.repeat_interleave(torch.arange(k, device=device), room)
        labels[todo] = fill[ranks.places(ids[todo])]
    return labels


def _keep(best: torch.Tensor, confidence: torch.Tensor, ids: torch.Tensor, room: torch.Tensor,
          ranks: _Collectives) -> torch.Tensor:  # fmt: skip
    """Which proposals (rows in the order of their ids, their ``best`` columns and ``confidence``) the columns
    keep, in one process (``ranks`` unused): by column, the most confident first (two stable sorts: equal
    proposals keep the order of their ids)."""
    order = torch.sort(confidence, descending=True, stable=True).indices
    order = order[torch.sort(best[order], stable=True).indices]
    ranked = best[order]
    place = torch.arange(len(order), device=best.device) - torch.searchsorted(ranked, ranked)  # among the column's
    kept = torch.empty_like(best, dtype=torch.bool)
    kept[order] = place < room[ranked]
    return kept


_LOWEST, _HIGHEST = torch.iinfo(torch.int64).min, torch.iinfo(torch.int64).max


def _keep_across_ranks(best: torch.Tensor, confidence: torch.Tensor, ids: torch.Tensor, room: torch.Tensor,
                       ranks: _Collectives) -> torch.Tensor:  # fmt: skip
    """:func:`_keep` over the proposals of all ranks, which stay where they are: a column with more proposals
    than room keeps those above its threshold, the confidence of its room-th best proposal, and of those at the
    threshold the ones with the smallest ids. Both are found by bisection on all-reduced counts per column
    (about 64 + log2(ids) all-reduces of K counts)."""
    k = len(room)

    def per_column(selected: torch.Tensor) -> torch.Tensor:  # proposals of all ranks, counted by column
        return ranks.sum(torch.bincount(best[selected], minlength=k))

    over = per_column(torch.ones_like(best, dtype=torch.bool)) > room
    kept = ~over[best]
    if not bool(over.any()):
        return kept
    key = _order_key(confidence)
    threshold = _largest(lambda t: per_column(key >= t[best]), room, _LOWEST, _HIGHEST)
    need = room - per_column(key > threshold[best])
    tied = key == threshold[best]
    top_id = int(ranks.max(ids.max() if len(ids) else ids.new_zeros(())))
    last_id = _smallest(lambda i: per_column(tied & (ids <= i[best])), need, 0, top_id)
    return kept | (over[best] & ((key > threshold[best]) | (tied & (ids <= last_id[best]))))


def _order_key(x: torch.Tensor) -> torch.Tensor:
    """int64 keys of float64 values (no NaN) in the same order: the bits, with those of negative values flipped."""
    bits = (x + 0.0).view(torch.int64)  # + 0.0: -0.0 becomes 0.0, which it equals
    return torch.where(bits < 0, bits ^ _HIGHEST, bits)


def _largest(count, target: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Per column, the largest t in [lo, hi] with ``count(t)`` (per column, non-increasing in t) >= ``target``;
    ``lo`` where none is."""
    lo, hi = torch.full_like(target, lo), torch.full_like(target, hi)
    while bool((open_ := lo < hi).any()):  # the same counts on every rank: the same number of steps
        mid = lo // 2 + hi // 2 + ((lo & 1) + (hi & 1) + 1) // 2  # ceil((lo + hi) / 2) without overflow
        ok = count(mid) >= target
        lo, hi = torch.where(open_ & ok, mid, lo), torch.where(open_ & ~ok, mid - 1, hi)
    return lo


def _smallest(count, target: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Per column, the smallest t in [lo, hi] with ``count(t)`` (per column, non-decreasing in t) >= ``target``;
    ``hi`` where none is."""
    lo, hi = torch.full_like(target, lo), torch.full_like(target, hi)
    while bool((open_ := lo < hi).any()):
        mid = lo // 2 + hi // 2 + ((lo & 1) + (hi & 1)) // 2  # floor((lo + hi) / 2) without overflow
        ok = count(mid) >= target
        lo, hi = torch.where(open_ & ~ok, mid + 1, lo), torch.where(open_ & ok, mid, hi)
    return lo


def _best_with_room(log_q: torch.Tensor, rows: torch.Tensor, full: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of ``rows``, its best column that is not ``full``, and that column's score. A block of rows at a
    time: full columns are masked in a copy of the block, never of the matrix."""
    best = torch.empty(rows.numel(), dtype=torch.int64, device=log_q.device)
    confidence = torch.empty(rows.numel(), dtype=log_q.dtype, device=log_q.device)
    for start in range(0, rows.numel(), BLOCK_ROWS):
        block = log_q[rows[start : start + BLOCK_ROWS]].masked_fill_(full, -math.inf)
        torch.max(block, dim=1, out=(confidence[start : start + len(block)], best[start : start + len(block)]))
    return best, confidence


class _Collectives:
    """The ranks' sums and maxima (:class:`xdc.clustering.sharded.Ranks`) of tensors wherever they live, through
    ``device``, where the process group's backend works; no-ops without ranks."""

    def __init__(self, ranks: Ranks, device: torch.device):
        self.ranks, self.device = ranks, device
        self.active, self.rank = ranks.active, ranks.rank

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.ranks.sum(t.to(self.device)).to(t.device) if self.active else t

    def max(self, t: torch.Tensor) -> torch.Tensor:
        return self.ranks.max(t.to(self.device)).to(t.device) if self.active else t

    def count(self, n: int) -> int:
        """``n`` summed over the ranks."""
        return int(self.sum(torch.tensor([n]))) if self.active else n

    def counts(self, n: int) -> np.ndarray:
        """Every rank's ``n``, in rank order."""
        return self.ranks.counts(n, self.device)

    def places(self, ids: torch.Tensor) -> torch.Tensor:
        """Each of ``ids``' place among the ids that all ranks pass (0 for the smallest). Across ranks, through a
        mask of one byte per id up to the largest (only for the rows that are left after every round)."""
        if not self.active:
            return torch.argsort(torch.argsort(ids))
        size = int(self.max(torch.tensor(int(ids.max()) + 1 if len(ids) else 0)))
        mask = self.sum(torch.zeros(size, dtype=torch.uint8).index_fill_(0, ids.cpu(), 1))
        return (mask.to(torch.int32).cumsum(0)[ids.cpu()] - 1).to(ids.device, torch.int64)


_ALONE = _Collectives(Ranks(alone=True), torch.device("cpu"))
