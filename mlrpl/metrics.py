"""Evaluation metrics for multi-label recognition with partial labels.

Inputs
------
``scores``
    Logits, float array of shape ``(N, C)`` (numpy array or torch tensor, any float dtype).
    Every entry must be finite.
``labels``
    Label matrix in the internal encoding, shape ``(N, C)``: ``+1`` known positive, ``-1`` known
    negative, ``0`` unknown / ignored. Any numeric dtype (not bool) whose values all lie in
    ``{-1, 0, +1}`` is accepted; int8 is the usual one.

Everything is computed in float64 numpy, whatever the input dtype.

Definitions
-----------
Average precision, per class ``c``. The unknown entries (label 0) of class ``c`` are removed from
that class's ranking: they are neither positives nor negatives, and their scores have no effect.

``ap_voc`` (the headline ``mAP``)
    PASCAL VOC 2010+ all-point interpolated AP, as in the HCP-MLR-PL / SSGRL evaluation code: the
    known entries are ranked by score, precision and recall are taken after each ranked entry, the
    precision curve is replaced by its envelope (made monotone non-increasing from the right:
    ``p_interp(i) = max_{j >= i} p(j)``) and the area under the curve is summed at the recall
    changes, i.e. ``AP = (1 / n_pos) * sum over positives of p_interp(rank of that positive)``.
``ap_rank``
    Non-interpolated AP (ML-GCN / ASL / mmpretrain style): the mean over the class's positives of
    the precision at that positive's rank.
``ap_sklearn``
    scikit-learn's ``average_precision_score``: one threshold per *distinct* score value, so tied
    scores form a single operating point, ``AP = sum_n (R_n - R_{n-1}) P_n``. Computed here in numpy
    and equal to scikit-learn's value.

Ties. For ``ap_voc`` and ``ap_rank`` the ranking is scores in descending order with ties broken by
a *stable* sort, i.e. among equal scores the entry that comes first in dataset order is ranked
first. The result therefore depends on dataset order when scores tie (the reference implementations
use an unstable sort and are not even reproducible there). ``ap_sklearn`` does not depend on the
order: tied entries are grouped.

Mean AP. ``mAP`` is the mean of the per-class AP over the classes that have at least one known
positive among the evaluated images. Classes with no positive are left out (their AP is NaN in
:func:`per_class_ap`) and a :class:`MetricWarning` names them. If no class has a positive, every
mean is NaN (with a warning, not an exception).

Threshold metrics. An entry is predicted positive when ``sigmoid(logit) >= threshold``
(``threshold`` a float in (0, 1) or an array of C per-class thresholds, on the probability). The
comparison is done on logits in float64, as ``logit >= log(t) - log1p(-t)``, which is the same
test without the rounding of the sigmoid near 0.5; the default 0.5 means ``logit >= 0``. Only
known entries count: an unknown entry is neither a predicted positive nor a ground-truth positive.
With ``Nc_c`` the correct positive predictions of class ``c``, ``Np_c`` its predicted positives
and ``Ng_c`` its ground-truth positives:

* ``CP = mean_c Nc_c / Np_c`` (a class with ``Np_c = 0`` counts as precision 0),
* ``CR = mean_c Nc_c / Ng_c``,

  where both means run over the same class set as ``mAP``: the classes with ``Ng_c > 0``.
  Classes without any known positive are left out of CP and CR (their recall is undefined and
  leaving them out of CP only keeps CP and CR on the same classes).
* ``CF1 = 2 CP CR / (CP + CR)`` (the F1 of the two means, NOT the mean of per-class F1; 0 when
  ``CP + CR = 0``),
* ``OP = sum Nc / sum Np`` (0 when ``sum Np = 0``), ``OR = sum Nc / sum Ng``,
  ``OF1 = 2 OP OR / (OP + OR)`` (0 when ``OP + OR = 0``). The overall sums run over all known
  entries of all classes: a positive prediction on a known negative is a false positive even in a
  class that has no positive.

Top-k forms (``*_top3`` for the default k = 3, ML-GCN semantics): per image, only the k highest
scored labels among all C classes (ties broken by the lower class index) that also pass the
threshold are predicted positive; then the same six numbers. A class whose label is unknown for an
image can take one of the k slots (the selection does not look at labels) but then does not count.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import DataError, MlrplError

__all__ = [
    "METRIC_KEYS",
    "AP_KINDS",
    "MetricWarning",
    "metric_keys",
    "average_precision",
    "per_class_ap",
    "mean_average_precision",
    "threshold_metrics",
    "compute_metrics",
    "per_class_report",
]

AP_KINDS = ("voc", "rank", "sklearn")

_THRESHOLD_KEYS = ("CP", "CR", "CF1", "OP", "OR", "OF1")


def metric_keys(top_k: int = 3) -> tuple[str, ...]:
    """Keys returned by :func:`compute_metrics` for a given ``top_k``, in display order.

    >>> metric_keys(3)[-1]
    'OF1_top3'
    """
    return ("mAP", "ap_voc", "ap_rank", "ap_sklearn", *_THRESHOLD_KEYS,
            *(f"{k}_top{int(top_k)}" for k in _THRESHOLD_KEYS))


#: The 16 keys of :func:`compute_metrics` (default ``top_k=3``), in display order.
METRIC_KEYS: tuple[str, ...] = metric_keys(3)

# Elements per block (rows x columns) processed at once, to bound memory on large N x C.
_BLOCK_ELEMENTS = 1 << 22


class MetricWarning(UserWarning):
    """A metric is undefined for some classes (e.g. no positive) and they were left out."""


# --------------------------------------------------------------------------------------------
# input checking


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, without importing torch
        x = x.detach().cpu()
        if str(getattr(x, "dtype", "")) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _check_scores(scores: Any, ndim: int, name: str = "scores") -> np.ndarray:
    a = _to_numpy(scores)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise DataError(f"expected a numeric array, got dtype {a.dtype}", field=name)
    if a.ndim != ndim:
        shape = "(N,)" if ndim == 1 else "(N, C)"
        raise DataError(f"expected shape {shape}, got shape {a.shape}", field=name)
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))
        n_bad = len(bad)
        raise DataError(f"{n_bad} non-finite value(s) (NaN or inf), first at index "
                        f"{tuple(int(i) for i in bad[0])}", field=name)
    return a


def _check_labels(labels: Any, shape: tuple[int, ...], name: str = "labels") -> np.ndarray:
    a = _to_numpy(labels)
    if a.dtype == object or not np.issubdtype(a.dtype, np.number):
        raise DataError(f"expected an integer array in {{-1, 0, +1}}, got dtype {a.dtype}",
                        field=name)
    if a.shape != shape:
        raise DataError(f"shape {a.shape} does not match scores shape {shape}", field=name)
    if a.size:
        ok = (a == 1) | (a == 0) | (a == -1)
        if not np.all(ok):
            bad = np.argwhere(~ok)[0]
            raise DataError(f"values must be +1 (positive), -1 (negative) or 0 (unknown); "
                            f"found {a[tuple(bad)].item()!r} at index {tuple(int(i) for i in bad)}",
                            field=name)
    return a.astype(np.int8, copy=False)


def _check_pair(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _check_scores(scores, 2)
    y = _check_labels(labels, s.shape)
    return s, y


def _check_kind(kind: str) -> str:
    if kind not in AP_KINDS:
        raise MlrplError(f"unknown average-precision kind {kind!r}; expected one of "
                         f"{', '.join(AP_KINDS)}")
    return kind


def _check_class_names(class_names: Sequence[str] | None, n_classes: int) -> list[str] | None:
    if class_names is None:
        return None
    names = [str(c) for c in class_names]
    if len(names) != n_classes:
        raise DataError(f"{len(names)} class names given for {n_classes} classes",
                        field="class_names")
    return names


def _logit_thresholds(threshold: Any, n_classes: int) -> np.ndarray:
    """Threshold(s) on the probability -> float64 logit threshold(s), shape () or (C,)."""
    if isinstance(threshold, bool):
        raise MlrplError(f"threshold must be a float in (0, 1), got {threshold!r}")
    t = _to_numpy(threshold)
    if t.dtype == object or not np.issubdtype(t.dtype, np.number):
        raise MlrplError(f"threshold must be a float in (0, 1) or an array of {n_classes} such "
                         f"floats, got {threshold!r}")
    t = t.astype(np.float64)
    if t.ndim == 0:
        if not (0.0 < float(t) < 1.0):
            raise MlrplError(f"threshold must lie strictly between 0 and 1 (a probability), "
                             f"got {float(t)!r}")
    elif t.ndim == 1:
        if t.shape[0] != n_classes:
            raise MlrplError(f"per-class threshold has {t.shape[0]} values for {n_classes} "
                             f"classes")
        bad = ~((t > 0.0) & (t < 1.0))  # also catches NaN
        if np.any(bad):
            i = int(np.argmax(bad))
            raise MlrplError(f"threshold must lie strictly between 0 and 1 (a probability), "
                             f"got {t[i]!r} for class {i}")
    else:
        raise MlrplError(f"threshold must be a float or a 1-d array of {n_classes} floats, "
                         f"got shape {t.shape}")
    return np.log(t) - np.log1p(-t)


def _check_top_k(top_k: Any) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise MlrplError(f"top_k must be a positive integer, got {top_k!r}")
    return int(top_k)


# --------------------------------------------------------------------------------------------
# average precision


def _ap_block(s: np.ndarray, y: np.ndarray, kinds: Sequence[str]) -> dict[str, np.ndarray]:
    """AP of each column of a (N, c) block, for each kind; NaN where a column has no positive."""
    n, c = s.shape
    out = {}
    if n == 0 or c == 0:
        return {k: np.full(c, np.nan) for k in kinds}
    # Work on (c, N) contiguous rows: one row per class.
    s = np.ascontiguousarray(s.T)
    y = np.ascontiguousarray(y.T)
    npos = (y == 1).sum(axis=1)
    # Descending order, ties in dataset order: a stable ascending sort of the negated scores.
    order = np.argsort(-s, axis=1, kind="stable")
    ys = np.take_along_axis(y, order, axis=1)
    pos = ys == 1
    known = ys != 0
    tp = np.cumsum(pos, axis=1, dtype=np.float64)
    kn = np.cumsum(known, axis=1, dtype=np.float64)
    # Precision after each ranked entry; at an unknown entry it repeats the previous known one,
    # and before the first known entry it is 0, neither of which changes any result below.
    prec = np.divide(tp, kn, out=np.zeros_like(tp), where=kn > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = npos.astype(np.float64)
        denom[denom == 0] = np.nan
        if "rank" in kinds:
            out["rank"] = np.where(pos, prec, 0.0).sum(axis=1) / denom
        if "voc" in kinds:
            # precision envelope: running maximum from the right
            env = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
            out["voc"] = np.where(pos, env, 0.0).sum(axis=1) / denom
        if "sklearn" in kinds:
            ss = np.take_along_axis(s, order, axis=1)
            # Equal scores are contiguous in the sorted row: a tie group ends where the next
            # score differs. Each positive is credited the precision at the end of its group.
            is_end = np.ones((c, n), dtype=bool)
            is_end[:, :-1] = ss[:, :-1] != ss[:, 1:]
            idx = np.where(is_end, np.arange(n)[None, :], n)
            group_end = np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1]
            prec_end = np.take_along_axis(prec, group_end, axis=1)
            out["sklearn"] = np.where(pos, prec_end, 0.0).sum(axis=1) / denom
    return out


def _ap_matrix(s: np.ndarray, y: np.ndarray, kinds: Sequence[str]) -> dict[str, np.ndarray]:
    n, c = s.shape
    step = max(1, _BLOCK_ELEMENTS // max(n, 1))
    parts = [_ap_block(s[:, j:j + step], y[:, j:j + step], kinds) for j in range(0, c, step)]
    if not parts:
        return {k: np.zeros(0) for k in kinds}
    return {k: np.concatenate([p[k] for p in parts]) for k in kinds}


def average_precision(scores: Any, targets: Any, kind: str = "voc") -> float:
    """Average precision of one class.

    Parameters
    ----------
    scores : array_like, shape (N,)
        Scores (logits or probabilities: only their order matters), finite.
    targets : array_like, shape (N,)
        +1 positive, -1 negative, 0 unknown (removed from the ranking).
    kind : {"voc", "rank", "sklearn"}
        ``"voc"``: all-point interpolated VOC AP; ``"rank"``: non-interpolated AP (mean precision
        at the positives' ranks); ``"sklearn"``: scikit-learn's ``average_precision_score``
        (ties grouped). ``"voc"`` and ``"rank"`` break ties by dataset order (stable sort).

    Returns
    -------
    float
        AP in [0, 1] (a fraction, not a percentage); NaN if there is no known positive.

    Examples
    --------
    >>> average_precision([0.9, 0.8, 0.7], [1, -1, 1])            # ranking + - +
    0.8333333333333333
    >>> round(average_precision([0.9, 0.8, 0.7, 0.6, 0.5], [1, -1, -1, 1, 1], kind="rank"), 4)
    0.7
    """
    _check_kind(kind)
    s = _check_scores(scores, 1)
    y = _check_labels(targets, s.shape, name="targets")
    return float(_ap_block(s[:, None], y[:, None], (kind,))[kind][0])


def per_class_ap(scores: Any, labels: Any, kind: str = "voc") -> np.ndarray:
    """Average precision of every class.

    Parameters
    ----------
    scores : array_like, shape (N, C)
        Logits, finite.
    labels : array_like, shape (N, C)
        +1 / -1 / 0 (unknown, removed from that class's ranking).
    kind : {"voc", "rank", "sklearn"}
        See :func:`average_precision`.

    Returns
    -------
    numpy.ndarray, shape (C,), float64
        AP of each class as a fraction; NaN for a class with no known positive.

    Examples
    --------
    >>> per_class_ap([[2.0, 0.1], [1.0, 0.3]], [[1, -1], [-1, -1]])
    array([ 1., nan])
    """
    _check_kind(kind)
    s, y = _check_pair(scores, labels)
    return _ap_matrix(s, y, (kind,))[kind]


def _warn_no_positive(has_pos: np.ndarray, class_names: list[str] | None,
                      stacklevel: int = 3) -> None:
    missing = np.flatnonzero(~has_pos)
    if missing.size == 0:
        return
    if has_pos.size == 0 or missing.size == has_pos.size:
        msg = ("no class has a known positive among the evaluated images: mAP and the "
               "class-averaged metrics are NaN")
    else:
        msg = (f"{missing.size} of {has_pos.size} classes have no known positive among the "
               f"evaluated images and are left out of mAP, CP and CR")
    if class_names is not None:
        listed = [class_names[i] for i in missing]
    else:
        listed = [f"class {i}" for i in missing]
    shown = ", ".join(listed[:50]) + (f", ... ({len(listed) - 50} more)" if len(listed) > 50
                                       else "")
    msg += f": {shown}"
    warnings.warn(msg, MetricWarning, stacklevel=stacklevel)


def _nanmean_or_nan(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


def mean_average_precision(scores: Any, labels: Any, kind: str = "voc",
                           class_names: Sequence[str] | None = None) -> float:
    """Mean AP over the classes that have at least one known positive.

    Classes without a positive are left out and named in a :class:`MetricWarning`; if there is
    none, the result is NaN.

    Parameters
    ----------
    scores, labels : array_like, shape (N, C)
        Logits and +1/-1/0 labels.
    kind : {"voc", "rank", "sklearn"}
        See :func:`average_precision`.
    class_names : sequence of str, length C, optional
        Used to name the left-out classes in the warning.

    Returns
    -------
    float
        mAP as a fraction in [0, 1], or NaN.

    Examples
    --------
    >>> mean_average_precision([[2.0, 0.3], [1.0, 0.1]], [[1, 1], [-1, -1]])
    1.0
    """
    _check_kind(kind)
    s, y = _check_pair(scores, labels)
    names = _check_class_names(class_names, s.shape[1])
    _warn_no_positive((y == 1).any(axis=0), names)
    return _nanmean_or_nan(_ap_matrix(s, y, (kind,))[kind])


# --------------------------------------------------------------------------------------------
# threshold metrics


def _topk_mask(s: np.ndarray, k: int) -> np.ndarray:
    """Boolean (N, C): True at each row's k highest scores, ties broken by lower class index."""
    n, c = s.shape
    mask = np.zeros((n, c), dtype=bool)
    if k >= c:
        mask[:] = True
        return mask
    step = max(1, _BLOCK_ELEMENTS // max(c, 1))
    for i in range(0, n, step):
        blk = s[i:i + step]
        top = np.argsort(-blk, axis=1, kind="stable")[:, :k]
        np.put_along_axis(mask[i:i + step], top, True, axis=1)
    return mask


def _counts(s: np.ndarray, y: np.ndarray, logit_t: np.ndarray, top_k: int | None):
    pred = s >= logit_t  # broadcasts a (C,) threshold over rows
    if top_k is not None:
        pred &= _topk_mask(s, top_k)
    pred &= y != 0
    nc = (pred & (y == 1)).sum(axis=0).astype(np.float64)
    np_ = pred.sum(axis=0).astype(np.float64)
    ng = (y == 1).sum(axis=0).astype(np.float64)
    return nc, np_, ng


def _f1(p: float, r: float) -> float:
    if math.isnan(p) or math.isnan(r):
        return math.nan
    return 0.0 if p + r == 0 else 2.0 * p * r / (p + r)


def _six(nc: np.ndarray, np_: np.ndarray, ng: np.ndarray) -> dict[str, float]:
    cls = ng > 0
    if cls.any():
        prec_c = np.divide(nc, np_, out=np.zeros_like(nc), where=np_ > 0)
        cp = float(prec_c[cls].mean())
        cr = float((nc[cls] / ng[cls]).mean())
    else:
        cp = cr = math.nan
    snc, snp, sng = float(nc.sum()), float(np_.sum()), float(ng.sum())
    op = snc / snp if snp > 0 else 0.0
    or_ = snc / sng if sng > 0 else math.nan
    return {"CP": cp, "CR": cr, "CF1": _f1(cp, cr), "OP": op, "OR": or_, "OF1": _f1(op, or_)}


def threshold_metrics(scores: Any, labels: Any, threshold: Any = 0.5,
                      top_k: int | None = None) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 at a probability threshold (fractions, not percentages).

    Parameters
    ----------
    scores : array_like, shape (N, C)
        Logits, finite.
    labels : array_like, shape (N, C)
        +1 / -1 / 0; unknown entries are neither predictions nor ground truth.
    threshold : float in (0, 1) or array_like of shape (C,)
        Predicted positive where ``sigmoid(logit) >= threshold`` (global or per class).
    top_k : int, optional
        If given, only each image's ``top_k`` highest-scored classes (ties: lower class index)
        that also pass the threshold are predicted positive.

    Returns
    -------
    dict
        Keys ``CP, CR, CF1, OP, OR, OF1`` (floats in [0, 1]). CP and CR average over the classes
        with at least one known positive (NaN if there is none); a class with no predicted
        positive has precision 0; CF1 and OF1 are the F1 of the averaged precision and recall.

    Examples
    --------
    >>> m = threshold_metrics([[2.0, -1.0], [0.5, 1.0]], [[1, -1], [-1, 1]])
    >>> m["CP"], m["CR"], m["OP"]
    (0.75, 1.0, 0.6666666666666666)
    """
    s, y = _check_pair(scores, labels)
    logit_t = _logit_thresholds(threshold, s.shape[1])
    if top_k is not None:
        top_k = _check_top_k(top_k)
    return _six(*_counts(s, y, logit_t, top_k))


# --------------------------------------------------------------------------------------------
# everything at once


def compute_metrics(scores: Any, labels: Any, threshold: Any = 0.5,
                    class_names: Sequence[str] | None = None, top_k: int = 3) -> dict[str, float]:
    """All headline metrics, as percentages.

    Parameters
    ----------
    scores : array_like, shape (N, C)
        Logits, finite.
    labels : array_like, shape (N, C)
        +1 / -1 / 0 (unknown entries are ignored everywhere).
    threshold : float in (0, 1) or array_like of shape (C,)
        Probability threshold(s) for the CP ... OF1 metrics.
    class_names : sequence of str, length C, optional
        Names used in the warning about classes without a positive.
    top_k : int
        k of the top-k metrics (default 3).

    Returns
    -------
    dict
        ``{key: float}`` for exactly the keys :func:`metric_keys(top_k) <metric_keys>`, i.e.
        :data:`METRIC_KEYS` for the default ``top_k=3``: ``mAP, ap_voc, ap_rank, ap_sklearn, CP,
        CR, CF1, OP, OR, OF1, CP_top3, ..., OF1_top3``, all multiplied by 100. ``mAP`` equals
        ``ap_voc``. Classes without a known positive are left out of the AP means, CP and CR, with
        a :class:`MetricWarning` naming them; if no class has a positive these are NaN.

    Examples
    --------
    >>> m = compute_metrics([[2.0, -1.0], [0.5, 1.0]], [[1, -1], [-1, 1]])
    >>> round(m["mAP"], 2), m["OP_top3"]
    (100.0, 66.66666666666666)
    """
    s, y = _check_pair(scores, labels)
    names = _check_class_names(class_names, s.shape[1])
    logit_t = _logit_thresholds(threshold, s.shape[1])
    top_k = _check_top_k(top_k)

    _warn_no_positive((y == 1).any(axis=0), names)
    aps = _ap_matrix(s, y, AP_KINDS)
    out: dict[str, float] = {}
    voc = _nanmean_or_nan(aps["voc"])
    out["mAP"] = voc
    out["ap_voc"] = voc
    out["ap_rank"] = _nanmean_or_nan(aps["rank"])
    out["ap_sklearn"] = _nanmean_or_nan(aps["sklearn"])
    out.update(_six(*_counts(s, y, logit_t, None)))
    for key, value in _six(*_counts(s, y, logit_t, top_k)).items():
        out[f"{key}_top{top_k}"] = value
    return {k: 100.0 * out[k] for k in metric_keys(top_k)}


def per_class_report(scores: Any, labels: Any, class_names: Sequence[str] | None = None,
                     threshold: Any = 0.5) -> list[dict[str, Any]]:
    """One row per class, for reports.

    Parameters
    ----------
    scores, labels : array_like, shape (N, C)
        Logits and +1/-1/0 labels.
    class_names : sequence of str, length C, optional
        Defaults to ``"0", "1", ...``.
    threshold : float in (0, 1) or array_like of shape (C,)
        Probability threshold(s) for precision and recall.

    Returns
    -------
    list of dict
        For each class, in class order: ``class`` (name), ``ap_voc`` (percentage, NaN without a
        positive), ``n_pos``, ``n_neg``, ``n_unknown`` (ints), ``precision`` (percentage, 0 when
        nothing is predicted positive, as in CP), ``recall`` (percentage, NaN without a positive).

    Examples
    --------
    >>> per_class_report([[2.0], [-1.0]], [[1], [0]], ["cat"])[0]["n_unknown"]
    1
    """
    s, y = _check_pair(scores, labels)
    n_classes = s.shape[1]
    names = _check_class_names(class_names, n_classes) or [str(i) for i in range(n_classes)]
    logit_t = _logit_thresholds(threshold, n_classes)
    ap = _ap_matrix(s, y, ("voc",))["voc"]
    nc, np_, ng = _counts(s, y, logit_t, None)
    n_neg = (y == -1).sum(axis=0)
    n_unk = (y == 0).sum(axis=0)
    rows = []
    for c in range(n_classes):
        rows.append({
            "class": names[c],
            "ap_voc": 100.0 * float(ap[c]),
            "n_pos": int(ng[c]),
            "n_neg": int(n_neg[c]),
            "n_unknown": int(n_unk[c]),
            "precision": 100.0 * (float(nc[c] / np_[c]) if np_[c] > 0 else 0.0),
            "recall": 100.0 * float(nc[c] / ng[c]) if ng[c] > 0 else math.nan,
        })
    return rows


# --------------------------------------------------------------------------------------------
# probabilities, and the scores files of ``mlrpl eval --save-scores`` / ``mlrpl metrics``


def probabilities_to_logits(probs: Any) -> np.ndarray:
    """Probabilities in [0, 1] -> float64 logits ``log(p) - log1p(-p)``, the same formula as the
    thresholds, so that ``p >= t`` exactly when ``logit(p) >= logit(t)``. 0 and 1 are first moved
    to the nearest float inside (0, 1), so that every logit is finite; the ranking is kept."""
    p = np.asarray(probs, dtype=np.float64)
    p = np.clip(p, np.nextafter(0.0, 1.0), np.nextafter(1.0, 0.0))
    with np.errstate(divide="ignore", over="ignore"):
        return np.log(p) - np.log1p(-p)


SCORES_FORMATS = (".npy", ".npz")


def scores_ids_path(path) -> Path:
    """The image-id list written beside a ``.npy`` scores file: ``s.npy`` -> ``s.ids.txt``."""
    p = Path(path)
    return p.with_name(p.stem + ".ids.txt")


def check_scores_output(path, force: bool = False) -> list:
    """Check the outputs of ``--save-scores`` before the work: a ``.npy`` (with its ``.ids.txt``)
    or a ``.npz``, in an existing folder, not replacing a file without `force`. Returns the paths
    that will be written."""
    from mlrpl.utils.files import check_output
    path = Path(path)
    if path.suffix.lower() not in SCORES_FORMATS:
        raise MlrplError(f"{path}: a scores file must end in .npy (the logits, with the image ids "
                         f"in {scores_ids_path(path).name}) or .npz (scores, ids, classes)")
    outs = [check_output(path, force, "scores file")]
    if path.suffix.lower() == ".npy":
        outs.append(check_output(scores_ids_path(path), force, "scores' image-id file"))
    return outs


def write_scores(path, scores: np.ndarray, ids: Sequence[str], classes: Sequence[str],
                 kind: str = "logits", keep_old: bool = False) -> list:
    """Write scores (N, C) with their image ids (N) and classes (C), atomically.

    ``.npz``: arrays ``scores`` (float32), ``ids``, ``classes`` (unicode) and ``kind``
    (``"logits"`` or ``"probabilities"``). ``.npy``: the scores alone, and the ids one a line in
    ``<stem>.ids.txt`` beside it. Returns the paths written."""
    from mlrpl.utils.files import atomic_write, atomic_write_text, save_npy
    path = Path(path)
    scores = np.asarray(scores, dtype=np.float32)
    ids = [str(i) for i in ids]
    if len(ids) != scores.shape[0]:
        raise MlrplError(f"{path}: {len(ids)} image ids for {scores.shape[0]} rows of scores")
    if path.suffix.lower() == ".npz":
        arrays = {"scores": scores, "ids": np.array(ids, dtype=str),
                  "classes": np.array([str(c) for c in classes], dtype=str),
                  "kind": np.array(kind)}
        return [atomic_write(path, lambda fh: np.savez(fh, **arrays), keep_old=keep_old)]
    bad = [i for i in ids if "\n" in i or "\r" in i]
    if bad:
        raise MlrplError(f"{path}: image id {bad[0]!r} holds a line break and cannot be listed "
                         f"one a line; save the scores as .npz instead")
    side = scores_ids_path(path)
    atomic_write_text(side, "".join(i + "\n" for i in ids), keep_old=keep_old)
    return [save_npy(path, scores, keep_old=keep_old), side]


def read_scores(path) -> dict:
    """A scores file as ``{"scores": (N, C) float64, "ids": list or None, "classes": list or
    None, "kind": "logits" | "probabilities" | None}``: a ``.npy`` (its ``<stem>.ids.txt``
    read when present) or an ``.npz`` written by :func:`write_scores`. Any problem is one
    DataError naming the file."""
    path = Path(path)
    z = _load_array_file(path, "scores")
    ids = classes = kind = None
    if isinstance(z, dict):
        if "scores" not in z:
            raise DataError(f"no 'scores' array in this .npz (it holds {sorted(z)}); expected the "
                            f"file mlrpl eval --save-scores writes (scores, ids, classes)",
                            path=path)
        scores = z["scores"]
        if "ids" in z:
            ids = [str(x) for x in np.asarray(z["ids"]).reshape(-1)]
        if "classes" in z:
            classes = [str(x) for x in np.asarray(z["classes"]).reshape(-1)]
        if "kind" in z:
            kind = str(z["kind"])
            if kind not in ("logits", "probabilities"):
                raise DataError(f"field 'kind' is {kind!r}; expected 'logits' or "
                                f"'probabilities'", path=path)
    else:
        scores = z
        side = scores_ids_path(path)
        if side.is_file():
            try:
                ids = side.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as e:
                raise DataError(f"not UTF-8 text ({e})", path=side) from None
    if scores.dtype == object or not np.issubdtype(scores.dtype, np.number):
        raise DataError(f"scores must be numbers, got dtype {scores.dtype}", path=path)
    if scores.ndim != 2:
        raise DataError(f"scores must be a matrix (N images, C classes), got shape "
                        f"{scores.shape}", path=path)
    scores = scores.astype(np.float64)
    bad = np.argwhere(~np.isfinite(scores))
    if len(bad):
        raise DataError(f"{len(bad)} score(s) are NaN or infinite, first at row {bad[0][0]}, "
                        f"column {bad[0][1]}; expected finite logits or probabilities", path=path)
    if ids is not None and len(ids) != scores.shape[0]:
        where = path if isinstance(z, dict) else scores_ids_path(path)
        raise DataError(f"{len(ids)} image ids for {scores.shape[0]} rows of scores", path=where)
    if classes is not None and len(classes) != scores.shape[1]:
        raise DataError(f"{len(classes)} class names for {scores.shape[1]} columns of scores",
                        path=path)
    return {"scores": scores, "ids": ids, "classes": classes, "kind": kind}


def _load_array_file(path, what: str):
    """A .npy as an array or a .npz as a dict of arrays (no pickles); one DataError else."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found" if not path.exists() else
                        f"the {what} file is a folder", path=path)
    try:
        z = np.load(path, allow_pickle=False)
        if isinstance(z, np.lib.npyio.NpzFile):
            with z:
                return {k: z[k] for k in z.files}
        return z
    except (ValueError, OSError, EOFError, KeyError) as e:
        raise DataError(f"not a readable .npy/.npz array ({e})", path=path) from None
