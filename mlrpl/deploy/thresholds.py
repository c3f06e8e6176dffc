"""Per-class decision thresholds tuned on labelled validation data (``mlrpl tune-thresholds``).

For each class, the threshold on the probability that maximises F1 over the *known* entries of
that class (unknown entries take no part). A class with fewer than ``min_positives`` known
positives, or no known negative, gets the global threshold instead: the one that maximises F1
over all known entries of all classes pooled (the overall F1, OF1). Thresholds are written as
JSON beside the checkpoint (``best.pt`` -> ``best.thresholds.json``) and read back by
``mlrpl predict``, ``mlrpl export``, ``mlrpl eval --thresholds`` and :func:`mlrpl.load`.

The file records the model it was tuned for: ``model_digest``, a sha256 of the model's weights
(every tensor of the opened model, the backbone included: the same for a checkpoint and for the
bundle made from it, see :func:`model_digest`). Thresholds found beside a checkpoint that were
tuned for another model are not used (a warning says so); a file given explicitly is used with
a warning naming both models.

>>> import numpy as np
>>> probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.3, 0.1], [0.8, 0.4]])
>>> labels = np.array([[1, -1], [1, 1], [-1, 0], [-1, 1]], dtype=np.int8)  # 0: unknown
>>> t = tune_thresholds(probs, labels, min_positives=1)
>>> [round(float(x), 2) for x in t["thresholds"]]
[0.45, 0.3]
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from mlrpl.errors import MlrplError

SUFFIX = ".thresholds.json"


def best_f1_cut(probs: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``probs >= threshold`` against `positive`.

    probs, positive : (n,) arrays. The threshold lies halfway between two distinct
    probabilities (so that ties fall on one side). Returns (nan, 0.0) without positives."""
    n_pos = int(positive.sum())
    if n_pos == 0 or probs.size == 0:
        return float("nan"), 0.0
    order = np.argsort(-probs, kind="stable")
    p, y = probs[order], positive[order].astype(np.float64)
    tp = np.cumsum(y)
    k = np.arange(1, p.size + 1)
    f1 = 2 * tp / (k + n_pos)
    # A cut after position i is only possible where the next probability is lower (ties).
    ok = np.r_[p[1:] < p[:-1], True]
    f1 = np.where(ok, f1, -1.0)
    i = int(np.argmax(f1))
    below = p[i + 1] if i + 1 < p.size else max(p[i] - 1e-3, 0.0)
    thr = float((p[i] + below) / 2)
    return float(np.clip(thr, 1e-6, 1 - 1e-6)), float(f1[i])


def tune_thresholds(probs: np.ndarray, labels: np.ndarray, min_positives: int = 5,
                    classes: list[str] | None = None) -> dict:
    """Per-class F1-optimal thresholds on known entries, with a global fallback.

    Parameters
    ----------
    probs : (N, C) float array of probabilities.
    labels : (N, C) int8 array, +1 positive, -1 negative, 0 unknown.
    min_positives : a class with fewer known positives (or no known negative) takes the global
        threshold.

    Returns
    -------
    dict with ``thresholds`` (C,) floats, ``global_threshold``, and ``per_class``: a list of
    dicts (class, threshold, source "tuned" | "global", f1 at it, f1 at 0.5, positives,
    negatives).
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.shape != labels.shape or probs.ndim != 2:
        raise MlrplError(f"probabilities {probs.shape} and labels {labels.shape} must be (N, C)")
    known = labels != 0
    if not (labels[known] == 1).any():
        raise MlrplError("the labelled split has no known positive: thresholds cannot be tuned")
    g_thr, g_f1 = best_f1_cut(probs[known], labels[known] == 1)
    names = classes or [str(j) for j in range(probs.shape[1])]
    out, per_class = np.empty(probs.shape[1]), []
    for j, name in enumerate(names):
        m = known[:, j]
        p, y = probs[m, j], labels[m, j] == 1
        n_pos, n_neg = int(y.sum()), int((~y).sum())
        f1_half = _f1(p >= 0.5, y)
        if n_pos >= max(1, min_positives) and n_neg > 0:
            thr, f1 = best_f1_cut(p, y)
            source = "tuned"
        else:
            thr, f1, source = g_thr, _f1(p >= g_thr, y), "global"
        out[j] = thr
        per_class.append({"class": name, "threshold": round(thr, 6), "source": source,
                          "f1": round(f1, 6), "f1_at_0.5": round(f1_half, 6),
                          "positives": n_pos, "negatives": n_neg})
    return {"thresholds": out, "global_threshold": g_thr, "global_f1": g_f1,
            "per_class": per_class}


def _f1(pred: np.ndarray, y: np.ndarray) -> float:
    tp = float((pred & y).sum())
    denom = float(pred.sum() + y.sum())
    return 2 * tp / denom if denom else 0.0


def sidecar_path(checkpoint) -> Path:
    """Where tuned thresholds of a checkpoint live: ``best.pt`` -> ``best.thresholds.json``."""
    p = Path(checkpoint)
    return p.with_name(p.stem + SUFFIX)


def model_digest(model) -> str:
    """sha256 of a model's weights: the names, shapes, dtypes and values of every tensor of its
    ``state_dict()`` (backbone, method, prior), on the CPU. A checkpoint and the bundle made from
    it give the same digest; another training run, epoch or fine-tuning gives another."""
    import torch
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def thresholds_record(path) -> dict:
    """What a JSON thresholds file says about the model it was tuned for: ``model_digest`` (None
    when it records none), ``checkpoint`` and whether it was written by ``tune-thresholds``
    (``tuned``). A file that is not a readable JSON object gives an empty record."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"model_digest": None, "checkpoint": None, "tuned": False}
    if not isinstance(doc, dict):
        return {"model_digest": None, "checkpoint": None, "tuned": False}
    digest = doc.get("model_digest")
    return {"model_digest": digest if isinstance(digest, str) else None,
            "checkpoint": doc.get("checkpoint"),
            "tuned": doc.get("source") == "tuned" or "per_class" in doc}


def write_thresholds(path, classes: list[str], result: dict, meta: dict,
                     keep_old: bool = False) -> Path:
    """Write the tuned thresholds as JSON (atomically): ``{"thresholds": {class: t}, ...}``."""
    from mlrpl.utils.files import atomic_write_text
    path = Path(path)
    doc = {"source": "tuned", **meta,
           "global_threshold": round(float(result["global_threshold"]), 6),
           "thresholds": {c: round(float(t), 6) for c, t in zip(classes, result["thresholds"])},
           "per_class": result["per_class"]}
    return atomic_write_text(path, json.dumps(doc, indent=1), keep_old=keep_old)


def read_thresholds(path, classes: list[str]) -> tuple[np.ndarray, str]:
    """Per-class thresholds from a JSON ``{class: t}`` / ``{"thresholds": {...}}`` or a .npy (C,),
    and where they came from (the file's ``source``, else ``file``). The classes must be those
    of the model; every value a probability in [0, 1] (one reader:
    :func:`mlrpl.engine.evaluate.load_thresholds`)."""
    from mlrpl.engine.evaluate import load_thresholds
    arr = load_thresholds(path, classes)
    source = "file"
    if Path(path).suffix == ".json":
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        if isinstance(doc, dict) and isinstance(doc.get("source"), str):
            source = doc["source"]
    return arr, source


def tune_checkpoint(checkpoint, split: str | None = None, overrides=(), min_positives: int = 5,
                    out=None, backbone_weights=None, show_progress=None,
                    force: bool = False) -> dict:
    """Tune a checkpoint's thresholds on its evaluation split (or `split`) and write them.

    Returns a dict: ``path`` (the JSON written), ``classes``, ``result`` (see
    :func:`tune_thresholds`), ``metrics_default`` and ``metrics_tuned`` (CF1, OF1... at 0.5 and
    at the tuned thresholds, on the same split: optimistic), ``num_images``, ``dataset``."""
    from mlrpl.engine.evaluate import score, split_scores
    from mlrpl.engine.experiment import open_checkpoint
    model, ckpt, cfg = open_checkpoint(checkpoint, "cpu", backbone_weights, overrides=overrides,
                                       find_data=True)
    digest = model_digest(model)        # the weights as saved, before any forward pass
    ls, logits = split_scores(model, cfg, ckpt["classes"], split, "cpu", show_progress,
                              source=checkpoint)
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    result = tune_thresholds(probs, ls.labels, min_positives, list(ls.classes))
    path = Path(out) if out is not None else sidecar_path(checkpoint)
    meta = {"checkpoint": str(checkpoint), "model_digest": digest,
            "split": ls.source, "num_images": len(ls),
            "min_positives": int(min_positives), "criterion": "F1 on known entries"}
    write_thresholds(path, list(ls.classes), result, meta, keep_old=force)
    return {"path": path, "classes": list(ls.classes), "result": result,
            "model_digest": meta["model_digest"],
            "metrics_default": score(logits, ls.labels, 0.5, ls.classes),
            "metrics_tuned": score(logits, ls.labels, result["thresholds"], ls.classes),
            "num_images": len(ls), "dataset": ls.source}
