"""DSRB's location-aware prototypes out of a checkpoint: how the known positives of each class
fall into the four quadrants of the attention-weighted map's peak (the ``occupancy`` buffer of
the last prototype recomputation), one stacked bar per class.

    from mlrpl.experiments.reports.blending import plot_quadrant_occupancy
    plot_quadrant_occupancy("runs/x/last.pt", "occupancy.png")

A quadrant with no known positive is filled with the class's mean prototype
(docs/methods/dsrb.md#equations); the figure marks those classes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mlrpl.errors import MlrplError
from mlrpl.utils.optional import require

QUADRANT_NAMES = ("top-left", "top-right", "bottom-left", "bottom-right")
KEY = "method.prototypes.occupancy"


def quadrant_occupancy(ckpt: dict) -> tuple[np.ndarray, list[str], int]:
    """(occupancy (C, 4) int, class names, epoch of the recomputation) from a loaded checkpoint."""
    state = ckpt["model"]
    if KEY not in state:
        raise MlrplError("this model keeps no location-aware prototypes (method 'dsrb')")
    occ = state[KEY].cpu().numpy().astype(np.int64)
    names = list(ckpt.get("classes") or [f"class {i}" for i in range(len(occ))])
    epoch = int(state.get("method.prototypes.epoch", -1))
    return occ, names, epoch


def plot_quadrant_occupancy(checkpoint, png, ckpt: dict | None = None, title: str = "") -> Path:
    """Write the per-class quadrant occupancy of a DSRB checkpoint as a PNG; returns its path.
    ``ckpt``: the checkpoint already loaded (then ``checkpoint`` only names it)."""
    require("matplotlib", "plot", "the quadrant-occupancy plot")
    from matplotlib.figure import Figure
    if ckpt is None:
        from mlrpl.engine.checkpoint import load_checkpoint
        ckpt = load_checkpoint(checkpoint)
    occ, names, epoch = quadrant_occupancy(ckpt)
    if epoch < 0:
        raise MlrplError(f"{checkpoint}: the prototypes were never computed (training stopped "
                         f"before the blending epoch)")
    c = len(names)
    fig = Figure(figsize=(max(6.0, 0.28 * c + 2), 4.2))
    ax = fig.subplots()
    x = np.arange(c)
    bottom = np.zeros(c)
    colors = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")
    for q in range(4):
        ax.bar(x, occ[:, q], bottom=bottom, color=colors[q], label=QUADRANT_NAMES[q], width=0.8)
        bottom += occ[:, q]
    for i in np.nonzero((occ == 0).any(1) & (occ.sum(1) > 0))[0]:
        ax.text(i, bottom[i], "*", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_xlabel("class")
    ax.set_ylabel("known positives (count)")
    ax.set_title(title or f"DSRB prototype quadrant occupancy (epoch {epoch + 1}; "
                          f"* = an empty quadrant, filled with the class mean)", fontsize=9)
    ax.legend(title="peak quadrant", fontsize=7, title_fontsize=7)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    return png
