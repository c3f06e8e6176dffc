"""How far to trust the class prior, per class, from the training split's known labels.

The prior (mlrpl.models.prior) maps ImageNet categories to the dataset's classes by the similarity
of their names. Where a class's name has no ImageNet counterpart (a genre, a defect, an opaque
code) the mapping is noise, and applying it at full weight can only hurt. Before the first epoch,
each class's prior is scored against the known labels of the training images (never the
evaluation split):

* **measured**: the area under the ROC curve of the prior's scores on the class's known entries
  (known positives against known negatives; 0.5 is chance, whatever the class's frequency), and
  the one-sided z statistic of the Mann-Whitney test against chance. The measured value is
  ``z / z_min`` clipped to [0, 1]: none for a prior no better than chance (AUC <= 0.5), full once
  the known labels show it beats chance at the 5% level (z >= 1.645), in between while the
  evidence is weak.
* **named**: the cosine similarity of the class name with its closest ImageNet name, mapped
  linearly from 0 at ``similarity_low`` to 1 at ``similarity_high``: all there is to go on for a
  class without known positives. A name WordNet places ImageNet categories under
  (``model.prior.match: wordnet``) counts as similarity 1.

A class with at least ``min_positives`` known positives gets the measured value alone; one with
fewer mixes the two in proportion (``n⁺ / min_positives`` of the measured value), so a single known
positive cannot switch a well-named class off, and a class whose name matches nothing gets no
prior unless its labels show that it works. The prior's logits are multiplied by the trust:
0 removes the prior from the class, and the method's head then learns the class alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class TrustRule:
    min_positives: int = 5       # known positives from which the measurement alone decides
    z_min: float = 1.645         # z from which the measurement alone gives full trust (one-sided 5%)
    similarity_low: float = 0.3  # name similarity worth nothing ...
    similarity_high: float = 0.5  # ... and worth full trust


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN without both kinds of labels.

    >>> roc_auc(np.array([0.9, 0.2, 0.4, 0.4]), np.array([True, False, True, False]))
    0.875
    """
    s, y = np.asarray(scores, float), np.asarray(positive, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, where, count = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(count) - (count - 1) / 2)[where]      # 1-based, ties share their mean
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def chance_z(auc: float, n_pos: int, n_neg: int) -> float:
    """z of the Mann-Whitney statistic against chance (AUC 0.5); NaN when undefined."""
    if not (n_pos and n_neg) or math.isnan(auc):
        return float("nan")
    return (auc - 0.5) / math.sqrt((n_pos + n_neg + 1) / (12.0 * n_pos * n_neg))


def measure_trust(scores: np.ndarray, partial: np.ndarray, similarity, classes: list[str],
                  rule: TrustRule = TrustRule()) -> tuple[np.ndarray, list[dict]]:
    """Per-class trust in [0, 1] and its table (one dict per class).

    scores : (N, C) the prior's logits (before trust) on the training images
    partial : (N, C) known labels (1 positive, -1 negative, 0 unknown)
    similarity : (C,) cosine similarity of each class name with its closest ImageNet name (1 for
        a name WordNet places ImageNet categories under)
    """
    scores, partial = np.asarray(scores, float), np.asarray(partial)
    trust, table = np.zeros(len(classes)), []
    for c, name in enumerate(classes):
        known = partial[:, c] != 0
        pos = partial[known, c] > 0
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        auc = roc_auc(scores[known, c], pos)
        z = chance_z(auc, n_pos, n_neg)
        measured = 0.0 if math.isnan(z) else min(1.0, max(0.0, z / rule.z_min))
        sim = float(similarity[c])
        named = min(1.0, max(0.0, (sim - rule.similarity_low)
                             / (rule.similarity_high - rule.similarity_low)))
        share = min(1.0, n_pos / rule.min_positives) if n_neg else 0.0
        trust[c] = share * measured + (1 - share) * named
        table.append({"class": name, "known_positives": n_pos, "known_negatives": n_neg,
                      "auc": None if math.isnan(auc) else round(auc, 4),
                      "z": None if math.isnan(z) else round(z, 2),
                      "measured": round(measured, 4), "name_similarity": round(sim, 3),
                      "named": round(named, 4), "trust": round(float(trust[c]), 4)})
    return trust, table


def trust_summary(table: list[dict], most: int = 8) -> str:
    """One log line: how many classes keep the prior, and the least trusted ones."""
    off = [r["class"] for r in table if r["trust"] == 0]
    low = sorted(table, key=lambda r: r["trust"])[:most]
    full = sum(r["trust"] >= 0.5 for r in table)
    return (f"prior trust from the known training labels: {full} of {len(table)} classes >= 0.5, "
            f"{len(off)} switched off" + (f" ({', '.join(off[:most])})" if off else "")
            + "; least trusted: " + ", ".join(f"{r['class']} {r['trust']:.2f}" for r in low))


def plot_trust(table: list[dict], path) -> bool:
    """A bar per class (trust, and the measured AUC as a dot) saved to `path`; False (nothing
    written) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlrpl.utils.files import atomic_write
    n = len(table)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * n + 2), 3.6))
    x = np.arange(n)
    ax.bar(x, [r["trust"] for r in table], color="#4C72B0", label="trust")
    auc = [np.nan if r["auc"] is None else r["auc"] for r in table]
    ax.plot(x, auc, "o", color="#DD8452", ms=3, label="AUC of the prior on the known labels")
    ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax.set_xticks(x, [r["class"] for r in table], rotation=90, fontsize=6 if n > 40 else 8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("per class")
    ax.set_title("Class prior: trust from the training split's known labels", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)
    return True
