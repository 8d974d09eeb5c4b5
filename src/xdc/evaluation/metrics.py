"""Evaluation metrics over numpy arrays: top-k accuracy, video-level averaging of clip scores, and the quality
of a clustering measured against ground-truth labels."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from xdc.clustering.metrics import ari_of_table, contingency, nmi_of_table


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` highest scores (``k`` above C counts as C).

    Ties are broken towards the lower class index, as a stable sort of the negated scores would, so the result
    does not depend on the platform's sort. A label of -1 (or any negative one) means "not a class of these
    scores", e.g. a test class never seen in training, and always counts as wrong.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ValueError(f"need scores (N, C) and labels (N,), got {scores.shape} and {labels.shape}")
    if scores.shape[0] == 0:
        raise ValueError("topk_accuracy needs at least one row")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.max() >= scores.shape[1]:
        raise ValueError(f"label {labels.max()} is out of range for {scores.shape[1]} score columns")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    known = labels >= 0
    rows = np.flatnonzero(known)
    true = scores[rows, labels[known]][:, None]
    columns = np.arange(scores.shape[1])
    # Rank of the true class without sorting: classes scoring higher, plus tied classes with a lower index.
    higher = (scores[rows] > true).sum(axis=1)
    tied_before = ((scores[rows] == true) & (columns < labels[known][:, None])).sum(axis=1)
    return float((higher + tied_before < k).sum() / len(labels))


def average_by_group(
    scores: np.ndarray, groups: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean of the clip scores of each group (video), the protocol's "average the softmax of several clips".

    ``scores`` should be probabilities (rows of a softmax); averaging is done on whatever is given. Returns
    ``(group_scores (G, C), group_labels (G,), group_ids (G,))`` with groups in order of first appearance.
    Raises ``ValueError`` when the clips of one group carry different labels: that is a bug in the inputs,
    and a silent choice of one label would bias the accuracy.
    """
    scores = np.asarray(scores)
    groups = np.asarray(groups)
    labels = np.asarray(labels)
    if scores.ndim != 2 or groups.shape != (scores.shape[0],) or labels.shape != (scores.shape[0],):
        raise ValueError(
            f"need scores (N, C), groups (N,), labels (N,); got {scores.shape}, {groups.shape}, {labels.shape}"
        )
    if scores.shape[0] == 0:
        raise ValueError("average_by_group needs at least one row")
    index, first = group_index(groups)
    group_labels = labels[first]
    conflict = labels != group_labels[index]
    if conflict.any():
        raise ValueError(f"clips of group {str(groups[np.argmax(conflict)])!r} have different labels")
    sums = np.zeros((len(first), scores.shape[1]))
    np.add.at(sums, index, scores)
    return sums / np.bincount(index)[:, None], group_labels, groups[first]


def group_index(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group number of every item, numbering groups by first appearance, and the position of each group's
    first item: ``groups[first]`` are the group ids in that order."""
    _, first, inverse = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    # np.unique numbers groups in sorted order; renumber them by first appearance.
    appearance = np.argsort(first)
    renumber = np.empty_like(appearance)
    renumber[appearance] = np.arange(len(appearance))
    return renumber[inverse.reshape(-1)], first[appearance]


def cluster_metrics(assignments: np.ndarray, labels: np.ndarray) -> dict:
    """How well cluster ids match ground-truth classes; items with a negative label or assignment are ignored.

    Keys: ``nmi`` (arithmetic-mean normalisation, as ``xdc.clustering.metrics.nmi``), ``ari`` (adjusted Rand),
    ``purity`` (each cluster counted as its majority class), ``hungarian_accuracy`` (best one-to-one matching
    of clusters to classes; items of unmatched clusters or classes count as wrong, so over-clustering is
    penalised here and not in purity), ``clusters`` and ``classes`` (distinct ids among the kept items), ``n``
    (kept items). One cluster and one class: every score 1; one of the two only: NMI and ARI 0 (the one says
    nothing about the other), as scikit-learn's. Ids must be integers (``ValueError`` otherwise: a float NaN
    was dropped as if negative, until 2026-12-02), and some item must keep both.
    """
    assignments = np.asarray(assignments)
    labels = np.asarray(labels)
    if assignments.shape != labels.shape or assignments.ndim != 1:
        raise ValueError(f"need assignments and labels of one shape (N,), got {assignments.shape} and {labels.shape}")
    for name, ids in (("assignments", assignments), ("labels", labels)):
        if ids.dtype.kind not in "biu":
            raise ValueError(f"{name} must be integer ids (negative: none), got dtype {ids.dtype}")
    keep = (assignments >= 0) & (labels >= 0)
    if not keep.any():
        raise ValueError("no item has both a label and an assignment >= 0")
    a, y = assignments[keep], labels[keep]
    table = contingency(y, a)  # (classes, clusters) counts: every score below comes from it
    rows, cols = linear_sum_assignment(table, maximize=True)
    return {
        "nmi": nmi_of_table(table),
        "ari": ari_of_table(table),
        "purity": float(table.max(axis=0).sum() / len(y)),
        "hungarian_accuracy": float(table[rows, cols].sum() / len(y)),
        "clusters": int(table.shape[1]),
        "classes": int(table.shape[0]),
        "n": int(len(y)),
    }


def class_results(true: np.ndarray, predicted: np.ndarray) -> dict:
    """Per-class accuracy and confusion matrix of one prediction per test item (video): ``true`` and ``predicted``
    hold labels as given (any sortable values: strings, numbers), so a true class may be one never predicted, or
    not among the classifier's classes at all, and a predicted one may be absent from the test labels.

    Returns plain Python values, for JSON: ``per_class``, for each class of the test items by name (``str`` of the
    label), ``n`` (its items) and ``top1`` (the fraction of them predicted as it); ``confusion``, ``classes`` (the
    names of every true and predicted label, sorted as their values are: 2 before 10 for numbers) and ``counts``
    (rows: true class, columns: predicted). The trace of ``counts`` over its sum is the top-1 accuracy.
    """
    true, predicted = np.asarray(true), np.asarray(predicted)
    if true.ndim != 1 or predicted.shape != true.shape:
        raise ValueError(f"need true and predicted labels of one shape (N,), got {true.shape} and {predicted.shape}")
    classes, codes = np.unique(np.concatenate([true, predicted]), return_inverse=True)
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(counts, (codes[: len(true)], codes[len(true) :]), 1)
    names = [str(name) for name in classes.tolist()]
    n = counts.sum(axis=1)
    return {
        "per_class": {name: {"n": int(n[i]), "top1": float(counts[i, i] / n[i])}
                      for i, name in enumerate(names) if n[i]},
        "confusion": {"classes": names, "counts": counts.tolist()},
    }
