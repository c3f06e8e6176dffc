"""SATL thresholds out of a checkpoint: the per-class JSON and the figure of the score
distributions with their thresholds (at the start of pseudo-labelling and at the end).

    mlrpl thresholds --checkpoint RUN/last.pt --out thresholds.json --plot distributions.png

JSON: ``{"method", "checkpoint", "epoch", "config": {...}, "thresholds": {class: decision}``
(present when the classifier's probability is a source: loadable by ``mlrpl eval --thresholds``),
``"sources": {source: {"score", "classes": {class: {"positive", "negative", "decision",
"known_positives", "known_negatives"}}, "start": {... at E0 ...}}}}``; null where a class has no
threshold (too few known positives, or distributions that do not separate).
"""
from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path

import numpy as np

from mlrpl.errors import MlrplError
from mlrpl.utils.optional import require

SCORE_NAMES = {"cls": "classifier probability σ(s)", "intra": "intra-image co-occurrence q^intra",
               "inter": "cross-image similarity q^inter"}


def has_distributions(ckpt: dict) -> bool:
    """Whether a loaded checkpoint's method keeps SATL score distributions."""
    return any(k.startswith("method.distributions.") for k in ckpt["model"])


def load_distributions(checkpoint, ckpt: dict | None = None):
    """(model, checkpoint dict) for a checkpoint whose method keeps SATL distributions
    (``ckpt``: the checkpoint already loaded from that path)."""
    from mlrpl.engine.checkpoint import load_checkpoint
    from mlrpl.engine.experiment import open_checkpoint
    path = Path(checkpoint)
    if ckpt is None:
        if not path.is_file():
            raise MlrplError(f"{path}: checkpoint not found")
        ckpt = load_checkpoint(path)
    if not has_distributions(ckpt):
        raise MlrplError(f"{path}: this model keeps no SATL score distributions (method "
                         f"'satl', or 'sst'/'hst' with method.thresholds=satl)")
    model, ckpt, _ = open_checkpoint(path, "cpu", ckpt=ckpt)
    return model, ckpt


def threshold_table(model, ckpt, path="") -> dict:
    d = model.method.distributions
    classes = list(ckpt["classes"])
    sources = {}
    for s in d.sources:
        entry = {"score": SCORE_NAMES.get(s, s), "classes": d.table(classes, s)}
        if int(d.start_epoch) >= 0:
            entry["start"] = {"epoch": int(d.start_epoch) + 1,
                              "classes": d.table(classes, s, start=True)}
        sources[s] = entry
    from mlrpl.engine.evaluate import learned_thresholds
    from mlrpl.methods.components.pseudo_labels import SATLThresholdConfig
    out = {"method": model.method.name, "checkpoint": str(path), "epoch": int(ckpt.get("epoch", 0)),
           "config": {f.name: getattr(d.cfg, f.name) for f in fields(SATLThresholdConfig)}}
    thr = learned_thresholds(model.method)
    if thr is not None:
        out["thresholds"] = {c: float(t) for c, t in zip(classes, thr)}
    out["sources"] = sources
    return out


def default_classes(known_pos: np.ndarray, class_names, min_positives: int, n: int = 4):
    """A few classes to draw, from the most to the least known positives among those that can
    make pseudo-labels (all classes when none can)."""
    order = [int(i) for i in np.argsort(-known_pos, kind="stable")]
    able = [i for i in order if known_pos[i] >= min_positives]
    if len(able) <= n:  # pad with the most frequent of the others (drawn without thresholds)
        return [class_names[i] for i in (able + [i for i in order if i not in able])[:n]]
    picks = np.linspace(0, len(able) - 1, n).round().astype(int)
    return [class_names[able[i]] for i in dict.fromkeys(picks.tolist())]


def plot_score_distributions(model, ckpt, png, classes=None, source=None, title=""):
    """For each chosen class, the normalised histograms of its known positives (red) and known
    negatives (blue) with τ⁺ (red dashed), τ⁻ (blue dashed) and the decision threshold (black):
    top row at the start of pseudo-labelling (epoch E0), bottom row at the checkpoint's epoch."""
    from mlrpl.methods.components.pseudo_labels import SOURCE_RANGES
    from mlrpl.experiments.reports.plots import new_figure, save_figure
    d = model.method.distributions
    names = list(ckpt["classes"])
    source = source or d.sources[0]
    if source not in d.sources:
        raise MlrplError(f"score source {source!r} not in this model (it has {d.sources})")
    s = d.index(source)
    known_pos = d.known_pos.cpu().numpy()
    if classes is None:
        classes = default_classes(known_pos, names, int(d.cfg.min_positives))
    missing = [c for c in classes if c not in names]
    if missing:
        raise MlrplError(f"unknown classes {missing[:5]} (the model's classes: {names[:8]}...)")
    rows = [("start", "start_")] if int(d.start_epoch) >= 0 else []
    rows.append(("end", ""))
    lo, hi = SOURCE_RANGES[source]
    k = d.pos.shape[-1]
    edges = np.linspace(lo, hi, k + 1)
    width = edges[1] - edges[0]
    fig, axes = new_figure(max(3.3 * len(classes), 8.0), 2.8 * len(rows) + 0.4,
                           ncols=len(classes), nrows=len(rows))
    epoch_end = int(ckpt.get("epoch", 0))      # epochs completed
    for r, (when, pre) in enumerate(rows):
        pos_h = getattr(d, pre + "pos")[s].cpu().numpy()
        neg_h = getattr(d, pre + "neg")[s].cpu().numpy()
        taus = {t: getattr(d, pre + t)[s].cpu().numpy() for t in ("tau_pos", "tau_neg", "decision")}
        label = (f"start of pseudo-labelling (epoch {int(d.start_epoch) + 1})" if when == "start"
                 else f"epoch {epoch_end}")
        for j, cname in enumerate(classes):
            c = names.index(cname)
            ax = axes[r, j]
            for h, color, name in ((neg_h[c], "tab:blue", "known negatives"),
                                   (pos_h[c], "tab:red", "known positives")):
                total = h.sum()
                dens = h / (total * width) if total > 0 else h
                ax.bar(edges[:-1], dens, width=width, align="edge", color=color, alpha=0.45,
                       label=name)
            for key, color, ls, name in (("tau_pos", "tab:red", "--", "τ⁺ (pseudo-positive)"),
                                         ("tau_neg", "tab:blue", "--", "τ⁻ (pseudo-negative)"),
                                         ("decision", "black", ":", "decision (max F1)")):
                v = float(taus[key][c])
                if math.isfinite(v):
                    ax.axvline(v, color=color, ls=ls, lw=1.5, label=name)
            ax.set_xlim(lo, hi)
            ax.set_title(f"{cname} ({int(known_pos[c])} known +)\n{label}", fontsize=8)
            ax.set_xlabel(SCORE_NAMES.get(source, source), fontsize=8)
            if j == 0:
                ax.set_ylabel("density", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=6, loc="upper center")
    fig.suptitle((title or f"{model.method.name}: score distributions of known labels and "
                  f"per-class thresholds") + f" ({source}; a class below "
                 f"{int(d.cfg.min_positives)} known positives gets none)", fontsize=10)
    return save_figure(fig, png)


def _refuse_existing(path, force: bool) -> None:
    """Checked before any work: the folder exists and is writable, no file is replaced unasked."""
    if path is not None:
        from mlrpl.utils.files import check_output
        check_output(path, force)


def export_thresholds(checkpoint, out=None, plot=None, classes=None, source=None,
                      force: bool = False) -> str:
    """Write the per-class JSON (``out``) and the figure (``plot``); returns the JSON text."""
    _refuse_existing(out, force)
    _refuse_existing(plot, force)
    if plot is not None:  # before any work
        require("matplotlib", "plot", "--plot", "leave out --plot")
    model, ckpt = load_distributions(checkpoint)
    text = json.dumps(threshold_table(model, ckpt, checkpoint), indent=1)
    if out is not None:
        from mlrpl.utils.files import atomic_write_text
        atomic_write_text(out, text + "\n", keep_old=force)
    if plot is not None:
        plot_score_distributions(model, ckpt, plot, classes, source)
    return text
