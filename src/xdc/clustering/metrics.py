"""Cluster diagnostics: NMI between two labelings (and against chance), and the size statistics that reveal a
collapse."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import normalized_mutual_info_score


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information (arithmetic mean of the entropies) of two labelings of the same points.

    DeepCluster logs it between consecutive rounds: near 1 means the pseudo-labels have stopped changing.
    """
    if len(a) != len(b):
        raise ValueError(f"labelings differ in length: {len(a)} and {len(b)}")
    return float(normalized_mutual_info_score(a, b, average_method="arithmetic"))


def agreement(a: np.ndarray, b: np.ndarray, shuffles: int = 20, seed: int = 0) -> tuple[float, float]:
    """NMI of two labelings of the same points (-1: unassigned, left out) and its chance level: the mean NMI
    after shuffling ``b`` (``shuffles`` seeded draws), which is well above 0 when clusters are many and points
    few. For XDC's video and audio clusters: at chance level, neither modality's clusters are predictable from
    the other, and the cross-modal heads have nothing to learn."""
    both = (a >= 0) & (b >= 0)
    a, b = a[both], b[both]
    if not len(a):
        raise ValueError("no point has both labels")
    rng = np.random.default_rng(seed)
    return nmi(a, b), float(np.mean([nmi(a, rng.permutation(b)) for _ in range(shuffles)]))


@dataclass
class ClusterStats:
    k: int
    non_empty: int
    largest: int
    largest_fraction: float  # largest / number of points
    smallest_non_empty: int
    median: float  # median size of the non-empty clusters
    entropy_ratio: float  # entropy of the size distribution / log k: 1 when all clusters are equal
    collapsed: bool  # largest_fraction > the collapse fraction

    def to_dict(self) -> dict:
        return asdict(self)


def cluster_stats(assignments: np.ndarray, k: int, collapse_fraction: float = 0.5) -> ClusterStats:
    """Size statistics of ``assignments`` (labels in [0, k)); collapsed when one cluster holds more than
    ``collapse_fraction`` of the points, the degenerate solution DeepCluster's balanced sampling fights."""
    assignments = np.asarray(assignments)
    if k < 1 or assignments.size == 0:
        raise ValueError(f"cluster_stats needs k >= 1 and at least one point, got k={k}, {assignments.size} points")
    if assignments.min() < 0 or assignments.max() >= k:
        raise ValueError(f"assignments must lie in [0, {k}), got [{assignments.min()}, {assignments.max()}]")
    sizes = np.bincount(assignments, minlength=k)
    present = sizes[sizes > 0]
    p = present / assignments.size
    entropy = float(-(p * np.log(p)).sum())
    largest = int(present.max())
    return ClusterStats(
        k=k,
        non_empty=int(present.size),
        largest=largest,
        largest_fraction=largest / assignments.size,
        smallest_non_empty=int(present.min()),
        median=float(np.median(present)),
        entropy_ratio=entropy / math.log(k) if k > 1 else 1.0,
        collapsed=largest / assignments.size > collapse_fraction,
    )
