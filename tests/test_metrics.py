"""Pin the definitions of mlrpl.metrics (see the module docstring)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from mlrpl.errors import DataError, MlrplError
from mlrpl.metrics import (
    METRIC_KEYS,
    MetricWarning,
    average_precision,
    compute_metrics,
    mean_average_precision,
    metric_keys,
    per_class_ap,
    per_class_report,
    threshold_metrics,
)


# ----------------------------------------------------------------------------------------------
# slow, literal reference implementations (loops), used on small random data


def _ref_voc(scores, targets):
    """VOC 2010+ code as in HCP-MLR-PL / SSGRL, on known entries, stable descending order."""
    keep = targets != 0
    s, t = scores[keep], targets[keep]
    npos = int((t == 1).sum())
    if npos == 0:
        return math.nan
    order = np.argsort(-s, kind="stable")
    t = t[order]
    tp = np.cumsum(t == 1)
    fp = np.cumsum(t == -1)
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _ref_rank(scores, targets):
    keep = targets != 0
    s, t = scores[keep], targets[keep]
    if not (t == 1).any():
        return math.nan
    t = t[np.argsort(-s, kind="stable")]
    precs = [np.mean(t[: r + 1] == 1) for r in range(len(t)) if t[r] == 1]
    return float(np.mean(precs))


def _ref_sklearn(scores, targets):
    keep = targets != 0
    if not (targets[keep] == 1).any():
        return math.nan
    return float(average_precision_score(targets[keep] == 1, scores[keep]))


def _ref_threshold(scores, labels, thr, top_k=None):
    n, c = scores.shape
    thr = np.broadcast_to(np.asarray(thr, dtype=np.float64), (c,))
    prob = 1.0 / (1.0 + np.exp(-scores.astype(np.float64)))
    nc, np_, ng = np.zeros(c), np.zeros(c), np.zeros(c)
    for i in range(n):
        allowed = set(range(c))
        if top_k is not None:
            allowed = set(sorted(range(c), key=lambda j: (-scores[i, j], j))[:top_k])
        for j in range(c):
            if labels[i, j] == 0:
                continue
            pred = prob[i, j] >= thr[j] and j in allowed
            np_[j] += pred
            ng[j] += labels[i, j] == 1
            nc[j] += pred and labels[i, j] == 1
    cls = [j for j in range(c) if ng[j] > 0]
    cp = np.mean([nc[j] / np_[j] if np_[j] else 0.0 for j in cls])
    cr = np.mean([nc[j] / ng[j] for j in cls])
    op = nc.sum() / np_.sum() if np_.sum() else 0.0
    or_ = nc.sum() / ng.sum()
    f1 = lambda p, r: 0.0 if p + r == 0 else 2 * p * r / (p + r)  # noqa: E731
    return {"CP": cp, "CR": cr, "CF1": f1(cp, cr), "OP": op, "OR": or_, "OF1": f1(op, or_)}


def _random_problem(rng, n=60, c=7, p_unknown=0.3, ties=False):
    scores = rng.normal(size=(n, c)).astype(np.float32)
    if ties:
        scores = np.round(scores * 2) / 2  # few distinct values
    labels = np.where(rng.random((n, c)) < 0.35, 1, -1).astype(np.int8)
    labels[rng.random((n, c)) < p_unknown] = 0
    labels[0, :] = 1  # every class has at least one positive
    return scores, labels


# ----------------------------------------------------------------------------------------------
# average precision: hand-worked values


@pytest.mark.parametrize("ranking, voc, rank", [
    ([+1, -1, +1], (1 + 2 / 3) / 2, (1 + 2 / 3) / 2),             # 0.8333 both
    ([+1, -1, -1, +1, +1], (1 + 0.6 + 0.6) / 3, (1 + 0.5 + 0.6) / 3),  # envelope lifts 2/4 to 3/5
    ([-1, +1, +1], 2 / 3, (1 / 2 + 2 / 3) / 2),                   # 0.6667 vs 0.5833
    ([-1, +1], 0.5, 0.5),
    ([+1, +1, -1], 1.0, 1.0),
    ([-1, -1, +1, -1, +1], 2 / 5, (1 / 3 + 2 / 5) / 2),            # 0.4 vs 0.3667
])
def test_ap_hand_cases(ranking, voc, rank):
    n = len(ranking)
    scores = np.linspace(1.0, 0.0, n)  # strictly decreasing: the ranking is the list order
    targets = np.array(ranking)
    assert average_precision(scores, targets, "voc") == pytest.approx(voc, abs=1e-12)
    assert average_precision(scores, targets, "rank") == pytest.approx(rank, abs=1e-12)
    # no ties: sklearn's AP is the non-interpolated one
    assert average_precision(scores, targets, "sklearn") == pytest.approx(rank, abs=1e-12)


def test_ap_plus_minus_plus_value():
    assert average_precision([0.9, 0.8, 0.7], [1, -1, 1]) == pytest.approx(0.833333333, abs=1e-8)


def test_ap_no_positive_is_nan():
    for kind in ("voc", "rank", "sklearn"):
        assert math.isnan(average_precision([0.1, 0.2], [-1, -1], kind))
        assert math.isnan(average_precision([0.1, 0.2], [0, 0], kind))
        assert math.isnan(average_precision(np.zeros(0), np.zeros(0, np.int8), kind))


def test_ap_only_positives_is_one():
    for kind in ("voc", "rank", "sklearn"):
        assert average_precision([0.3, 0.1, 0.2], [1, 1, 1], kind) == 1.0


# ----------------------------------------------------------------------------------------------
# ties


def test_ties_sklearn_groups_while_voc_and_rank_use_dataset_order():
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    # tied pair in dataset order (+, -): stable order ranks the positive first
    a = np.array([1, 1, -1, -1])
    assert average_precision(scores, a, "rank") == 1.0
    assert average_precision(scores, a, "voc") == 1.0
    # same pair in dataset order (-, +): ranked second
    b = np.array([1, -1, 1, -1])
    assert average_precision(scores, b, "rank") == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(scores, b, "voc") == pytest.approx((1 + 2 / 3) / 2)
    # sklearn: one operating point for the tied group (tp=2, fp=1): (1 + 2/3) / 2 for both orders
    for t in (a, b):
        assert average_precision(scores, t, "sklearn") == pytest.approx((1 + 2 / 3) / 2)
        assert average_precision(scores, t, "sklearn") == pytest.approx(
            average_precision_score(t == 1, scores))


def test_all_tied_scores():
    scores = np.zeros(5)
    t = np.array([-1, 1, -1, 1, -1])
    assert average_precision(scores, t, "sklearn") == pytest.approx(2 / 5)
    assert average_precision(scores, t, "rank") == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert average_precision(scores, t, "voc") == pytest.approx(0.5)


def test_tie_with_unknown_entry_in_the_group():
    # the unknown entry shares the tied score; it must not change the group's counts
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.1])
    t = np.array([1, 0, 1, -1, -1])
    known = t != 0
    assert average_precision(scores, t, "sklearn") == pytest.approx(
        average_precision_score(t[known] == 1, scores[known]))


# ----------------------------------------------------------------------------------------------
# against scikit-learn and the literal references on random data


@pytest.mark.parametrize("seed", range(5))
def test_ap_sklearn_matches_sklearn_untied(seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(200, 6))
    labels = np.where(rng.random((200, 6)) < 0.3, 1, -1).astype(np.int8)
    ap = per_class_ap(scores, labels, "sklearn")
    ref = [average_precision_score(labels[:, c] == 1, scores[:, c]) for c in range(6)]
    np.testing.assert_allclose(ap, ref, rtol=0, atol=1e-12)
    # no ties: the non-interpolated AP is sklearn's
    np.testing.assert_allclose(per_class_ap(scores, labels, "rank"), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_ap_all_kinds_match_references_with_ties_and_unknowns(seed):
    rng = np.random.default_rng(100 + seed)
    scores, labels = _random_problem(rng, ties=bool(seed % 2))
    s64 = scores.astype(np.float64)
    for kind, ref in (("voc", _ref_voc), ("rank", _ref_rank), ("sklearn", _ref_sklearn)):
        got = per_class_ap(scores, labels, kind)
        want = [ref(s64[:, c], labels[:, c]) for c in range(scores.shape[1])]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=kind)
        for c in range(scores.shape[1]):
            assert average_precision(scores[:, c], labels[:, c], kind) == pytest.approx(
                want[c], abs=1e-12)


def test_voc_at_least_rank():
    # interpolation never lowers precision
    rng = np.random.default_rng(7)
    scores, labels = _random_problem(rng, n=300, c=10)
    voc = per_class_ap(scores, labels, "voc")
    rank = per_class_ap(scores, labels, "rank")
    assert np.all(voc >= rank - 1e-12)
    assert np.any(voc > rank)


def test_block_processing_matches(monkeypatch):
    import mlrpl.metrics as m
    rng = np.random.default_rng(3)
    scores, labels = _random_problem(rng, n=50, c=9, ties=True)
    full = {k: per_class_ap(scores, labels, k) for k in ("voc", "rank", "sklearn")}
    full_thr = threshold_metrics(scores, labels, top_k=3)
    monkeypatch.setattr(m, "_BLOCK_ELEMENTS", 60)  # one column / a few rows per block
    for k, v in full.items():
        np.testing.assert_allclose(per_class_ap(scores, labels, k), v, rtol=0, atol=1e-12)
    assert threshold_metrics(scores, labels, top_k=3) == full_thr


# ----------------------------------------------------------------------------------------------
# unknown entries, classes without positives


def test_unknown_entries_removed_from_ranking():
    rng = np.random.default_rng(11)
    scores, labels = _random_problem(rng, n=80, c=5, p_unknown=0.4)
    base = compute_metrics(scores, labels, top_k=3)
    base_ap = {k: per_class_ap(scores, labels, k) for k in ("voc", "rank", "sklearn")}
    changed = scores.copy()
    unk = labels == 0
    changed[unk] = rng.normal(scale=10.0, size=unk.sum())  # move unknown entries anywhere
    for k, v in base_ap.items():
        np.testing.assert_allclose(per_class_ap(changed, labels, k), v, rtol=0, atol=1e-12)
    # also identical to dropping the unknown entries of each class
    for c in range(5):
        keep = labels[:, c] != 0
        for k in ("voc", "rank", "sklearn"):
            assert average_precision(scores[keep, c], labels[keep, c], k) == pytest.approx(
                base_ap[k][c], abs=1e-12)
    new = compute_metrics(changed, labels, top_k=3)
    for key in ("mAP", "ap_voc", "ap_rank", "ap_sklearn", "CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert new[key] == pytest.approx(base[key], abs=1e-10), key
    # (the top-k keys may change: an unknown entry can take or free one of the k slots)


def test_class_without_positive_left_out_and_named():
    scores = np.array([[2.0, 1.0, 0.5], [1.0, -1.0, 0.2], [-1.0, 0.5, 0.1]])
    labels = np.array([[1, 1, -1], [-1, -1, -1], [1, -1, -1]], dtype=np.int8)
    ap = per_class_ap(scores, labels)
    assert math.isnan(ap[2])
    with pytest.warns(MetricWarning, match="zebra") as rec:
        m = compute_metrics(scores, labels, class_names=["cat", "dog", "zebra"])
    msg = str(rec[0].message)
    assert "cat" not in msg and "dog" not in msg and "1 of 3" in msg
    assert m["mAP"] == pytest.approx(100 * np.mean(ap[:2]))
    # without names the class index is given
    with pytest.warns(MetricWarning, match="class 2"):
        mean_average_precision(scores, labels)


def test_class_all_unknown():
    scores = np.array([[2.0, 3.0], [-1.0, -3.0], [0.5, 1.0]])
    labels = np.array([[1, 0], [-1, 0], [-1, 0]], dtype=np.int8)
    for k in ("voc", "rank", "sklearn"):
        ap = per_class_ap(scores, labels, k)
        assert ap[0] == 1.0 and math.isnan(ap[1])
    with pytest.warns(MetricWarning, match="sky"):
        m = compute_metrics(scores, labels, class_names=["person", "sky"])
    assert m["mAP"] == 100.0
    # class 1 is neither predicted (its entries are unknown) nor in the CP/CR class set
    t = threshold_metrics(scores, labels)
    assert t["CP"] == 0.5 and t["CR"] == 1.0  # class 0: Nc=1, Np=2, Ng=1
    assert t["OP"] == 0.5 and t["OR"] == 1.0
    rep = per_class_report(scores, labels, ["person", "sky"])
    assert rep[1]["n_unknown"] == 3 and rep[1]["n_pos"] == 0 and rep[1]["n_neg"] == 0
    assert math.isnan(rep[1]["ap_voc"]) and math.isnan(rep[1]["recall"])
    assert rep[1]["precision"] == 0.0


def test_no_class_has_a_positive_gives_nan_with_warning():
    scores = np.array([[1.0, -1.0], [0.5, 2.0]])
    labels = np.array([[-1, 0], [-1, -1]], dtype=np.int8)
    with pytest.warns(MetricWarning, match="no class has a known positive"):
        m = compute_metrics(scores, labels)
    assert set(m) == set(METRIC_KEYS)
    for key in ("mAP", "ap_voc", "ap_rank", "ap_sklearn", "CP", "CR", "CF1", "OR", "OF1",
                "CP_top3", "CR_top3", "OR_top3"):
        assert math.isnan(m[key]), key
    assert m["OP"] == 0.0  # all 3 predictions are wrong: defined
    with pytest.warns(MetricWarning):
        assert math.isnan(mean_average_precision(scores, labels))


# ----------------------------------------------------------------------------------------------
# threshold metrics


def test_np_zero_counts_as_precision_zero():
    # class 0 perfect; class 1 has positives but no prediction at all
    scores = np.array([[3.0, -1.0], [-2.0, -2.0], [1.0, -0.5]])
    labels = np.array([[1, 1], [-1, -1], [1, -1]], dtype=np.int8)
    t = threshold_metrics(scores, labels)
    assert t["CP"] == 0.5  # (1 + 0) / 2
    assert t["CR"] == 0.5  # (1 + 0) / 2
    assert t["CF1"] == 0.5
    assert t["OP"] == 1.0 and t["OR"] == pytest.approx(2 / 3)
    assert t["OF1"] == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))


def test_cf1_is_f1_of_means_not_mean_of_f1():
    scores = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0]])
    labels = np.array([[1, 1], [1, -1], [-1, -1]], dtype=np.int8)
    # class 0: Nc=1 Np=1 Ng=2 -> P=1, R=1/2, F1=2/3 ; class 1: Nc=1 Np=2 Ng=1 -> P=1/2 R=1 F1=2/3
    t = threshold_metrics(scores, labels)
    assert t["CP"] == pytest.approx(0.75) and t["CR"] == pytest.approx(0.75)
    assert t["CF1"] == pytest.approx(0.75)          # 2 CP CR / (CP + CR)
    assert t["CF1"] != pytest.approx(2 / 3)         # the mean of the per-class F1
    assert t["OP"] == pytest.approx(2 / 3) and t["OR"] == pytest.approx(2 / 3)
    assert t["OF1"] == pytest.approx(2 / 3)


def test_f1_zero_when_nothing_correct():
    scores = np.array([[-1.0], [1.0]])
    labels = np.array([[1], [-1]], dtype=np.int8)
    t = threshold_metrics(scores, labels)
    assert t == {"CP": 0.0, "CR": 0.0, "CF1": 0.0, "OP": 0.0, "OR": 0.0, "OF1": 0.0}


def test_threshold_on_probability_and_boundary():
    labels = np.ones((1, 3), dtype=np.int8)
    # logit exactly 0 -> probability 0.5 -> predicted positive at the default threshold
    assert threshold_metrics([[0.0, -1e-12, 5.0]], labels)["OR"] == pytest.approx(2 / 3)
    # threshold 0.7 <-> logit log(0.7 / 0.3) = 0.8473
    t = threshold_metrics([[0.84, 0.85, 5.0]], labels, threshold=0.7)
    assert t["OR"] == pytest.approx(2 / 3)


def test_per_class_thresholds_vs_global():
    rng = np.random.default_rng(5)
    scores, labels = _random_problem(rng, n=40, c=4)
    g = threshold_metrics(scores, labels, threshold=0.6)
    assert threshold_metrics(scores, labels, threshold=np.full(4, 0.6)) == g
    assert threshold_metrics(scores, labels, threshold=torch.full((4,), 0.6)) == g
    thr = np.array([0.3, 0.5, 0.7, 0.9])
    ref = _ref_threshold(scores, labels, thr)
    got = threshold_metrics(scores, labels, threshold=thr)
    for k in ref:
        assert got[k] == pytest.approx(ref[k], abs=1e-12), k


def test_per_class_threshold_hand_case():
    scores = np.array([[0.5, 0.5], [-0.5, 2.0]])  # probabilities 0.62, 0.62 / 0.38, 0.88
    labels = np.array([[1, -1], [-1, 1]], dtype=np.int8)
    glob = threshold_metrics(scores, labels, threshold=0.5)
    assert glob["CP"] == pytest.approx(0.75) and glob["OP"] == pytest.approx(2 / 3)
    per = threshold_metrics(scores, labels, threshold=[0.5, 0.7])  # class 1 drops the 0.62
    assert per["CP"] == 1.0 and per["CR"] == 1.0 and per["OP"] == 1.0 and per["OF1"] == 1.0


def test_top_k_hand_case():
    scores = np.array([[3.0, 2.0, 1.0, 0.5, -1.0]])
    labels = np.array([[1, -1, 1, 1, -1]], dtype=np.int8)
    plain = threshold_metrics(scores, labels)            # predicts classes 0, 1, 2, 3
    assert plain["OP"] == pytest.approx(3 / 4) and plain["OR"] == 1.0
    top = threshold_metrics(scores, labels, top_k=3)     # predicts classes 0, 1, 2 only
    assert top["OP"] == pytest.approx(2 / 3) and top["OR"] == pytest.approx(2 / 3)
    # classes with a positive: 0, 2, 3 -> precisions 1, 1, 0 (class 3 has Np = 0)
    assert top["CP"] == pytest.approx(2 / 3) and top["CR"] == pytest.approx(2 / 3)
    top1 = threshold_metrics(scores, labels, top_k=1)
    assert top1["OP"] == 1.0 and top1["OR"] == pytest.approx(1 / 3)


def test_top_k_also_needs_threshold_and_ties_by_class_index():
    labels = np.ones((1, 4), dtype=np.int8)
    # only one label passes the threshold: top-3 predicts just that one
    assert threshold_metrics([[2.0, -1.0, -2.0, -3.0]], labels, top_k=3)["OR"] == 0.25
    # all tied: top-3 are classes 0, 1, 2 (lower index first)
    labels = np.array([[-1, -1, -1, 1]], dtype=np.int8)
    t = threshold_metrics([[1.0, 1.0, 1.0, 1.0]], labels, top_k=3)
    assert t["OR"] == 0.0 and t["OP"] == 0.0
    labels = np.array([[1, -1, -1, -1]], dtype=np.int8)
    assert threshold_metrics([[1.0, 1.0, 1.0, 1.0]], labels, top_k=3)["OR"] == 1.0


def test_top_k_unknown_label_takes_a_slot():
    scores = np.array([[4.0, 3.0, 2.0, 1.0]])
    labels = np.array([[0, 1, 1, 1]], dtype=np.int8)  # class 0 unknown but scored highest
    t = threshold_metrics(scores, labels, top_k=3)
    assert t["OR"] == pytest.approx(2 / 3) and t["OP"] == 1.0


@pytest.mark.parametrize("seed", range(3))
def test_threshold_metrics_match_loop_reference(seed):
    rng = np.random.default_rng(200 + seed)
    scores, labels = _random_problem(rng, n=50, c=6, ties=bool(seed % 2))
    for top_k in (None, 1, 3, 10):
        ref = _ref_threshold(scores, labels, 0.5, top_k)
        got = threshold_metrics(scores, labels, top_k=top_k)
        for k in ref:
            assert got[k] == pytest.approx(ref[k], abs=1e-12), (top_k, k)


# ----------------------------------------------------------------------------------------------
# compute_metrics / report


def test_compute_metrics_keys_and_percentages():
    rng = np.random.default_rng(9)
    scores, labels = _random_problem(rng, n=64, c=5)
    m = compute_metrics(scores, labels)
    assert tuple(m) == METRIC_KEYS
    assert len(METRIC_KEYS) == 16 and METRIC_KEYS == metric_keys(3)
    assert METRIC_KEYS == ("mAP", "ap_voc", "ap_rank", "ap_sklearn", "CP", "CR", "CF1", "OP",
                           "OR", "OF1", "CP_top3", "CR_top3", "CF1_top3", "OP_top3", "OR_top3",
                           "OF1_top3")
    assert all(isinstance(v, float) for v in m.values())
    assert m["mAP"] == m["ap_voc"]
    assert m["ap_voc"] == pytest.approx(100 * np.mean(per_class_ap(scores, labels, "voc")))
    assert m["ap_rank"] == pytest.approx(100 * np.mean(per_class_ap(scores, labels, "rank")))
    assert m["ap_sklearn"] == pytest.approx(
        100 * np.mean(per_class_ap(scores, labels, "sklearn")))
    t = threshold_metrics(scores, labels)
    t3 = threshold_metrics(scores, labels, top_k=3)
    for k in t:
        assert m[k] == pytest.approx(100 * t[k])
        assert m[f"{k}_top3"] == pytest.approx(100 * t3[k])
    m1 = compute_metrics(scores, labels, top_k=1)
    assert tuple(m1) == metric_keys(1) and "CP_top1" in m1


def test_torch_and_low_precision_inputs():
    rng = np.random.default_rng(4)
    scores, labels = _random_problem(rng, n=30, c=4)
    ref = compute_metrics(scores, labels)
    got = compute_metrics(torch.from_numpy(scores), torch.from_numpy(labels))
    assert got == ref
    half = torch.from_numpy(scores).half()
    np.testing.assert_allclose(
        list(compute_metrics(half, labels).values()),
        list(compute_metrics(half.float().numpy(), labels).values()))


def test_per_class_report():
    scores = np.array([[2.0, -1.0], [1.0, 0.5], [-1.0, 0.2]])
    labels = np.array([[1, 1], [-1, 0], [1, -1]], dtype=np.int8)
    rep = per_class_report(scores, labels, ["cat", "dog"])
    assert [r["class"] for r in rep] == ["cat", "dog"]
    cat, dog = rep
    assert (cat["n_pos"], cat["n_neg"], cat["n_unknown"]) == (2, 1, 0)
    assert (dog["n_pos"], dog["n_neg"], dog["n_unknown"]) == (1, 1, 1)
    assert cat["ap_voc"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert cat["precision"] == 50.0 and cat["recall"] == 50.0
    assert dog["ap_voc"] == pytest.approx(50.0)
    assert dog["precision"] == 0.0 and dog["recall"] == 0.0
    assert set(cat) == {"class", "ap_voc", "n_pos", "n_neg", "n_unknown", "precision", "recall"}


def test_no_warning_when_every_class_has_a_positive():
    rng = np.random.default_rng(1)
    scores, labels = _random_problem(rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compute_metrics(scores, labels)


# ----------------------------------------------------------------------------------------------
# bad input


def test_shape_mismatch():
    with pytest.raises(DataError, match=r"labels: shape \(3, 2\) does not match scores shape"):
        compute_metrics(np.zeros((3, 3)), np.ones((3, 2), dtype=np.int8))
    with pytest.raises(DataError, match=r"expected shape \(N, C\)"):
        per_class_ap(np.zeros(3), np.ones(3, dtype=np.int8))
    with pytest.raises(DataError, match=r"expected shape \(N,\)"):
        average_precision(np.zeros((3, 1)), np.ones(3))
    with pytest.raises(DataError, match="does not match"):
        average_precision(np.zeros(3), np.ones(4))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scores(bad):
    scores = np.zeros((2, 2))
    scores[1, 0] = bad
    labels = np.ones((2, 2), dtype=np.int8)
    with pytest.raises(DataError, match=r"scores: 1 non-finite value\(s\).*index \(1, 0\)"):
        compute_metrics(scores, labels)
    with pytest.raises(DataError, match="non-finite"):
        threshold_metrics(scores, labels)
    with pytest.raises(DataError, match="non-finite"):
        average_precision(scores[:, 0], labels[:, 0])


@pytest.mark.parametrize("thr", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_threshold_outside_unit_interval(thr):
    scores, labels = np.zeros((2, 2)), np.ones((2, 2), dtype=np.int8)
    with pytest.raises(MlrplError, match="threshold must lie strictly between 0 and 1"):
        threshold_metrics(scores, labels, threshold=thr)
    with pytest.raises(MlrplError, match="threshold must lie strictly between 0 and 1"):
        compute_metrics(scores, labels, threshold=[0.5, thr])


def test_other_bad_arguments():
    scores, labels = np.zeros((2, 2)), np.ones((2, 2), dtype=np.int8)
    with pytest.raises(MlrplError, match="per-class threshold has 3 values for 2 classes"):
        threshold_metrics(scores, labels, threshold=[0.5, 0.5, 0.5])
    with pytest.raises(MlrplError, match="threshold must be"):
        threshold_metrics(scores, labels, threshold="0.5")
    with pytest.raises(DataError, match=r"labels: values must be \+1.*found 2"):
        compute_metrics(scores, np.array([[1, 2], [0, -1]]))
    with pytest.raises(MlrplError, match="unknown average-precision kind 'map'"):
        per_class_ap(scores, labels, kind="map")
    with pytest.raises(DataError, match="3 class names given for 2 classes"):
        compute_metrics(scores, labels, class_names=["a", "b", "c"])
    with pytest.raises(MlrplError, match="top_k must be a positive integer"):
        compute_metrics(scores, labels, top_k=0)
    with pytest.raises(MlrplError, match="top_k must be a positive integer"):
        threshold_metrics(scores, labels, top_k=2.5)
