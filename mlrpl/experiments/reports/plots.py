"""Plots (PNG) of a sweep or a run, from what is on disk. Each figure carries its own title, axis
labels with units and legend, so that it reads without the text around it.

Drawn on :class:`matplotlib.figure.Figure` with the Agg canvas: no pyplot state, no display.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mlrpl.engine.rundir import read_summary
from mlrpl.utils.optional import require
from mlrpl.experiments.reports.tables import BEST_LABEL, is_finite, ordered, pl_sources, values_by

DPI = 120


def proportion_lines(ax, cells: dict, methods, colors) -> None:
    """One line per method (mean over seeds) against the known proportion, with a min-max band
    over seeds; `cells` maps (method, p) to {seed: value}."""
    for m in methods:
        ps = sorted(p for (mm, p) in cells if mm == m)
        if not ps:
            continue
        vals = [list(cells[(m, p)].values()) for p in ps]
        xs = [100 * p for p in ps]
        ax.plot(xs, [np.mean(v) for v in vals], marker="o", ms=4, color=colors[m], label=m)
        if any(len(v) > 1 for v in vals):
            ax.fill_between(xs, [min(v) for v in vals], [max(v) for v in vals],
                            color=colors[m], alpha=0.15, linewidth=0)


def new_figure(w, h, ncols=1, nrows=1):
    require("matplotlib", "plot", "plots", "pass --no-plots")
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_figure(fig, png) -> Path:
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(png, dpi=DPI)
    return png


def _colors(names):
    require("matplotlib", "plot", "plots", "pass --no-plots")
    from matplotlib import colormaps
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def _epoch_axis(ax):
    require("matplotlib", "plot", "plots", "pass --no-plots")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def _epoch_panel(ax, ylabel: str, title: str) -> None:
    """An epoch x axis, `ylabel`, `title`, a grid, and a legend when a line is drawn."""
    _epoch_axis(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)


def _methods(rows):
    return ordered(r["method"] for r in rows)


# ---- sweep plots --------------------------------------------------------------------------------
def _proportion_panels(rows, png, panels, suptitle: str, wide_legend: bool) -> Path:
    """Panels side by side, one per (summary key, y label, title) of `panels`, each with
    :func:`proportion_lines` of every method; `wide_legend`: two legend columns past 8 methods."""
    methods = _methods(rows)
    colors = _colors(methods)
    fig, axes = new_figure(12, 4.8, ncols=len(panels))
    for ax, (key, ylabel, panel_title) in zip(axes[0], panels):
        cells = values_by(rows, key)
        proportion_lines(ax, cells, methods, colors)
        ax.set_xlabel("known labels (% of the training labels)")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title, fontsize=10)
        ax.grid(alpha=0.3)
        if cells:
            ax.legend(fontsize=8, loc="lower right",
                      ncol=2 if wide_legend and len(methods) > 8 else 1)
    fig.suptitle(suptitle, fontsize=10)
    return save_figure(fig, png)


def plot_metric_vs_proportion(rows, png, metric: str = "mAP", title: str = "") -> Path:
    """`metric` against the known-label proportion: one line per method (mean over seeds) with
    a min–max band over seeds; last epoch (left) and best epoch on the evaluation split (right)."""
    seeds = ordered(r["seed"] for r in rows)
    band = "line: mean over seeds; band: min–max over seeds" if len(seeds) > 1 else "one seed"
    ylabel = f"{metric} on the evaluation split (%)"
    return _proportion_panels(
        rows, png, [(metric, ylabel, f"{metric}, last epoch"),
                    ("best_" + metric, ylabel, f"{metric}, {BEST_LABEL}")],
        f"{metric} vs known-label proportion{' — ' + title if title else ''} "
        f"({len(seeds)} seed(s); {band})", wide_legend=True)


def plot_f1_vs_proportion(rows, png, title: str) -> Path:
    """CF1 and OF1 (last epoch) against the known-label proportion, side by side."""
    n = len(ordered(r["seed"] for r in rows))
    return _proportion_panels(
        rows, png, [(key, f"{key} at probability ≥ threshold (%)", f"{key}, last epoch")
                    for key in ("CF1", "OF1")],
        f"CF1 and OF1 vs known-label proportion — {title} ({n} seed(s); band: min–max over "
        f"seeds)", wide_legend=False)


def plot_sweep_curves(sweep_dir, rows, png, metric: str = "mAP", title: str = "") -> Path:
    """`metric` per epoch, one panel per known proportion, one line per method (mean over the
    seeds of the runs that are done), from each run's ``summary.csv``."""
    sweep_dir = Path(sweep_dir)
    methods = _methods(rows)
    colors = _colors(methods)
    props = sorted(ordered(r["p"] for r in rows if r["p"] is not None))
    ncols = min(3, max(len(props), 1))
    nrows = max(1, math.ceil(len(props) / ncols))
    fig, axes = new_figure(4.3 * ncols, 3.4 * nrows, ncols=ncols, nrows=nrows)
    for i, p in enumerate(props):
        ax = axes[i // ncols, i % ncols]
        for m in methods:
            curves = []
            for r in rows:
                if r["method"] == m and r["p"] == p and r["status"] == "done":
                    s = read_summary(sweep_dir / r["run_dir"])
                    curves.append([x.get(metric, math.nan) for x in s])
            if not curves:
                continue
            n = min(len(c) for c in curves)
            mean = np.nanmean(np.array([c[:n] for c in curves], dtype=float), axis=0)
            ax.plot(np.arange(1, n + 1), mean, color=colors[m], label=m, lw=1.4)
        ax.set_title(f"{100 * p:g}% known labels", fontsize=10)
        _epoch_axis(ax)
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    for j in range(len(props), nrows * ncols):
        axes[j // ncols, j % ncols].set_visible(False)
    fig.suptitle(f"Evaluation {metric} per training epoch (mean over seeds)"
                 f"{' — ' + title if title else ''}", fontsize=10)
    return save_figure(fig, png)


# ---- run plots ----------------------------------------------------------------------------------
def plot_training_curves(summary: list[dict], png, title: str = "") -> Path:
    """Loss terms (left) and evaluation mAP / CF1 / OF1 (right) per epoch, best epoch marked."""
    fig, axes = new_figure(11, 4.2, ncols=2)
    ax1, ax2 = axes[0, 0], axes[0, 1]
    epochs = [int(r.get("epoch", i + 1)) for i, r in enumerate(summary)]  # from 1 (read_summary)
    losses = ordered(k for r in summary for k in r if k.startswith("loss_"))
    if len(losses) == 2 and "loss_total" in losses:  # the total of one term is that term
        losses.remove("loss_total")
    for k in losses:
        ys = [r.get(k, math.nan) for r in summary]
        ax1.plot(epochs, ys, marker="o", ms=3, lw=2.2 if k == "loss_total" else 1.2,
                 label=k[len("loss_"):])
    _epoch_panel(ax1, "training loss (mean over the epoch's steps)", "Training loss terms")
    for k in ("mAP", "CF1", "OF1"):
        if any(k in r for r in summary):
            ax2.plot(epochs, [r.get(k, math.nan) for r in summary], marker="o", ms=3, label=k)
    maps = [r.get("mAP", -math.inf) for r in summary]
    if summary and any(is_finite(m) for m in maps):
        best = int(np.nanargmax(np.array(maps, dtype=float)))
        ax2.axvline(epochs[best], color="grey", ls="--", lw=1,
                    label=f"best mAP (epoch {epochs[best]})")
    _epoch_panel(ax2, "evaluation split (%)", "Evaluation metrics per epoch")
    fig.suptitle(f"Training curves{' — ' + title if title else ''}", fontsize=10)
    return save_figure(fig, png)


def plot_per_class_ap(per_class: list[dict], png, title: str = "") -> Path:
    """Per-class AP bars, sorted, each annotated with its known positives in the run's training
    mask (and its positives in the evaluation split)."""
    rows = sorted(per_class, key=lambda r: (r["ap_voc"] if is_finite(r["ap_voc"]) else -1.0))
    n = len(rows)
    fig, axes = new_figure(8.5, max(3.0, 0.24 * n + 1.4))
    ax = axes[0, 0]
    ys = np.arange(n)
    aps = [r["ap_voc"] if is_finite(r["ap_voc"]) else 0.0 for r in rows]
    known = [r.get("train_known_pos") for r in rows]
    colors = ["#4c72b0" if is_finite(r["ap_voc"]) else "#cccccc" for r in rows]
    ax.barh(ys, aps, color=colors, height=0.75)
    for y, ap, r, k in zip(ys, aps, rows, known):
        note = (f"{ap:.1f}" if is_finite(r["ap_voc"]) else "no eval positive")
        if k is not None:
            note += f"  ({int(k)} known +)"
        ax.text(min(ap, 100) + 1, y, note, va="center", fontsize=7)
    ax.set_yticks(ys, [str(r["class"]) for r in rows], fontsize=7 if n > 30 else 8)
    ax.set_ylabel("class (sorted by AP)")
    ax.set_xlim(0, 125)
    ax.set_xticks(range(0, 101, 20))
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel("AP on the evaluation split (%)   [label: AP (known positives in the training "
                  "mask)]" if any(k is not None for k in known) else "AP on the evaluation split (%)")
    ax.grid(axis="x", alpha=0.3)
    valid = [r["ap_voc"] for r in rows if is_finite(r["ap_voc"])]
    m = f"mAP {np.mean(valid):.2f}" if valid else "no class with an evaluation positive"
    ax.set_title(f"Per-class AP, sorted ({m}){' — ' + title if title else ''}", fontsize=10)
    return save_figure(fig, png)


def _as_percent(vals):
    finite = [v for v in vals if is_finite(v)]
    return [v * 100 if is_finite(v) else math.nan for v in vals] \
        if finite and max(finite) <= 1.0 else vals


def plot_pseudo_labels(summary: list[dict], png, title: str = "") -> Path | None:
    """Pseudo-label precision and recall (left) and count (right) per epoch, one colour per
    source (``pl_<source>_*`` columns); None when the run made no pseudo-labels."""
    sources = ordered(s for r in summary for s in pl_sources(r))
    if not sources:
        return None
    colors = _colors(sources)
    fig, axes = new_figure(11, 4.2, ncols=2)
    ax1, ax2 = axes[0, 0], axes[0, 1]
    epochs = [int(r.get("epoch", i + 1)) for i, r in enumerate(summary)]  # from 1 (read_summary)
    for s in sources:
        for part, ls in (("precision", "-"), ("recall", "--")):
            key = f"pl_{s}_{part}"
            if any(key in r for r in summary):
                ax1.plot(epochs, _as_percent([r.get(key, math.nan) for r in summary]),
                         ls=ls, marker="o", ms=3, color=colors[s], label=f"{s} {part}")
        key = f"pl_{s}_n"
        if any(key in r for r in summary):
            ax2.plot(epochs, [r.get(key, math.nan) for r in summary], marker="o", ms=3,
                     color=colors[s], label=s)
    _epoch_axis(ax1)
    ax1.set_ylabel("precision / recall (%)")
    ax1.set_title("Pseudo-label precision (solid) and recall (dashed)", fontsize=10)
    ax1.set_ylim(-2, 102)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    _epoch_panel(ax2, "pseudo-labels in the epoch (count)", "Number of pseudo-labels")
    fig.suptitle(f"Pseudo-labels per epoch{' — ' + title if title else ''}", fontsize=10)
    return save_figure(fig, png)
