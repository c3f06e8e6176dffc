"""Which labels to annotate next (``mlrpl suggest``): the unknown entries of a run's training
labels, ranked by what an answer is worth, written as an ask file for an annotator.

The checkpoint records the run's config: the training split is rebuilt from it as ``mlrpl eval``
rebuilds the evaluation split (the data found where the run found it, the same seeded hold-out),
and so are its partial labels: the user's own label file as it is now (a CSV with blanks, whose
unknowns are the blanks), a mask file, or the simulated protocol redrawn with the run's seed. The
model scores every training image (through the feature cache when the run used one) and one of
five strategies ranks the unknown (image, class) entries:

``random``
    a seeded uniform draw per entry (the reference every other strategy must beat);
``uncertainty``
    the probability closest to the class's decision threshold, ``|p - t_c|`` smallest first;
``class-balance``
    the classes with the fewest known positives first, round-robin over the classes (one entry
    of each class in turn), the most uncertain entry first inside each class;
``related-classes``
    class-balance's turns, except inside a class with fewer than 3 known positives: a model told
    only where such a class is absent cannot say where it is, so its entries are ranked by the
    model's probability plus how strongly the image holds a class whose name is related to it:
    the largest ``q_ij * s_cj`` over the class's ten most related classes ``j``, where ``s_cj`` is
    the cosine similarity of the two names' label embeddings (the run's, as the methods find
    them) and ``q_ij`` is 1 for a known positive, 0 for a known negative, and the model's
    probability for an unknown entry of a class with known positives (0 for one without). A fork
    is looked for where a dining table or a knife is. The names are first checked on the known
    labels (:func:`names_check`): where they do not rank them above ROC AUC 0.55 (photos of one
    subject each, names that are codes), the ranking is class-balance's;
``expected-gain``
    the expected gain in mAP of asking the entry: the chance of a positive times what one more
    positive is worth to its class, the chance of a negative times what one more negative is
    worth, plus the chance that the answer corrects the model's decision times what one
    mis-ranked positive weighs in the class's AP (docs/decisions.md, "Which labels to annotate
    next").

The decision threshold ``t_c`` (``thresholds="auto"``) is the model's own: thresholds tuned for
it (``mlrpl tune-thresholds``) or learned by the method (SATL); a model without any gets each
class's operating point on its known training labels (the F1-optimal cut of
:func:`mlrpl.deploy.thresholds.tune_thresholds`, the global cut for classes with fewer than 3
known positives), not a flat 0.5, which a class whose scores all lie low would never reach.

The ask file is the long layout ``image,label,value`` with ``value`` blank, plus ``rank``,
``score`` and ``reason``: the CSV reader ignores those three, so the file, once filled in, reads
as labels (``mlrpl data merge``, training). Image paths are relative to the ask file's folder.
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
from pathlib import Path

import numpy as np

from mlrpl.data.encoding import NEG, POS, UNK
from mlrpl.errors import DataError, MlrplError

__all__ = ["STRATEGIES", "rank_entries", "suggest", "training_probabilities", "write_ask_file"]

STRATEGIES = ("random", "uncertainty", "class-balance", "related-classes", "expected-gain")
MIN_POSITIVES_FOR_OWN_CUT = 3
RELATED_CLASSES = 10          # related-classes: the most related names each class looks through
NAMES_MIN_AUC = 0.55          # related-classes: how well related names must rank the known labels


# ---- ranking (pure) ---------------------------------------------------------------------------
def check_request(budget, strategy: str, per_image) -> int | str | None:
    """Validate the arguments that need no data; returns `per_image` as None, an int or "all"."""
    if strategy not in STRATEGIES:
        import difflib
        close = difflib.get_close_matches(str(strategy), STRATEGIES, n=1)
        raise MlrplError(f"--strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}"
                         + (f"; did you mean {close[0]!r}?" if close else ""))
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise MlrplError(f"--budget {budget!r}: expected the number of entries to ask, an "
                         f"integer of at least 1")
    if per_image is None:
        return None
    if isinstance(per_image, str):
        if per_image.strip().lower() == "all":
            return "all"
        try:
            per_image = int(per_image)
        except ValueError:
            raise MlrplError(f"--per-image {per_image!r}: expected a number of entries per image "
                             f"(at least 1) or 'all'") from None
    if isinstance(per_image, bool) or int(per_image) < 1:
        raise MlrplError(f"--per-image {per_image!r}: expected a number of entries per image "
                         f"(at least 1) or 'all'")
    return int(per_image)


def _unknown_count_error(budget: int, partial: np.ndarray, where: str) -> MlrplError:
    n_unknown = int((partial == UNK).sum())
    return MlrplError(f"--budget {budget}: {where} has only {n_unknown} unknown entries "
                      f"({partial.shape[0]} images x {partial.shape[1]} classes, "
                      f"{int((partial != UNK).sum())} known); ask for at most {n_unknown}")


def _round_robin(cc, dist, npos, tie=None) -> np.ndarray:
    """class-balance's order: classes by known positives (fewest first, then class index), one
    entry of each in turn, each class's entries by `dist` (smallest first; then `tie`, then
    index)."""
    k = np.arange(len(cc))
    keys = (k, dist, cc) if tie is None else (k, tie, dist, cc)
    by_class = np.lexsort(keys)                           # grouped by class, closest first
    depth = np.empty(len(cc), dtype=np.int64)
    sorted_cc = cc[by_class]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_cc)) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(cc)]))
    depth[by_class] = np.arange(len(cc)) - first          # place inside its class's queue
    class_pos = np.empty(len(npos), dtype=np.int64)
    class_pos[np.lexsort((np.arange(len(npos)), npos))] = np.arange(len(npos))
    return np.lexsort((class_pos[cc], depth))             # round by round, classes in order


def _relations(probs, partial, similarity):
    """What related-classes reads, computed once: (q (N, C): 1 for a known positive, 0 for a
    known negative, the model's probability for an unknown entry of a class with known
    positives, 0 otherwise; s (C, C): the similarity, negatives and the diagonal 0; nbr (C, k):
    each class's RELATED_CLASSES most similar others, most similar first)."""
    c = partial.shape[1]
    s = np.clip(np.asarray(similarity, dtype=np.float64), 0.0, None)
    if s.shape != (c, c):
        raise MlrplError(f"class similarity {s.shape}: expected ({c}, {c}), one row and column "
                         f"per class")
    s = s.copy()
    np.fill_diagonal(s, 0.0)
    npos = (partial == POS).sum(0)
    q = np.where(partial == POS, 1.0, np.where(partial == NEG, 0.0, probs * (npos > 0)[None]))
    nbr = np.argsort(-s, axis=1, kind="stable")[:, :min(RELATED_CLASSES, c - 1)]
    return q, s, nbr


def _related_strength(rel, ii, cc):
    """How strongly image ii holds a class related to cc by name, for the entries (ii, cc):
    ``max_j q_ij * s_cj`` over the class's related classes (`rel` from :func:`_relations`).
    Returns (strength, the class j giving it or -1)."""
    q, s, nbr = rel
    if nbr.shape[1] == 0 or len(ii) == 0:
        return np.zeros(len(ii)), np.full(len(ii), -1, dtype=np.int64)
    held = q[ii[:, None], nbr[cc]] * s[cc[:, None], nbr[cc]]      # (K, k)
    best = np.argmax(held, axis=1)
    strength = held[np.arange(len(ii)), best]
    return strength, np.where(strength > 0, nbr[cc, best], -1)


def _related_presence(probs, partial, ii, cc, similarity, rel=None):
    """related-classes: :func:`_related_strength` for the unknown entries (ii, cc) of classes
    with fewer than MIN_POSITIVES_FOR_OWN_CUT known positives; 0 and -1 for the others. `rel`:
    :func:`_relations` when already computed."""
    strength = np.zeros(len(ii))
    source = np.full(len(ii), -1, dtype=np.int64)
    few = (partial == POS).sum(0)[cc] < MIN_POSITIVES_FOR_OWN_CUT
    if rel is None:
        rel = _relations(probs, partial, similarity)
    strength[few], source[few] = _related_strength(rel, ii[few], cc[few])
    return strength, source


def names_check(probs, partial, similarity) -> tuple[float, int]:
    """Do related names mark classes found together here? The related strength of the known
    entries of each class with a known positive and a known negative, as a score of its known
    labels: (the mean ROC AUC over those classes, their number); (NaN, 0) when no class has
    both. 0.5 is chance; below it, an image holding a related class is less likely to hold the
    class (photos of one subject each). related-classes uses the names only above
    NAMES_MIN_AUC (:func:`names_usable`)."""
    return _names_check(_relations(probs, partial, similarity), partial)


def names_usable(check: tuple[float, int]) -> bool:
    """Whether related-classes uses the names, given :func:`names_check`'s (AUC, classes)."""
    auc, checked = check
    return checked > 0 and auc > NAMES_MIN_AUC


def _names_check(rel, partial) -> tuple[float, int]:
    from mlrpl.models.prior_trust import roc_auc
    npos, nneg = (partial == POS).sum(0), (partial == NEG).sum(0)
    aucs = []
    for j in np.flatnonzero((npos > 0) & (nneg > 0)):
        ii = np.flatnonzero(partial[:, j] != UNK)
        strength, _ = _related_strength(rel, ii, np.full(len(ii), j))
        aucs.append(roc_auc(strength, partial[ii, j] == POS))
    return (float(np.mean(aucs)), len(aucs)) if aucs else (float("nan"), 0)


def _strategy_scores(probs, partial, strategy, thresholds, seed, similarity=None, names=None):
    """(entries (K, 2) row-major, scores (K,), order of the entries (K,), details). `names`:
    :func:`names_check`'s result when the caller has it (related-classes)."""
    n, c = partial.shape
    ii, cc = np.nonzero(partial == UNK)
    p = probs[ii, cc]
    t = thresholds[cc]
    npos = (partial == POS).sum(0)
    nneg = (partial == NEG).sum(0)
    dist = np.abs(p - t)
    info = {"npos": npos, "nneg": nneg}
    if strategy == "random":
        # one draw per entry of the whole matrix: an entry's draw does not depend on the others
        score = np.random.default_rng(seed).random((n, c))[ii, cc]
        order = np.argsort(-score, kind="stable")
    elif strategy == "uncertainty":
        score = 1.0 - dist
        order = np.argsort(dist, kind="stable")
    elif strategy == "class-balance":
        score = (1.0 - dist) / (1.0 + npos[cc])
        order = _round_robin(cc, dist, npos)
    elif strategy == "related-classes":
        if similarity is None:
            raise MlrplError("strategy 'related-classes' needs the classes' name similarity "
                             "(C x C): suggest takes it from the run's label embeddings")
        rel = _relations(probs, partial, similarity)
        names = _names_check(rel, partial) if names is None else names
        used = names_usable(names)
        info.update(names_auc=names[0], names_checked=names[1], names_used=used)
        if used:
            strength, source = _related_presence(probs, partial, ii, cc, similarity, rel)
        else:                       # names that do not mark classes found together: no use
            strength, source = np.zeros(len(ii)), np.full(len(ii), -1, dtype=np.int64)
        # inside a class with fewer than 3 known positives: the model's probability plus the
        # related classes' strength (without the ImageNet prior, the model's scores of a class
        # without known positives are small and say nothing, and the strength decides; with it,
        # they are the prior's and count); then the distance to the threshold. Classes with
        # more known positives as class-balance.
        few = (npos[cc] < MIN_POSITIVES_FOR_OWN_CUT) & used
        likely = p + strength
        score = np.where(few, likely, (1.0 - dist) / (1.0 + npos[cc]))
        order = _round_robin(cc, np.where(few, -likely, dist), npos, tie=dist)
        info.update(strength=strength, source=source)
    elif strategy == "expected-gain":
        # expected positives of each class: known ones + the model's expectation of the unknowns
        phat = npos + np.bincount(cc, weights=p, minlength=c)
        flip = np.where(p < t, p, 1.0 - p)               # P(the answer contradicts p vs t)
        fix = flip / (1.0 + phat[cc])
        score = _gain(p, npos[cc], nneg[cc], fix, c)
        order = np.argsort(-score, kind="stable")
        info.update(p=p, fix=fix, flip=flip, cc=cc)
    else:  # pragma: no cover - check_request names them
        raise MlrplError(f"unknown strategy {strategy!r}")
    return np.stack([ii, cc], 1), score, order, info


def _gain(p, npos, nneg, fix, c):
    """Expected mAP gain of asking entries of probability `p` in classes with `npos` / `nneg`
    known (or expected) positives / negatives; `fix` the correction term (docs/decisions.md,
    "Which labels to annotate next"). A class's AP is modelled as a log learning curve in its
    effective number of labelled pairs h = PQ / (P + Q) (P, Q: positives and negatives plus
    one), so one more positive is worth (Q / (P + Q))^2 / (1 + h) and one more negative
    (P / (P + Q))^2 / (1 + h): a positive is worth most where positives are scarce, a negative
    where negatives are; mAP averages the C classes."""
    pp, qq = npos + 1.0, nneg + 1.0
    h = pp * qq / (pp + qq)
    g_pos = (qq / (pp + qq)) ** 2 / (1.0 + h)
    g_neg = (pp / (pp + qq)) ** 2 / (1.0 + h)
    return (p * g_pos + (1.0 - p) * g_neg + fix) / c


def _greedy_gain(entries, score, info, budget, cap):
    """expected-gain, batch-aware: entries taken one at a time, each adding p expected positives
    and 1 - p expected negatives to its class, so that the next entry of that class is valued
    with them (the 100th negative of a class is not worth the first). A taken entry's score is
    its gain given those ranked above it. A heap holds each class's best entry; taking one
    re-values only its class."""
    import heapq
    cc, p, fix = info["cc"], info["p"], info["fix"]
    c = len(info["npos"])
    epos = info["npos"].astype(np.float64)
    eneg = info["nneg"].astype(np.float64)
    order = np.argsort(cc, kind="stable")
    bounds = np.searchsorted(cc[order], np.arange(c + 1))
    members = [order[bounds[j]:bounds[j + 1]] for j in range(c)]
    open_ = np.ones(len(cc), dtype=bool)

    def best(j):
        ks = members[j][open_[members[j]]]
        if not len(ks):
            return None
        g = _gain(p[ks], epos[j], eneg[j], fix[ks], c)
        m = int(np.argmax(g))                             # the first of equal gains
        return float(g[m]), int(ks[m])

    heap = []
    for j in range(c):
        b = best(j)
        if b is not None:
            heap.append((-b[0], b[1], j))
    heapq.heapify(heap)
    chosen, gains, taken = [], [], {}
    while heap and len(chosen) < budget:
        neg, k, j = heapq.heappop(heap)
        i = int(entries[k, 0])
        open_[k] = False
        if cap is None or taken.get(i, 0) < cap:
            taken[i] = taken.get(i, 0) + 1
            chosen.append(k)
            gains.append(-neg)
            epos[j] += p[k]
            eneg[j] += 1.0 - p[k]
        b = best(j)
        if b is not None:
            heapq.heappush(heap, (-b[0], b[1], j))
    return chosen, np.asarray(gains)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _reason(strategy, k, i, j, p, t, info, seed, thr_source, above: int = 0) -> str:
    """The reason column: what the score was made of. `above`: entries of the same class ranked
    above this one (expected-gain counts what their answers are expected to add)."""
    npos = int(info["npos"][j])
    if strategy == "related-classes" and not info["names_used"]:
        return (f"class has {_plural(npos, 'known positive')}; p={p:.3f} vs threshold {t:.3f} "
                f"(as class-balance: related names did not rank the known labels, AUC "
                f"{info['names_auc']:.2f})")
    if strategy == "related-classes" and npos < MIN_POSITIVES_FOR_OWN_CUT:
        src = int(info["source"][k])
        own = f"p={p:.3f} plus: "
        if src < 0:
            return (f"class has {_plural(npos, 'known positive')}; no class related to it by "
                    f"name is known or predicted in the image; p={p:.3f} vs threshold {t:.3f}")
        names = info.get("names")
        other = names[src] if names is not None else f"class {src}"
        held = ("a known positive" if info["partial"][i, src] == POS else
                f"p={info['probs'][i, src]:.3f}")
        return (f"class has {_plural(npos, 'known positive')}; {own}the image holds {other} "
                f"({held}), related by name (similarity {info['similarity'][j, src]:.2f})")
    if strategy == "related-classes":
        strategy = "class-balance"
    if strategy == "random":
        return f"random draw (seed {seed})"
    near = f"p={p:.3f} vs threshold {t:.3f}"
    if strategy == "uncertainty":
        return f"{near} ({_short_source(thr_source)})" if thr_source else near
    if strategy == "class-balance":
        return f"class has {_plural(npos, 'known positive')}; {near}"
    nneg = int(info["nneg"][j])
    return (f"p={p:.3f}; class has {_plural(npos, 'known positive')} and "
            f"{_plural(nneg, 'known negative')}"
            + (f", and {above} of its entries ranked above" if above else "")
            + f"; the answer corrects the model with chance {info['flip'][k]:.2f} "
              f"(threshold {t:.3f})")


def _short_source(source: str) -> str:
    """Where a threshold came from, in a word or two (the reason column)."""
    s = source.lower()
    for key, word in (("tuned", "tuned"), ("learned", "learned"), ("operating point",
                      "operating point"), ("file", "file"), ("default", "default")):
        if key in s:
            return f"{word} threshold"
    return "threshold " + source


def rank_entries(probs, partial, strategy: str = "uncertainty", budget: int | None = None,
                 thresholds=None, seed: int = 0, per_image=None,
                 thresholds_source: str = "", similarity=None, class_names=None,
                 names=None) -> list[dict]:
    """The unknown entries of `partial` to ask, best first.

    Parameters
    ----------
    probs : (N, C) probabilities of the model on the training images.
    partial : (N, C) int8 partial labels (+1 / -1 known, 0 unknown): only 0 entries are ranked.
    strategy : one of :data:`STRATEGIES`.
    budget : the number of entries to return (default: every unknown entry).
    thresholds : (C,) decision thresholds (default 0.5 for every class).
    per_image : None, an int K (at most K entries of one image), or ``"all"`` (every unknown
        entry of the chosen images: images ranked by the sum of their entries' scores, or by a
        seeded draw for ``random``, taken whole while they fit in the budget).
    similarity : (C, C) similarity of the class names (``related-classes`` needs it; cosine
        similarity of label embeddings, negative values count as unrelated).
    class_names : the C class names, for the reason column.
    names : :func:`names_check`'s result for these arrays, when the caller has computed it.

    Returns
    -------
    list of dicts ``{"rank", "item", "class", "score", "probability", "reason"}`` (item and class
    are indices), in the order to ask them. ``score`` is the strategy's: the draw (random),
    ``1 - |p - t|`` (uncertainty), that divided by 1 + the class's known positives
    (class-balance, whose order is the round-robin), for related-classes the related class's
    strength in the image where the class has no known positive (class-balance's score
    elsewhere), the expected gain given the entries ranked above (expected-gain; with
    ``per_image="all"`` the gain of the entry alone).

    Example
    -------
    >>> probs = np.array([[0.9, 0.45], [0.2, 0.6]])
    >>> partial = np.array([[0, 0], [1, 0]], dtype=np.int8)
    >>> [(r["item"], r["class"]) for r in rank_entries(probs, partial, "uncertainty", 2)]
    [(0, 1), (1, 1)]
    """
    probs = np.asarray(probs, dtype=np.float64)
    partial = np.asarray(partial)
    if probs.shape != partial.shape or probs.ndim != 2:
        raise MlrplError(f"probabilities {probs.shape} and partial labels {partial.shape} must "
                         f"both be (N, C)")
    n, c = partial.shape
    n_unknown = int((partial == UNK).sum())
    budget = n_unknown if budget is None else budget
    per_image = check_request(budget, strategy, per_image)
    if budget > n_unknown:
        raise _unknown_count_error(budget, partial, "the training split")
    t = np.full(c, 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    if t.shape != (c,):
        raise MlrplError(f"{t.shape[0] if t.ndim else 1} thresholds for {c} classes")
    entries, score, order, info = _strategy_scores(probs, partial, strategy, t, seed, similarity,
                                                   names)
    if strategy == "related-classes":
        info.update(names=class_names, partial=partial, probs=probs,
                    similarity=np.asarray(similarity, dtype=np.float64))
    shown = score

    if per_image == "all":
        if strategy == "random":
            image_score = np.random.default_rng([seed, 1]).random(n)
        else:
            image_score = np.bincount(entries[:, 0], weights=score, minlength=n)
        place = np.empty(len(order), dtype=np.int64)
        place[order] = np.arange(len(order))
        grouped = np.lexsort((place, entries[:, 0]))   # by image, in strategy order inside
        bounds = np.searchsorted(entries[grouped, 0], np.arange(n + 1))
        chosen, left = [], budget
        for i in np.argsort(-image_score, kind="stable"):
            size = int(bounds[i + 1] - bounds[i])
            if 0 < size <= left:
                chosen.extend(grouped[bounds[i]:bounds[i + 1]].tolist())
                left -= size
            if left == 0:
                break
    elif strategy == "expected-gain":
        chosen, gains = _greedy_gain(entries, score, info, budget, per_image)
        shown = score.copy()
        shown[chosen] = gains
    else:
        chosen, taken = [], {}
        for k in order:
            i = int(entries[k, 0])
            if per_image is not None and taken.get(i, 0) >= per_image:
                continue
            taken[i] = taken.get(i, 0) + 1
            chosen.append(int(k))
            if len(chosen) == budget:
                break
    rows, above = [], np.zeros(c, dtype=np.int64)
    for rank, k in enumerate(chosen, 1):
        i, j = int(entries[k, 0]), int(entries[k, 1])
        counted = int(above[j]) if strategy == "expected-gain" and per_image != "all" else 0
        rows.append({"rank": rank, "item": i, "class": j, "score": float(shown[k]),
                     "probability": float(probs[i, j]),
                     "reason": _reason(strategy, k, i, j, float(probs[i, j]), float(t[j]), info,
                                       seed, thresholds_source, counted)})
        above[j] += 1
    return rows


# ---- the run's training images, partial labels and scores ---------------------------------------
@contextlib.contextmanager
def _quiet_log():
    """Rebuilding the partial labels repeats training's warnings (classes without a known
    label...); they are not this verb's to say."""
    log = logging.getLogger("mlrpl")
    drop = logging.Filter("mlrpl.__none__")   # passes no record of the logger "mlrpl"
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


def _label_file(cfg) -> str:
    from mlrpl.engine.experiment import data_root
    return str(data_root(cfg.data.root))


def training_labels(checkpoint, overrides=(), backbone_weights=None):
    """(model, checkpoint dict, config, training LabelSet, partial labels (N, C), note) of a
    checkpoint's run: the training split and its partial labels as the run built them, from the
    label files as they are now. `note`: a line when they differ from those it trained on."""
    from mlrpl.data import read_dataset
    from mlrpl.data.labelset import label_hash
    from mlrpl.engine.checkpoint import load_checkpoint
    from mlrpl.engine.evaluate import check_data_paths
    from mlrpl.engine.experiment import (class_difference, data_root, load_splits, make_partial,
                                         open_checkpoint, seeded_split)
    path = Path(checkpoint)
    ckpt = load_checkpoint(path)
    model, ckpt, cfg = open_checkpoint(path, None, backbone_weights, overrides=overrides,
                                       ckpt=ckpt, find_data=True)
    check_data_paths(cfg, path)
    d = cfg.data
    train_file = read_dataset(d.dataset, data_root(d.root), d.train_split,
                              **dict(d.reader_options or {}))
    classes = list(ckpt["classes"])
    if list(train_file.classes) != classes:
        raise DataError(f"its classes differ from those of the checkpoint {path}: "
                        f"{class_difference(train_file.classes, classes, 'label file', 'checkpoint')}"
                        f"; suggest from a model trained on this label file",
                        path=train_file.source.split(":", 1)[-1] or _label_file(cfg))
    train, _ = load_splits(cfg)
    with _quiet_log():
        partial, _ = make_partial(cfg, train, None)
    note = None
    trained = partial
    if cfg.train.select == "train_holdout":
        keep, _ = seeded_split(len(train), cfg.train.select_holdout, cfg.data.split_seed)
        trained = partial[keep]
    if cfg.data.on_bad_image != "skip" and ckpt.get("mask_hash") and \
            label_hash(trained, classes) != ckpt["mask_hash"]:
        note = (f"the training labels of {_label_file(cfg)} differ from those {path.name} was "
                f"trained on (changed since, e.g. answers merged into them): the unknown entries "
                f"ranked are those of the labels as they are now")
    return model, ckpt, cfg, train, partial, note


def training_probabilities(model, cfg, train, show_progress=None):
    """(probabilities (N', C), kept indices or None): the model on the training images, as
    evaluation scores them (no augmentation; the feature cache when the run used one)."""
    import torch
    from mlrpl.engine.evaluate import predict_logits
    from mlrpl.engine.experiment import make_dataset
    from mlrpl.engine.runtime import amp_dtype
    device = cfg.train.device
    ds, kept = make_dataset(cfg, train, None, model.backbone, device, train=False,
                            show_progress=show_progress)
    logits = predict_logits(model, ds, cfg.train.eval_batch_size, device, amp_dtype(cfg.train.amp),
                            cfg.data.num_workers, show_progress)
    return torch.sigmoid(torch.from_numpy(logits).double()).numpy(), kept


def decision_thresholds(spec, checkpoint, ckpt, model, probs, partial, warn=None):
    """((C,) thresholds, where they came from): the model's own (tuned, learned) with ``auto``,
    else each class's operating point on the known training labels; or a number, a file,
    ``model``/``tuned``/``learned`` as predict takes them."""
    from mlrpl.deploy.predict import resolve_thresholds
    from mlrpl.deploy.thresholds import tune_thresholds
    auto = spec in (None, "auto")
    arr, source = resolve_thresholds(spec, checkpoint, ckpt, model, warn=warn)
    if auto and source.endswith("(default)"):
        res = tune_thresholds(probs, partial, min_positives=MIN_POSITIVES_FOR_OWN_CUT)
        arr = np.asarray(res["thresholds"], dtype=np.float64)
        source = (f"each class's operating point on the known training labels (F1-optimal; "
                  f"classes with fewer than {MIN_POSITIVES_FOR_OWN_CUT} known positives: the "
                  f"global cut {res['global_threshold']:.3f})")
    return arr, source


def name_similarity(cfg, classes):
    """((C, C) cosine similarity of the class names, where the vectors came from): the run's
    label embeddings, found as the methods find them (``data.embeddings``, a file covering the
    classes beside the data or under MLRPL_DATA, else the offline sentence encoder)."""
    from mlrpl.engine.experiment import find_embeddings
    vectors, origin = find_embeddings(cfg, classes)
    v = np.asarray(vectors, dtype=np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v @ v.T, origin


# ---- the verb ----------------------------------------------------------------------------------
def _image_spelling(path: Path, item: str, out_dir: Path | None) -> str:
    """How the ask file names an image: relative to its own folder, as every label CSV does."""
    if out_dir is None or os.path.isabs(item):
        return item
    if not path.exists():
        return item
    return os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir))


def write_ask_file(rows, out, keep_old: bool = False) -> None:
    """Write an ask file (atomically): ``image,label,value,rank,score,reason`` with ``value``
    blank; ``rows`` dicts with image, label, rank, score (None: blank) and reason."""
    from mlrpl.utils.files import atomic_write
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "label", "value", "rank", "score", "reason"])
    for r in rows:
        score = "" if r["score"] is None else f"{r['score']:.6g}"
        w.writerow([r["image"], r["label"], "", r["rank"], score, r["reason"]])
    text = buf.getvalue()
    atomic_write(out, lambda fh: fh.write(text), mode="w", keep_old=keep_old, newline="",
                 encoding="utf-8")


def suggest(checkpoint, budget: int, strategy: str = "uncertainty", per_image=None,
            seed: int = 0, out=None, force: bool = False, thresholds="auto", overrides=(),
            backbone_weights=None, warn=None, show_progress=None) -> dict:
    """Rank the unknown entries of a run's training labels and write the best `budget` of them
    as an ask file (see the module docstring). Nothing is written when an argument is wrong.

    Returns a dict: ``rows`` (one dict per entry: rank, image, label, score, probability,
    reason), ``out``, ``unknown_entries``, ``images`` (training images scored), ``entries``
    (their entries), ``thresholds_source``, ``label_file``, ``note`` (or None), ``strategy``.
    """
    from mlrpl.utils.files import check_output
    per_image = check_request(budget, strategy, per_image)
    out = None if out is None else check_output(out, force, "ask file")
    model, ckpt, cfg, train, partial, note = training_labels(checkpoint, overrides,
                                                             backbone_weights)
    if budget > int((partial == UNK).sum()):
        raise _unknown_count_error(budget, partial, f"the training split of {_label_file(cfg)}")
    probs, kept = training_probabilities(model, cfg, train, show_progress)
    if kept is not None:
        train, partial = train.subset(kept), partial[kept]
        if budget > int((partial == UNK).sum()):
            raise _unknown_count_error(budget, partial, "the readable training images")
    thr, source = decision_thresholds(thresholds, checkpoint, ckpt, model, probs, partial, warn)
    similarity, names_from, names = None, None, None
    if strategy == "related-classes":
        similarity, names_from = name_similarity(cfg, list(train.classes))
        names = names_check(probs, partial, similarity)      # checked once, printed and used
    rows = rank_entries(probs, partial, strategy, budget, thr, seed, per_image, source,
                        similarity, list(train.classes), names)
    names_auc = names or (float("nan"), 0)
    out_dir = None if out is None else (out.parent if str(out.parent) else Path("."))
    paths = train.paths()
    for r in rows:
        i, j = r.pop("item"), r.pop("class")
        r["image"] = _image_spelling(paths[i], train.items[i], out_dir)
        r["label"] = train.classes[j]
    if out is not None:
        write_ask_file(rows, out, keep_old=force)
    return {"rows": rows, "out": None if out is None else str(out),
            "unknown_entries": int((partial == UNK).sum()), "images": len(train),
            "entries": int(partial.size), "thresholds_source": source,
            "label_file": _label_file(cfg), "dataset": cfg.data.dataset, "note": note,
            "strategy": strategy, "per_image": per_image, "similarity_source": names_from,
            "names_auc": names_auc[0], "names_checked": names_auc[1],
            "names_used": names_usable(names_auc),
            "asked_images": len({r["image"] for r in rows})}
