"""Linear probes on frozen features: a linear classifier (logistic regression or linear SVM) whose
regularisation is chosen on a validation split of the training set, evaluated per clip and per video, and
the k-fold protocol of ESC-50 / DCASE built on it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import LinearSVC

from xdc.evaluation.metrics import average_by_group, class_results, group_index, topk_accuracy

CLASSIFIERS = ("logreg", "svm")
# Caps, not typical counts: lbfgs converges in tens of iterations on 512-d features; liblinear's dual solver
# reaches 1000 (and warns) only for large C on overlapping classes, a C that validation then rejects.
LOGREG_MAX_ITER = 1000
SVM_MAX_ITER = 1000


@dataclass
class ProbeResult:
    top1: float  # per video when test groups are given, else per clip
    top5: float  # same level as top1; 1.0 when there are at most 5 classes
    clip_top1: float
    n_train: int  # training clips (validation included)
    n_test: int  # test clips
    classifier: str
    c: float  # regularisation chosen on validation, then refitted on the whole training set
    val_top1: float  # validation accuracy at c, at the level of top1 (per video when train groups are given)
    n_test_videos: int  # test groups; n_test when no groups are given
    # the label of each test video (clip without groups) as given, and the class its mean score ranks first: what
    # top1 counts, kept for per_class and confusion (kfold_probe sums them over the folds)
    video_labels: np.ndarray = field(repr=False, compare=False)
    predicted: np.ndarray = field(repr=False, compare=False)
    # the validation accuracy of each C of the grid, ascending: whether a C at an end beat its neighbour
    val_by_c: dict[float, float] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict:
        """The numbers, with ``per_class`` and ``confusion`` (metrics.class_results) for the arrays of labels."""
        kept = {f.name for f in fields(self)} - {"video_labels", "predicted", "val_by_c"}
        numbers = {f.name: getattr(self, f.name) for f in fields(self) if f.name in kept}
        return {**numbers, **class_results(self.video_labels, self.predicted)}


def train_val_split(
    labels: np.ndarray, groups: np.ndarray | None = None, val_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(fit, val)`` of a split of a training set for choosing hyperparameters.

    The units split are the groups (videos) when given, so the clips of one video never straddle fit and
    validation, else the items. Stratified per class: a class with n >= 2 units sends round(val_fraction * n)
    of them, at least 1 and at most n - 1, to validation; a class with a single unit stays in fit, so the
    classifier fitted for selection still knows every class.
    """
    labels = np.asarray(labels)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    index, first = group_index(groups if groups is not None else np.arange(len(labels)))
    unit_labels = labels[first]
    conflict = labels != unit_labels[index]
    if conflict.any():  # only where groups are given: an item alone has one label
        name = str(np.asarray(groups)[np.argmax(conflict)])
        raise ValueError(f"clips of training group {name!r} have different labels")
    rng = np.random.default_rng(seed)
    val_units = []
    for cls in np.unique(unit_labels):
        members = np.flatnonzero(unit_labels == cls)
        if len(members) >= 2:
            n_val = min(len(members) - 1, max(1, round(val_fraction * len(members))))
            val_units.append(rng.permutation(members)[:n_val])
    if not val_units:
        raise ValueError("too few training items to hold out a validation split: every class has a single unit")
    is_val = np.isin(index, np.concatenate(val_units))
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    test_groups: np.ndarray | None = None,
    classifier: str = "logreg",
    cs: Sequence[float] = (0.01, 0.1, 1, 10, 100),
    val_fraction: float = 0.2,
    seed: int = 0,
    train_groups: np.ndarray | None = None,
) -> ProbeResult:
    """Train a linear classifier on standardised training features, test it per clip and per video.

    Features are standardised with the training set's mean and deviation, then divided by sqrt(D) (unit mean
    squared norm), so the C grid is independent of the feature width.

    The C of ``cs`` with the best validation top-1 (ties: the smallest C, the most regularised) is chosen on
    ``train_val_split`` of the training set, then the classifier is refitted on the whole training set.
    Labels may be any sortable values; the classes are those of the training set, and a test item whose label
    never occurs in training counts as wrong. ``classifier`` is ``"logreg"`` (multinomial logistic regression,
    scores are its probabilities) or ``"svm"`` (one-vs-rest linear SVM as in the AVTS ESC-50/DCASE protocol,
    scores are the softmax of its margins so clips can be averaged like probabilities; that is a choice, the
    margins are not calibrated). Deterministic for a given ``seed``.
    """
    if classifier not in CLASSIFIERS:
        raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
    if not cs or min(cs) <= 0:
        raise ValueError(f"cs must be a non-empty sequence of positive values, got {cs!r}")
    train_x, test_x = _features(train_x, train_y, "train"), _features(test_x, test_y, "test")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train and test features differ in width: {train_x.shape[1]} and {test_x.shape[1]}")
    for groups, x, name in ((train_groups, train_x, "train"), (test_groups, test_x, "test")):
        if groups is not None and len(groups) != len(x):
            raise ValueError(f"{name}_groups has {len(groups)} entries for {len(x)} {name} clips")
    classes, train_labels = np.unique(np.asarray(train_y), return_inverse=True)
    if len(classes) < 2:
        raise ValueError("the training set needs at least two classes")
    val_by_c = _validate(train_x, train_labels, train_groups, classifier, sorted(cs), val_fraction, seed)
    c = max(val_by_c, key=val_by_c.get)  # the first, the smallest C, of the best: the most regularised
    model = _fit(train_x, train_labels, classifier, c, seed)
    # The test set is used only from here on, after the last fit.
    test_labels = _encode(np.asarray(test_y), classes)
    scores = _scores(model, test_x)
    top1, top5, n_videos = _video_accuracy(scores, test_labels, test_groups)
    video_labels, predicted = _video_predictions(scores, np.asarray(test_y), test_groups, classes)
    return ProbeResult(
        top1=top1,
        top5=top5,
        clip_top1=topk_accuracy(scores, test_labels, 1),
        n_train=len(train_x),
        n_test=len(test_x),
        classifier=classifier,
        c=float(c),
        val_top1=val_by_c[c],
        n_test_videos=n_videos,
        video_labels=video_labels,
        predicted=predicted,
        val_by_c=val_by_c,
    )


def deal_folds(y: np.ndarray, groups: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Folds 1..``n`` of every item, for a labelled set without folds of its own: the groups (videos) of each
    class, in an order drawn by ``seed``, are dealt to the folds in turn, the deal going on from class to class, so
    that a group lies in one fold, each fold holds about 1/n of every class and the folds' sizes in groups differ by
    at most one. A group is dealt with the label of its first item. The order is drawn over the sorted group ids,
    so the same items in any order give the same folds."""
    if n < 2:
        raise ValueError(f"{n} folds: k-fold evaluation needs at least two")
    y, groups = np.asarray(y), np.asarray(groups)
    ids, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    if len(ids) < n:
        raise ValueError(f"{len(ids)} videos cannot be dealt into {n} folds")
    drawn = np.random.default_rng(seed).permutation(len(ids))  # a position for every group
    labels = y[first]
    by_class = np.lexsort((drawn, labels))  # the groups class by class, each class's in the drawn order
    fold_of = np.empty(len(ids), dtype=np.int64)
    fold_of[by_class] = np.arange(len(ids)) % n + 1
    return fold_of[inverse.reshape(-1)]


def kfold_probe(
    x: np.ndarray, y: np.ndarray, folds: np.ndarray, groups: np.ndarray | None = None, **probe_kwargs
) -> dict:
    """Cross-validation over predefined folds (ESC-50's 5 official folds): each fold in turn is the test set
    and the others train, C being chosen on a validation split of those others only. Fold 0 is no fold (an item
    of a table without one): its items train in every fold and are never tested.

    ``probe_kwargs`` go to ``linear_probe``. Returns ``folds`` (ids in sorted order), ``results`` (one
    ``ProbeResult`` per fold), ``mean_top1``, ``std_top1`` (population standard deviation over folds, ddof=0),
    ``mean_top5``, ``train_only`` (the items of fold 0), and ``per_class`` and ``confusion`` of the test videos of
    every fold together (metrics.class_results: the counts summed over the folds). A group (e.g. the sub-clips of
    one recording) must lie in a single fold.
    """
    x, y, folds = np.asarray(x), np.asarray(y), np.asarray(folds)
    if not len(x) == len(y) == len(folds):
        raise ValueError(f"x, y and folds differ in length: {len(x)}, {len(y)}, {len(folds)}")
    if groups is not None:
        groups = np.asarray(groups)
        index, first = group_index(groups)
        spans = folds != folds[first][index]
        if spans.any():
            at = np.argmax(spans)
            raise ValueError(f"group {str(groups[at])!r} spans folds {folds[first][index][at]} and {folds[at]}: its "
                             "clips would be both trained and tested on")  # fmt: skip
    fold_ids = np.unique(folds[folds != 0])
    if len(fold_ids) < 2:
        raise ValueError("k-fold evaluation needs at least two folds (fold 0 is none)")
    if x.ndim == 2 and not np.isfinite(x).all():  # named for the whole set, not as one fold's train or test features
        raise ValueError(f"the features of {int((~np.isfinite(x)).any(axis=1).sum())} clips contain NaN or infinity")
    results = []
    for fold in fold_ids:
        test = folds == fold
        train = ~test  # linear_probe fits and validates on train only, so the test fold never reaches training
        try:
            results.append(
                linear_probe(
                    x[train],
                    y[train],
                    x[test],
                    y[test],
                    test_groups=None if groups is None else groups[test],
                    train_groups=None if groups is None else groups[train],
                    **probe_kwargs,
                )
            )
        except ValueError as e:  # which fold's training set has one class, or no class of two units
            raise ValueError(f"fold {fold}: {e}") from None
    top1 = np.array([r.top1 for r in results])
    tested = np.concatenate([r.video_labels for r in results])  # every test video of every fold, once
    predicted = np.concatenate([r.predicted for r in results])
    return {
        "folds": fold_ids.tolist(),
        "results": results,
        "mean_top1": float(top1.mean()),
        "std_top1": float(top1.std()),
        "mean_top5": float(np.mean([r.top5 for r in results])),
        "train_only": int((folds == 0).sum()),
        **class_results(tested, predicted),
    }


def _features(x: np.ndarray, y: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or len(x) == 0 or len(np.asarray(y)) != len(x):
        raise ValueError(f"{name} features must be (N, D) with N >= 1 and one label each, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} features contain NaN or infinity")
    return x


def _encode(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Class index of each label, -1 for a label not among ``classes`` (sorted)."""
    position = np.minimum(np.searchsorted(classes, labels), len(classes) - 1)
    return np.where(classes[position] == labels, position, -1)


def _unit_mean_norm(x: np.ndarray) -> np.ndarray:
    """Standardised rows have mean squared norm D; dividing by sqrt(D) makes it 1, so a C means the same for
    any feature width, and the SVM solver, whose time grows with C * |x|^2, stays fast across the C grid."""
    return x / np.sqrt(x.shape[1])


def _fit(x: np.ndarray, labels: np.ndarray, classifier: str, c: float, seed: int) -> Pipeline:
    # The scaling is part of the model, so it is fitted on exactly the data the classifier is fitted on.
    if classifier == "logreg":
        model = LogisticRegression(C=c, max_iter=LOGREG_MAX_ITER)
    else:
        # The dual solver, measured 2-3x faster than the primal one on 5k-10k x 512 features with 50 classes.
        model = LinearSVC(C=c, dual=True, max_iter=SVM_MAX_ITER, random_state=seed)
    return make_pipeline(StandardScaler(), FunctionTransformer(_unit_mean_norm), model).fit(x, labels)


def _scores(model: Pipeline, x: np.ndarray) -> np.ndarray:
    """Class scores (N, C) that sum to 1 per row; classes are 0..C-1, all present in the fitted data."""
    if isinstance(model[-1], LogisticRegression):
        return model.predict_proba(x)
    margins = model.decision_function(x)
    if margins.ndim == 1:  # binary LinearSVC: one margin, positive for class 1
        margins = np.stack([-margins, margins], axis=1)
    return softmax(margins, axis=1)


def _video_accuracy(
    scores: np.ndarray, labels: np.ndarray, groups: np.ndarray | None
) -> tuple[float, float, int]:
    """Top-1, top-5 and count of the videos (clip scores averaged per group), or of the clips without groups."""
    if groups is not None:
        scores, labels, _ = average_by_group(scores, groups, labels)
    return topk_accuracy(scores, labels, 1), topk_accuracy(scores, labels, 5), len(labels)


def _video_predictions(
    scores: np.ndarray, labels: np.ndarray, groups: np.ndarray | None, classes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The label of each video (or clip), as given, and the class of its highest mean score; the lower index on a
    tie, as topk_accuracy breaks them, so that the videos counted right are those of _video_accuracy's top-1."""
    if groups is not None:
        scores, labels, _ = average_by_group(scores, groups, labels)
    return labels, classes[scores.argmax(axis=1)]


def _validate(
    x: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None,
    classifier: str,
    cs: Sequence[float],
    val_fraction: float,
    seed: int,
) -> dict[float, float]:
    """The validation top-1 of each C of ``cs`` (ascending), in that order."""
    fit, val = train_val_split(labels, groups, val_fraction, seed)
    val_groups = None if groups is None else np.asarray(groups)[val]
    return {
        c: _video_accuracy(_scores(_fit(x[fit], labels[fit], classifier, c, seed), x[val]), labels[val], val_groups)[0]
        for c in cs
    }
