import json

import numpy as np
import pytest

from xdc.evaluation import probe
from xdc.evaluation.metrics import average_by_group, class_results, cluster_metrics, topk_accuracy
from xdc.evaluation.probe import ProbeResult, deal_folds, kfold_probe, linear_probe, train_val_split

CS = (0.01, 0.1, 1, 10, 100)


def blobs(n: int, classes: int = 5, dim: int = 64, spread: float = 0.5, seed: int = 0):
    """Gaussian blobs around well-separated class centres: linearly separable in practice."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).normal(size=(classes, dim)) * 3
    y = rng.integers(0, classes, n)
    return (centres[y] + spread * rng.normal(size=(n, dim))).astype(np.float32), y


# ---------- metrics ----------


def test_topk_accuracy_counts_the_label_among_the_k_best():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    labels = np.array([1, 1, 0])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, labels, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, labels, 3) == 1.0
    assert topk_accuracy(scores, labels, 10) == 1.0  # k above C counts as C


def test_topk_accuracy_breaks_ties_towards_the_lower_class_index():
    scores = np.full((3, 4), 0.25)
    assert topk_accuracy(scores, np.array([0, 0, 0]), 1) == 1.0
    assert topk_accuracy(scores, np.array([1, 1, 1]), 1) == 0.0
    assert topk_accuracy(scores, np.array([1, 1, 1]), 2) == 1.0
    assert topk_accuracy(scores, np.array([3, 3, 3]), 3) == 0.0


def test_topk_accuracy_counts_negative_labels_as_wrong_and_rejects_bad_input():
    scores = np.eye(3)
    assert topk_accuracy(scores, np.array([0, 1, -1]), 3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        topk_accuracy(scores, np.array([0, 1, 3]), 1)
    with pytest.raises(ValueError):
        topk_accuracy(scores, np.array([0, 1, 2]), 0)
    with pytest.raises(ValueError):
        topk_accuracy(np.full((3, 3), np.nan), np.array([0, 1, 2]), 1)


def test_video_average_right_when_one_confident_clip_outweighs_two_unsure_wrong_ones():
    clips = np.array([[0.3, 0.4, 0.3], [0.3, 0.4, 0.3], [0.9, 0.05, 0.05]])  # label 0: two wrong, one right
    scores, labels, ids = average_by_group(clips, np.array(["v", "v", "v"]), np.array([0, 0, 0]))
    assert topk_accuracy(clips, np.zeros(3, dtype=int), 1) == pytest.approx(1 / 3)
    np.testing.assert_allclose(scores, [[0.5, 0.85 / 3, 0.65 / 3]])
    assert topk_accuracy(scores, labels, 1) == 1.0
    assert ids.tolist() == ["v"]


def test_video_average_wrong_when_one_confident_wrong_clip_outweighs_two_unsure_right_ones():
    clips = np.array([[0.4, 0.3, 0.3], [0.4, 0.3, 0.3], [0.0, 1.0, 0.0]])
    scores, labels, _ = average_by_group(clips, np.array([7, 7, 7]), np.array([0, 0, 0]))
    assert topk_accuracy(clips, np.zeros(3, dtype=int), 1) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, labels, 1) == 0.0


def test_average_by_group_orders_groups_by_first_appearance():
    clips = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    scores, labels, ids = average_by_group(clips, np.array(["b", "a", "b", "c"]), np.array([0, 1, 0, 1]))
    assert ids.tolist() == ["b", "a", "c"]
    assert labels.tolist() == [0, 1, 1]
    np.testing.assert_allclose(scores, [[0.5, 0.5], [0.0, 1.0], [1.0, 0.0]])


def test_average_by_group_raises_on_conflicting_labels():
    with pytest.raises(ValueError, match="'b'"):
        average_by_group(np.eye(3), np.array(["a", "b", "b"]), np.array([0, 1, 2]))


def test_cluster_metrics_perfect_and_permuted_clusterings_score_one():
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    for assignments in (labels, np.array([5, 5, 3, 3, 9, 9, 9])):
        m = cluster_metrics(assignments, labels)
        for key in ("nmi", "ari", "purity", "hungarian_accuracy"):
            assert m[key] == pytest.approx(1.0)
        assert (m["clusters"], m["classes"], m["n"]) == (3, 3, 7)


def test_cluster_metrics_single_cluster():
    labels = np.array([0, 0, 0, 1, 1, 2])
    m = cluster_metrics(np.zeros(6, dtype=int), labels)
    assert m["purity"] == pytest.approx(0.5)
    assert m["hungarian_accuracy"] == pytest.approx(0.5)
    assert m["nmi"] == pytest.approx(0.0)
    assert m["ari"] == pytest.approx(0.0)


def test_cluster_metrics_over_clustering_keeps_purity_but_not_hungarian_accuracy():
    m = cluster_metrics(np.array([0, 1, 2, 3]), np.array([0, 0, 1, 1]))
    assert m["purity"] == 1.0
    assert m["hungarian_accuracy"] == 0.5


def test_cluster_metrics_ignore_negative_labels_and_assignments():
    m = cluster_metrics(np.array([0, 0, 1, 1, 0, -1]), np.array([0, 0, 1, 1, -1, 1]))
    assert m["n"] == 4
    assert m["purity"] == 1.0 and m["nmi"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        cluster_metrics(np.array([-1, 0]), np.array([0, -1]))



def test_cluster_metrics_of_one_class_or_one_cluster():
    both = cluster_metrics(np.zeros(4, int), np.zeros(4, int))
    assert both == {"nmi": 1.0, "ari": 1.0, "purity": 1.0, "hungarian_accuracy": 1.0, "clusters": 1, "classes": 1,
                    "n": 4}  # fmt: skip
    one_class = cluster_metrics(np.arange(4), np.zeros(4, int))
    assert (one_class["nmi"], one_class["ari"], one_class["purity"], one_class["hungarian_accuracy"]) == (0, 0, 1, 0.25)


def test_cluster_metrics_refuse_ids_that_are_not_integers():
    """Until 2026-12-02 a NaN assignment was dropped as if unassigned, and strings failed inside numpy."""
    with pytest.raises(ValueError, match="assignments must be integer ids"):
        cluster_metrics(np.array([0.0, np.nan, 1.0]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="labels must be integer ids"):
        cluster_metrics(np.array([0, 1]), np.array(["cat", "dog"]))


# ---------- linear probe ----------


def test_class_results_count_each_class_of_the_test_labels_and_of_the_predictions():
    true = np.array(["cat", "cat", "dog", "dog", "dog", "\u00e9meu", "\u00e9meu"])  # émeu: tested, never predicted
    predicted = np.array(["cat", "dog", "dog", "dog", "fox", "cat", "cat"])  # fox: predicted, never a test label
    out = class_results(true, predicted)
    assert out["confusion"] == {"classes": ["cat", "dog", "fox", "\u00e9meu"],  # sorted as the probe sorts classes
                                "counts": [[1, 1, 0, 0], [0, 2, 1, 0], [0, 0, 0, 0], [2, 0, 0, 0]]}  # fmt: skip
    assert out["per_class"] == {"cat": {"n": 2, "top1": 0.5}, "dog": {"n": 3, "top1": 2 / 3},
                                "\u00e9meu": {"n": 2, "top1": 0.0}}  # fmt: skip
    counts = np.array(out["confusion"]["counts"])
    assert np.trace(counts) / counts.sum() == np.mean(true == predicted) == 3 / 7
    assert json.loads(json.dumps(out, ensure_ascii=False)) == out  # plain Python values: JSON as they are


def test_class_results_name_number_labels_in_their_numeric_order():
    out = class_results(np.array([10, 2, 2, 1]), np.array([10, 2, 1, 1]))
    assert out["confusion"] == {"classes": ["1", "2", "10"], "counts": [[1, 0, 0], [1, 1, 0], [0, 0, 1]]}
    assert out["per_class"] == {"1": {"n": 1, "top1": 1.0}, "2": {"n": 2, "top1": 0.5}, "10": {"n": 1, "top1": 1.0}}
    assert list(out["per_class"]) == ["1", "2", "10"] and json.loads(json.dumps(out)) == out
    with pytest.raises(ValueError, match="one shape"):
        class_results(np.array([1, 2]), np.array([1]))


def test_linear_probe_separates_blobs():
    x, y = blobs(1000)
    r = linear_probe(x[:500], y[:500], x[500:], y[500:])
    assert r.top1 >= 0.98 and r.clip_top1 == r.top1
    assert r.top5 == 1.0  # 5 classes
    assert (r.n_train, r.n_test, r.n_test_videos, r.classifier) == (500, 500, 500, "logreg")
    assert r.c in CS and 0.9 <= r.val_top1 <= 1.0
    assert r.to_dict()["top1"] == r.top1


def test_linear_probe_svm_separates_blobs():
    x, y = blobs(1000)
    r = linear_probe(x[:500], y[:500], x[500:], y[500:], classifier="svm")
    assert r.top1 >= 0.98 and r.classifier == "svm" and r.c in CS


def test_linear_probe_on_shuffled_labels_is_at_chance():
    classes, n_test = 5, 2000
    x, _ = blobs(1000 + n_test, classes, spread=2.0)
    y = np.random.default_rng(5).permutation(np.arange(len(x)) % classes)  # balanced labels, unrelated to x
    r = linear_probe(x[:1000], y[:1000], x[1000:], y[1000:], cs=(0.01, 1))
    chance, std = 1 / classes, np.sqrt(1 / classes * (1 - 1 / classes) / n_test)
    assert abs(r.top1 - chance) < 3 * std
    assert r.top5 >= r.top1


def test_linear_probe_chooses_c_by_validation_accuracy():
    x, y = blobs(800, classes=10, spread=6.0)
    r = linear_probe(x[:400], y[:400], x[400:], y[400:], seed=0)
    fit, val = train_val_split(y[:400], None, 0.2, seed=0)
    # Each C alone, trained on the fit part and tested on the validation part, reproduces the selection.
    accuracies = [linear_probe(x[fit], y[fit], x[val], y[val], cs=(c,)).top1 for c in CS]
    assert r.val_top1 == max(accuracies)
    assert r.c == CS[int(np.argmax(accuracies))]  # ties go to the smallest C


def test_linear_probe_top5_is_at_least_top1_with_many_classes():
    x, y = blobs(1200, classes=20, dim=16, spread=4.0)
    r = linear_probe(x[:600], y[:600], x[600:], y[600:], cs=(0.1,))
    assert r.c == 0.1
    assert r.top1 < 1.0 and r.top5 >= r.top1


def test_linear_probe_averages_clips_per_video():
    rng = np.random.default_rng(0)
    groups = np.arange(1200) // 4  # 300 videos of 4 clips
    y = rng.integers(0, 5, 300)[groups]
    x = rng.normal(size=(5, 64))[y] + 3.5 * rng.normal(size=(1200, 64))  # noisy clips: single clips often wrong
    r = linear_probe(x[:600], y[:600], x[600:], y[600:], test_groups=groups[600:], train_groups=groups[:600])
    assert (r.n_test, r.n_test_videos) == (600, 150)
    assert r.clip_top1 < 0.9 and r.top1 > r.clip_top1  # averaging four noisy clips beats one


def test_linear_probe_accepts_string_labels_and_counts_unseen_test_classes_as_wrong():
    x, y = blobs(1000)
    names = np.array(["dog", "rain", "siren", "clock", "wind"])[y]
    test_names = names[500:].astype("U14")  # wide enough for the new name
    test_names[:100] = "crackling_fire"  # never seen in training
    r = linear_probe(x[:500], names[:500], x[500:], test_names)
    assert r.top1 == pytest.approx(r.clip_top1)
    assert 0.78 <= r.top1 <= 0.8  # the 100 unseen items are wrong, the 400 others right
    record = r.to_dict()
    assert record["per_class"]["crackling_fire"] == {"n": 100, "top1": 0.0}
    assert sum(c["n"] for c in record["per_class"].values()) == 500


def test_confusion_trace_is_the_video_level_top1_exactly():
    """The confusion counts the videos top1 counts: clip scores averaged per group, a test class never seen in
    training wrong, a training class absent from the test labels predicted."""
    rng = np.random.default_rng(0)
    groups = np.arange(1200) // 4  # 300 videos of 4 clips
    y = rng.integers(0, 5, 300)[groups]
    x = rng.normal(size=(5, 64))[y] + 3.5 * rng.normal(size=(1200, 64))  # noisy: some videos wrong
    test_y = np.where(y[600:] == 4, 7, y[600:])  # class 4 is only trained, class 7 only tested
    r = linear_probe(x[:600], y[:600], x[600:], test_y, test_groups=groups[600:], train_groups=groups[:600])
    confusion = r.to_dict()["confusion"]
    counts = np.array(confusion["counts"])
    assert confusion["classes"] == ["0", "1", "2", "3", "4", "7"] and counts.sum() == r.n_test_videos == 150
    assert counts[4].sum() == 0 and counts[:, 4].sum() > 0 and counts[5, 5] == 0  # 4 predicted, 7 never
    assert 0.5 < r.top1 < 0.8 and np.trace(counts) / counts.sum() == r.top1


def test_linear_probe_is_deterministic():
    x, y = blobs(600, spread=3.0)
    runs = [linear_probe(x[:300], y[:300], x[300:], y[300:], classifier="svm", seed=3) for _ in range(2)]
    assert runs[0] == runs[1]


def test_linear_probe_rejects_bad_input():
    x, y = blobs(100)
    with pytest.raises(ValueError):
        linear_probe(x, y, x, y, classifier="mlp")
    with pytest.raises(ValueError):
        linear_probe(x, np.zeros(100, dtype=int), x, y)  # one class
    with pytest.raises(ValueError):
        linear_probe(x, y, x[:, :10], y)
    with pytest.raises(ValueError):
        linear_probe(x, y, x, y, cs=())
    with pytest.raises(ValueError, match="test_groups"):
        linear_probe(x, y, x, y, test_groups=np.arange(99))


def test_train_val_split_keeps_groups_whole_and_stratifies():
    labels = np.repeat(np.array([0, 1, 2, 3]), 30)
    groups = np.arange(120) // 3  # 10 videos of 3 clips per class
    labels[-3:] = 4  # a class with a single video stays in fit
    fit, val = train_val_split(labels, groups, val_fraction=0.2, seed=0)
    assert np.intersect1d(fit, val).size == 0 and len(fit) + len(val) == 120
    assert not set(groups[fit]) & set(groups[val])
    assert sorted(set(labels[val])) == [0, 1, 2, 3]
    assert set(labels[fit]) == {0, 1, 2, 3, 4}
    assert np.array_equal(val, train_val_split(labels, groups, 0.2, seed=0)[1])
    assert not np.array_equal(val, train_val_split(labels, groups, 0.2, seed=1)[1])


# ---------- k-fold ----------


def leaky_folds(n: int = 1000, classes: int = 5, folds: int = 5):
    """Noise features, plus a one-hot of the label written in a block of columns that only the items of one
    fold use: a classifier that saw a fold's items would read its labels off that block."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, n)
    fold = np.arange(n) % folds + 1  # ids from 1: 0 is no fold
    leak = np.zeros((n, folds * classes))
    leak[np.arange(n), (fold - 1) * classes + y] = 10.0
    return np.hstack([rng.normal(size=(n, 8)), leak]), y, fold


def test_kfold_never_trains_on_the_test_fold():
    x, y, folds = leaky_folds()
    out = kfold_probe(x, y, folds, cs=(1.0,))
    assert out["folds"] == [1, 2, 3, 4, 5] and len(out["results"]) == 5 and out["train_only"] == 0
    assert out["mean_top1"] < 0.35  # chance is 0.2; a leak would give 1.0
    # The same features with the fold used in training: the leak is read, the test is meaningful.
    mixed = linear_probe(x, y, x[folds == 1], y[folds == 1], cs=(1.0,))
    assert mixed.top1 == 1.0


def test_kfold_passes_only_the_other_folds_to_training(monkeypatch):
    x, y = blobs(200)
    folds, groups = np.arange(200) % 5, np.arange(200)  # fold 0: no fold
    x = np.hstack([x, groups[:, None]])  # last column: item id
    calls = []

    def spy(train_x, train_y, test_x, test_y, **kwargs):
        calls.append((train_x[:, -1], test_x[:, -1], kwargs["train_groups"], kwargs["test_groups"]))
        return ProbeResult(1.0, 1.0, 1.0, len(train_x), len(test_x), "logreg", 1.0, 1.0, len(test_x), test_y, test_y)

    monkeypatch.setattr(probe, "linear_probe", spy)
    out = kfold_probe(x, y, folds, groups=groups)
    assert len(calls) == 4 and out["std_top1"] == 0.0 and out["folds"] == [1, 2, 3, 4] and out["train_only"] == 40
    for fold, (train_ids, test_ids, train_groups, test_groups) in enumerate(calls, start=1):
        assert set(folds[test_ids.astype(int)]) == {fold}
        assert not set(train_ids) & set(test_ids) and len(train_ids) + len(test_ids) == 200
        assert set(np.flatnonzero(folds == 0)) <= set(train_ids)  # items of no fold train in every fold
        assert not set(train_groups) & set(test_groups)


def test_kfold_mean_and_population_std():
    x, y = blobs(500, spread=8.0)
    folds = np.arange(500) % 5 + 1
    out = kfold_probe(x, y, folds, cs=(0.1, 1), classifier="svm")
    top1 = [r.top1 for r in out["results"]]
    assert out["mean_top1"] == pytest.approx(np.mean(top1))
    assert out["std_top1"] == pytest.approx(np.std(top1, ddof=0))
    assert all(r.classifier == "svm" and r.n_test == 100 for r in out["results"])


def test_kfold_sums_the_folds_confusions():
    x, y = blobs(500, spread=8.0)
    folds = np.arange(500) % 5 + 1
    out = kfold_probe(x, np.array(["a", "b", "c", "d", "e"])[y], folds, cs=(0.1,))
    summed = np.zeros((5, 5), dtype=np.int64)
    for r in out["results"]:
        confusion = r.to_dict()["confusion"]
        counts = np.array(confusion["counts"])
        assert np.trace(counts) / counts.sum() == r.top1  # each fold's: its top1 exactly
        index = [out["confusion"]["classes"].index(name) for name in confusion["classes"]]
        summed[np.ix_(index, index)] += counts
    assert out["confusion"]["classes"] == ["a", "b", "c", "d", "e"] and out["confusion"]["counts"] == summed.tolist()
    assert summed.sum() == 500 and np.trace(summed) / 500 == pytest.approx(out["mean_top1"])  # folds of 100 videos
    assert {name: c["n"] for name, c in out["per_class"].items()} == dict(zip("abcde", np.bincount(y).tolist()))


def test_kfold_rejects_a_group_spanning_folds():
    x, y = blobs(20)
    with pytest.raises(ValueError, match="spans"):
        kfold_probe(x, y, np.arange(20) % 2 + 1, groups=np.arange(20) // 4)


def test_dealt_folds_keep_groups_whole_and_split_every_class_evenly():
    """Features of one's own labels have no folds: each class's videos are dealt over the folds, a video's clips
    in one fold, the same folds for the same videos in any order and another deal for another seed."""
    videos = [(f"v{i:02d}", "a" if i < 13 else "b" if i < 21 else "c") for i in range(24)]  # 13, 8 and 3 videos
    groups = np.array([v for v, _ in videos for _ in range(3)])  # 3 clips each
    y = np.array([label for _, label in videos for _ in range(3)])
    folds = deal_folds(y, groups, 4, seed=0)
    assert set(folds) == {1, 2, 3, 4}
    fold_of = {}
    for group, fold in zip(groups, folds):
        assert fold_of.setdefault(group, fold) == fold  # a video in one fold
    for label, total in (("a", 13), ("b", 8), ("c", 3)):
        counts = np.bincount([fold_of[v] for v, lab in videos if lab == label], minlength=5)[1:]
        assert counts.sum() == total and counts.max() - counts.min() <= 1  # stratified
    assert sorted(np.bincount(list(fold_of.values()))[1:]) == [6, 6, 6, 6]  # the deal goes on across classes
    order = np.random.default_rng(1).permutation(len(y))
    assert np.array_equal(deal_folds(y[order], groups[order], 4, seed=0), folds[order])
    assert not np.array_equal(deal_folds(y, groups, 4, seed=1), folds)
    with pytest.raises(ValueError, match="24 videos cannot be dealt into 25 folds"):
        deal_folds(y, groups, 25)


def test_kfold_needs_two_folds_besides_fold_0():
    x, y = blobs(20)
    with pytest.raises(ValueError, match="at least two folds"):
        kfold_probe(x, y, np.arange(20) % 2)  # fold 1 and items of no fold
