"""Cluster diagnostics: NMI between two labelings (and against chance), and the size statistics that reveal a
collapse."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from xdc.clustering.arguments import integer


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information (arithmetic mean of the entropies) of two labelings of the same points.

    DeepCluster logs it between consecutive rounds: near 1 means the pseudo-labels have stopped changing.
    The value of scikit-learn's ``normalized_mutual_info_score``, with its limit cases (1 when neither labeling
    splits the points: both constant, a single point, or no points at all; 0 when only one does not, as it says
    nothing about the other), from the pairs of labels counted directly: at tens of millions of points
    scikit-learn's path holds about eight copies of the labels at once, this one two. Labels are any values of
    one sortable kind (integers, strings, floats); NaN labels, labels that do not sort (a mix of strings and
    numbers) and labelings that are not 1-D raise ``ValueError``.
    """
    return _nmi(*_pair_counts(*_same_length(a, b)))


def contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Counts (int64) of the points of each label of ``a`` (rows) and of ``b`` (columns), labels that occur in
    sorted order, as scikit-learn's ``contingency_matrix(a, b)``; counted without copies of the points."""
    rows, cols, joint = _pair_counts(*_same_length(a, b))
    row_ids, row = np.unique(rows, return_inverse=True)
    col_ids, col = np.unique(cols, return_inverse=True)
    table = np.zeros((row_ids.size, col_ids.size), dtype=np.int64)
    table[row, col] = joint.astype(np.int64)
    return table


def nmi_of_table(table: np.ndarray) -> float:
    """:func:`nmi` of the two labelings that ``table`` (a :func:`contingency`) counts."""
    rows, cols = np.nonzero(table)
    return _nmi(rows, cols, table[rows, cols].astype(np.float64))


def ari_of_table(table: np.ndarray) -> float:
    """Adjusted Rand index of the two labelings that ``table`` counts: scikit-learn's ``adjusted_rand_score``
    (1 when the labelings agree on every pair, the empty case included), from the pair counts in Python integers
    (their products overflow int64 at tens of millions of points)."""
    n = int(table.sum())
    squares = int((table.astype(np.int64) ** 2).sum())
    rows, cols = table.sum(axis=1), table.sum(axis=0)
    same_row = int((table * rows[:, None]).sum()) - squares  # pairs together in a, apart in b (x2)
    same_col = int((table * cols[None, :]).sum()) - squares  # pairs together in b, apart in a (x2)
    together, apart = squares - n, n * n - same_row - same_col - squares
    if same_row == 0 and same_col == 0:
        return 1.0
    return 2.0 * (together * apart - same_row * same_col) / (
        (together + same_row) * (same_row + apart) + (together + same_col) * (same_col + apart)
    )


def _same_length(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"labelings must be 1-D, got shapes {a.shape} and {b.shape}")
    if len(a) != len(b):
        raise ValueError(f"labelings differ in length: {len(a)} and {len(b)}")
    for labels in (a, b):  # numpy counts every NaN as one label: a silent cluster of the missing ones
        if np.issubdtype(labels.dtype, np.inexact) and np.isnan(labels).any():
            raise ValueError("labels contain NaN")
    return a, b


def _nmi(rows: np.ndarray, cols: np.ndarray, joint: np.ndarray) -> float:
    """NMI from the pairs that occur (row code, column code, count as float64)."""
    n = float(joint.sum())
    row_sums, col_sums = np.bincount(rows, weights=joint), np.bincount(cols, weights=joint)
    splits = np.count_nonzero(row_sums), np.count_nonzero(col_sums)
    if splits[0] <= 1 and splits[1] <= 1:
        return 1.0
    if min(splits) <= 1:  # one labeling puts every point together: no information about the other
        return 0.0
    terms = joint / n * (np.log(joint) + np.log(n) - np.log(row_sums[rows]) - np.log(col_sums[cols]))
    mi = max(float(terms.sum()), 0.0)
    if mi == 0.0:
        return 0.0
    return mi / ((_entropy(row_sums, n) + _entropy(col_sums, n)) / 2)


def _pair_counts(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs of labels that occur, as label codes (row, column), and how often (float64)."""
    a, b = _codes(a), _codes(b)
    width = int(b.max()) + 1 if b.size else 1
    pairs = a.astype(np.int64) * width + b
    cells = (int(a.max()) + 1 if a.size else 0) * width
    if cells <= max(a.size, 2**20):  # a table of counts no larger than the labels: count without sorting
        counts = np.bincount(pairs, minlength=cells)
        keys = np.flatnonzero(counts)
        counts = counts[keys]
    else:
        keys, counts = np.unique(pairs, return_counts=True)
    return keys // width, keys % width, counts.astype(np.float64)


def _codes(labels: np.ndarray) -> np.ndarray:
    """The labels themselves when they are small non-negative integers (at most about one per point), else
    their ranks among the distinct labels."""
    small = np.issubdtype(labels.dtype, np.integer) and (
        not labels.size or (labels.min() >= 0 and labels.max() < max(labels.size, 2**20))
    )
    if small:
        return labels
    try:
        return np.unique(labels, return_inverse=True)[1].reshape(-1)
    except TypeError as e:  # an object array of strings and numbers
        raise ValueError(f"labels must be of one sortable kind: {e}") from None


def _entropy(counts: np.ndarray, n: float) -> float:
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum())


def agreement(a: np.ndarray, b: np.ndarray, shuffles: int = 20, seed: int = 0) -> tuple[float, float]:
    """NMI of two labelings of the same points (-1: unassigned, left out) and its chance level: the mean NMI
    after shuffling ``b`` (``shuffles`` seeded draws), which is well above 0 when clusters are many and points
    few. For XDC's video and audio clusters: at chance level, neither modality's clusters are predictable from
    the other, and the cross-modal heads have nothing to learn."""
    if integer(shuffles, "shuffles") < 1:  # the mean of no draws: NaN and a numpy warning, until 2026-12-03
        raise ValueError(f"the chance level needs shuffles >= 1, got {shuffles}")
    a, b = _same_length(a, b)
    if a.dtype.kind not in "biu" or b.dtype.kind not in "biu":  # strings: a numpy error at ">= 0" until 2026-12-02
        raise ValueError(f"agreement takes integer cluster ids (-1: unassigned), got dtypes {a.dtype} and {b.dtype}")
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
    collapsed: bool  # largest_fraction > collapse_threshold(k, the collapse fraction)

    def to_dict(self) -> dict:
        return asdict(self)


def collapse_threshold(k: int, collapse_fraction: float) -> float:
    """The largest cluster's share of the points above which a clustering into ``k`` has collapsed:
    ``collapse_fraction`` of the way from an even split (1/k each) to one cluster holding all. About
    ``collapse_fraction`` itself at k of tens and more; at k = 2 an even split is already half of the points,
    so a bare fraction of 0.5 would call nearly every split a collapse."""
    k = integer(k, "k")
    if k < 1:  # a ZeroDivisionError at k = 0, until 2026-12-02
        raise ValueError(f"a clustering needs k >= 1 clusters, got k={k}")
    return 1 / k + collapse_fraction * (1 - 1 / k)


def cluster_stats(assignments: np.ndarray, k: int, collapse_fraction: float = 0.5) -> ClusterStats:
    """Size statistics of ``assignments`` (labels in [0, k)); collapsed when one cluster holds more than
    ``collapse_threshold(k, collapse_fraction)`` of the points, the degenerate solution DeepCluster's balanced
    sampling fights. k = 1 never collapses: there is nothing to balance. Empty clusters count in k (so in
    ``entropy_ratio``'s log k), not in ``non_empty``, ``median`` or ``smallest_non_empty``. ``ValueError`` for no
    points, k < 1 or not an integer (a numpy one gave numpy values in ``to_dict``), labels that are not 1-D,
    not integers or outside [0, k)."""
    k, assignments = integer(k, "k"), np.asarray(assignments)
    if k < 1 or assignments.size == 0:
        raise ValueError(f"cluster_stats needs k >= 1 and at least one point, got k={k}, {assignments.size} points")
    if assignments.ndim != 1:  # numpy's "object too deep for desired array" from bincount, until 2026-12-03
        raise ValueError(f"assignments must be 1-D, got shape {assignments.shape}")
    if assignments.dtype.kind not in "biu":  # floats and strings: a numpy TypeError from bincount until 2026-12-02
        raise ValueError(f"assignments must be integer cluster ids, got dtype {assignments.dtype}")
    if assignments.min() < 0 or assignments.max() >= k:
        raise ValueError(f"assignments must lie in [0, {k}), got [{assignments.min()}, {assignments.max()}]")
    sizes = np.bincount(assignments, minlength=k)
    present = sizes[sizes > 0]
    p = present / assignments.size
    entropy = float(-(p * np.log(p)).sum()) + 0.0  # + 0.0: one cluster's -(1 * log 1) is -0.0, printed "-0.000"
    largest = int(present.max())
    return ClusterStats(
        k=k,
        non_empty=int(present.size),
        largest=largest,
        largest_fraction=largest / assignments.size,
        smallest_non_empty=int(present.min()),
        median=float(np.median(present)),
        entropy_ratio=entropy / math.log(k) if k > 1 else 1.0,
        collapsed=k > 1 and largest / assignments.size > collapse_threshold(k, collapse_fraction),
    )
