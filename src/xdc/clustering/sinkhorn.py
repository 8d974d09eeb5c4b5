"""Balanced assignment with Sinkhorn-Knopp (SeLa / SwAV): an alternative to nearest-centroid labels that
cannot put most points in one cluster."""

from __future__ import annotations

import math

import numpy as np
import torch

from xdc.clustering.kmeans import KMeansResult, kmeans

BLOCK_ROWS = 16_384  # rows per block of the passes over N x K: temporaries of BLOCK_ROWS x K, not N x K


def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iters: int = 3) -> torch.Tensor:
    """Soft assignment Q (N, K) of N points to K clusters from logits ``scores`` (N, K).

    Q is exp(scores / epsilon) rescaled by ``iters`` rounds of: columns to sum 1/K, rows to sum 1/N; returned
    times N, so each row sums to 1 and each column to about N/K. Computed in float64 in the log domain (every
    normalisation is a log-sum-exp, i.e. with max subtraction), so no entry overflows and no row or column
    underflows to all zeros, however large scores / epsilon gets. Returned in the dtype of ``scores``.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be a 2-D tensor (N, K), got shape {tuple(scores.shape)}")
    _check(epsilon, iters)
    log_q = _log_sinkhorn(scores.detach().to(torch.float64) / epsilon, iters)
    return (log_q.exp_() * scores.shape[0]).to(scores.dtype)


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
    device: torch.device | str = "cpu",
) -> KMeansResult:  # fmt: skip
    """Labels of the points ``x`` (N, d) from a Sinkhorn-balanced assignment to the centroids of ``clusters``
    (k-means' result for ``x``), instead of the nearest centroid.

    Scores are negative squared distances to the centroids (without balancing, the best score is the nearest
    centroid). Each point takes its most probable cluster under Q, but no cluster takes more than ceil(N/k)
    points: plain argmax of Q is only balanced on average and does collapse when features are nearly
    identical (Q is then almost uniform) or centroids coincide. ``centroids`` and ``iterations`` are k-means';
    ``sizes`` and ``loss`` describe the balanced labels.

    Memory: one N x K float64 matrix on ``device`` (``memory_bytes``), which every step updates in place; the
    points go there a block of rows at a time. The arithmetic is the same on every device; where a distance or
    a sum rounds differently, a point at a near-tie can take another cluster.
    """
    _check(epsilon, sinkhorn_iters)
    device = torch.device(device)
    points = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).split(BLOCK_ROWS)  # views, not copies
    centroids = torch.from_numpy(clusters.centroids).to(device, torch.float64)
    k = len(centroids)
    log_q = torch.empty(len(x), k, dtype=torch.float64, device=device)
    for block, out in zip(points, log_q.split(BLOCK_ROWS)):  # scores / epsilon: -distance^2 / epsilon
        out.copy_(torch.cdist(block.to(device).double(), centroids).square_().mul_(-1 / epsilon))
    labels = _capacity_argmax(_log_sinkhorn(log_q, sinkhorn_iters))
    del log_q
    loss = torch.zeros((), dtype=torch.float64, device=device)
    for block, assigned in zip(points, labels.split(BLOCK_ROWS)):
        loss += (block.to(device).double() - centroids[assigned]).square_().sum()
    return KMeansResult(
        assignments=labels.cpu().numpy(),
        centroids=clusters.centroids,
        sizes=torch.bincount(labels, minlength=k).cpu().numpy().astype(np.int64),
        loss=float(loss),
        iterations=clusters.iterations,
    )


def memory_bytes(n: int, k: int, dim: int) -> int:
    """What ``balanced_assign`` of ``n`` points of ``dim`` features into ``k`` clusters holds at its peak, beyond
    its input: the N x K float64 matrix, the labels and the blocks' temporaries (k-means' own memory aside)."""
    return 8 * (n * k + n) + 8 * min(n, BLOCK_ROWS) * (3 * k + 2 * dim)


def _check(epsilon: float, iters: int) -> None:
    if epsilon <= 0 or iters < 1:
        raise ValueError(f"sinkhorn needs epsilon > 0 and iters >= 1, got epsilon={epsilon}, iters={iters}")


def _log_sinkhorn(log_q: torch.Tensor, iters: int) -> torch.Tensor:
    """``log_q`` (N, K) float64 = scores / epsilon, turned in place into log(Q / N): rows sum (in Q / N) to 1/N
    after the last step, columns to about 1/K. Each log-sum-exp runs over blocks of rows, so that its
    temporaries are blocks, not copies of the matrix."""
    n, k = log_q.shape
    blocks = log_q.split(BLOCK_ROWS)
    for _ in range(iters):
        top = log_q.amax(dim=0, keepdim=True)  # per column, for the exponentials of the column sums
        total = torch.zeros_like(top)
        for block in blocks:
            total += (block - top).exp_().sum(dim=0, keepdim=True)
        log_q -= total.log_().add_(top).add_(math.log(k))
        for block in blocks:
            block -= torch.logsumexp(block, dim=1, keepdim=True) + math.log(n)
    return log_q


def _capacity_argmax(log_q: torch.Tensor, max_rounds: int = 20) -> torch.Tensor:
    """Row-wise argmax of ``log_q`` (N, K) where no column takes more than ceil(N/K) rows (int64 labels, on
    ``log_q``'s device).

    In rounds: every unplaced row proposes to its best column that still has room, each column keeps its most
    confident proposals up to its room, the rest propose again. After Sinkhorn a handful of rounds places
    everything; only ties (identical features fill one column per round) remain after ``max_rounds``, and
    those fill the remaining room in column order.
    """
    n, k = log_q.shape
    device = log_q.device
    room = torch.full((k,), -(-n // k), dtype=torch.int64, device=device)
    labels = torch.empty(n, dtype=torch.int64, device=device)
    todo = torch.arange(n, device=device)
    for _ in range(max_rounds):
        if not todo.numel():
            break
        best, confidence = _best_with_room(log_q, todo, room == 0)
        # by column, the most confident first (two stable sorts: equal proposals keep the rows' order)
        order = torch.sort(confidence, descending=True, stable=True).indices
        order = order[torch.sort(best[order], stable=True).indices]
        best = best[order]
        rank = torch.arange(todo.numel(), device=device) - torch.searchsorted(best, best)  # among the column's
        kept = rank < room[best]
        labels[todo[order[kept]]] = best[kept]
        room -= torch.bincount(best[kept], minlength=k)
        todo = todo[order[~kept]]
    labels[todo] = torch.repeat_interleave(torch.arange(k, device=device), room)[: todo.numel()]
    return labels


def _best_with_room(log_q: torch.Tensor, rows: torch.Tensor, full: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of ``rows``, its best column that is not ``full``, and that column's score. A block of rows at a
    time: full columns are masked in a copy of the block, never of the matrix."""
    best = torch.empty(rows.numel(), dtype=torch.int64, device=log_q.device)
    confidence = torch.empty(rows.numel(), dtype=log_q.dtype, device=log_q.device)
    for start in range(0, rows.numel(), BLOCK_ROWS):
        block = log_q[rows[start : start + BLOCK_ROWS]].masked_fill_(full, -math.inf)
        torch.max(block, dim=1, out=(confidence[start : start + len(block)], best[start : start + len(block)]))
    return best, confidence
