"""Balanced assignment with Sinkhorn-Knopp (SeLa / SwAV): an alternative to nearest-centroid labels that
cannot put most points in one cluster."""

from __future__ import annotations

import math

import numpy as np
import torch

from xdc.clustering.kmeans import KMeansResult, kmeans


def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iters: int = 3) -> torch.Tensor:
    """Soft assignment Q (N, K) of N points to K clusters from logits ``scores`` (N, K).

    Q is exp(scores / epsilon) rescaled by ``iters`` rounds of: columns to sum 1/K, rows to sum 1/N; returned
    times N, so each row sums to 1 and each column to about N/K. Computed in float64 in the log domain (every
    normalisation is a log-sum-exp, i.e. with max subtraction), so no entry overflows and no row or column
    underflows to all zeros, however large scores / epsilon gets. Returned in the dtype of ``scores``.
    """
    return (_log_sinkhorn(scores, epsilon, iters).exp_() * scores.shape[0]).to(scores.dtype)


def balanced_assign(
    x: np.ndarray, k: int, seed: int, iters: int = 20, epsilon: float = 0.05, sinkhorn_iters: int = 50
) -> KMeansResult:
    """k-means centroids, then labels from a Sinkhorn-balanced assignment instead of the nearest centroid.

    Scores are negative squared distances to the centroids (without balancing, the best score is the nearest
    centroid). Each point takes its most probable cluster under Q, but no cluster takes more than ceil(N/k)
    points: plain argmax of Q is only balanced on average and does collapse when features are nearly
    identical (Q is then almost uniform) or centroids coincide. ``centroids`` are the k-means ones; ``sizes``
    and ``loss`` describe the balanced labels.
    """
    result = kmeans(x, k, seed, iters)
    points = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.float64)
    sq_dist = torch.cdist(points, torch.from_numpy(result.centroids).to(torch.float64)).square_()
    assignments = _capacity_argmax(_log_sinkhorn(-sq_dist, epsilon, sinkhorn_iters).numpy())
    return KMeansResult(
        assignments=assignments,
        centroids=result.centroids,
        sizes=np.bincount(assignments, minlength=k).astype(np.int64),
        loss=float(sq_dist.numpy()[np.arange(len(assignments)), assignments].sum()),
        iterations=result.iterations,
    )


def _log_sinkhorn(scores: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    """log(Q / N) in float64: rows sum (in Q / N) to 1/N after the last step, columns to about 1/K."""
    if scores.ndim != 2:
        raise ValueError(f"scores must be a 2-D tensor (N, K), got shape {tuple(scores.shape)}")
    if epsilon <= 0 or iters < 1:
        raise ValueError(f"sinkhorn needs epsilon > 0 and iters >= 1, got epsilon={epsilon}, iters={iters}")
    n, k = scores.shape
    log_q = scores.detach().to(torch.float64) / epsilon
    for _ in range(iters):  # in place: N x K float64 is the memory that matters
        log_q -= torch.logsumexp(log_q, dim=0, keepdim=True) + math.log(k)
        log_q -= torch.logsumexp(log_q, dim=1, keepdim=True) + math.log(n)
    return log_q


def _capacity_argmax(log_q: np.ndarray, max_rounds: int = 20) -> np.ndarray:
    """Row-wise argmax of ``log_q`` (N, K) where no column takes more than ceil(N/K) rows (int64 labels).

    In rounds: every unplaced row proposes to its best column that still has room, each column keeps its most
    confident proposals up to its room, the rest propose again. After Sinkhorn a handful of rounds places
    everything; only ties (identical features fill one column per round) remain after ``max_rounds``, and
    those fill the remaining room in column order.
    """
    n, k = log_q.shape
    room = np.full(k, -(-n // k))
    labels = np.empty(n, np.int64)
    todo = np.arange(n)
    for _ in range(max_rounds):
        if not todo.size:
            break
        proposals = log_q[todo]  # a copy: full columns are masked in it only
        proposals[:, room == 0] = -np.inf
        best = proposals.argmax(axis=1)
        confidence = proposals[np.arange(todo.size), best]
        order = np.lexsort((-confidence, best))  # by column, most confident first
        best = best[order]
        rank = np.arange(todo.size) - np.searchsorted(best, best)  # position among the column's proposals
        kept = rank < room[best]
        labels[todo[order[kept]]] = best[kept]
        room -= np.bincount(best[kept], minlength=k)
        todo = todo[order[~kept]]
    labels[todo] = np.repeat(np.arange(k), room)[: todo.size]
    return labels
