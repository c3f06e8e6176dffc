"""DSRB's location-aware prototypes (docs/methods/dsrb.md#equations): four per class, one per
image quadrant.

The attention-weighted map of a class is M_c = (a_{c,h} f_h)_h (HW x D). For every known positive
(image, class) of the training set (the model in evaluation mode, all processes' data, in dataset
order) the quadrant of the spatial peak of Σ_d M_{c,h,d} is q = 2·[row >= ⌊H/2⌋] + [col >= ⌊W/2⌋];
the first ``cap`` (100) maps per (class, quadrant) are averaged into P_{c,q}; a quadrant that got
none takes the mean of every map kept for the class.

Stored in the **pooled form** (docs/methods/dsrb.md D1): spatial summation is linear and
Σ_h M_{c,h} = F_c (the attention sums to 1), so Σ_h P_{c,q,h} is the mean of the kept semantic
features F, and blending a map with a prototype map then summing over space equals blending F
with the pooled prototype. :func:`pprb_map_form` is the literal map form the tests compare against.
"""
from __future__ import annotations

import dataclasses

import torch

from mlrpl.utils import dist, faults
from mlrpl.methods.components.prototypes import Prototypes, collect_positive_features

QUADRANTS = 4
_KEY = "_quadrant"


def peak_quadrant(attention: torch.Tensor, positions: torch.Tensor, spatial) -> torch.Tensor:
    """Quadrant (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) of the peak of
    Σ_d a_{c,h} f_{h,d} over positions h. attention (B, C, HW), positions (B, HW, D),
    spatial (H, W) -> (B, C) long."""
    h, w = int(spatial[0]), int(spatial[1])
    energy = attention.float() * positions.float().sum(-1)[:, None, :]
    peak = energy.argmax(-1)
    row, col = peak // w, peak % w
    return 2 * (row >= h // 2).long() + (col >= w // 2).long()


def quadrant_means(features: torch.Tensor, classes: torch.Tensor, quadrants: torch.Tensor,
                   num_classes: int, cap: int = 100, shrink: bool = False):
    """Pooled quadrant prototypes from rows in dataset order.

    features (N, D), classes (N,), quadrants (N,) -> centres (C, 4, D), valid (C, 4) bool,
    occupancy (C, 4) long (known positives per quadrant, before the cap). ``shrink``: the
    released per-quadrant mean that also counts its zero initial row (n / (n + 1)).

    The rows are grouped by (class, quadrant) once (a stable sort keeps the dataset order inside
    a group), so the work is O(N log N + C D), not a pass over all N rows per class."""
    dim = features.shape[1] if features.ndim == 2 else 0
    features = features.float()
    classes = torch.as_tensor(classes).long()
    group = classes * QUADRANTS + torch.as_tensor(quadrants).long()
    occupancy = torch.bincount(group, minlength=num_classes * QUADRANTS)
    # the first ``cap`` rows of every group, grouped: group by group, dataset order inside
    order = torch.sort(group, stable=True).indices
    starts = occupancy.cumsum(0) - occupancy
    kept = order[torch.arange(len(order)) - starts.repeat_interleave(occupancy) < cap]
    counts = occupancy.clamp(max=cap).view(num_classes, QUADRANTS).tolist()
    occupancy = occupancy.view(num_classes, QUADRANTS).clone()
    means, slots, fallbacks, empty = [], [], [], []
    at = 0
    for c in torch.unique(classes).tolist():
        fc = features[kept[at:at + sum(counts[c])]]        # the class's kept maps, by quadrant
        at += len(fc)
        i = 0
        for q in range(QUADRANTS):
            n = counts[c][q]
            if n:
                fq = fc[i:i + n]
                means.append(fq.sum(0) / (n + 1) if shrink else fq.mean(0))
                slots.append(c * QUADRANTS + q)
                i += n
        missing = [c * QUADRANTS + q for q in range(QUADRANTS) if counts[c][q] == 0]
        if missing:                                      # the mean of every map kept for the class
            empty += missing
            fallbacks += [fc.mean(0)] * len(missing)
    centres = torch.zeros(num_classes * QUADRANTS, dim)
    if means:
        centres[torch.tensor(slots)] = torch.stack(means)
    if fallbacks:
        centres[torch.tensor(empty)] = torch.stack(fallbacks)
    valid = (occupancy.sum(1) > 0)[:, None].expand(-1, QUADRANTS).clone()
    return centres.view(num_classes, QUADRANTS, dim), valid, occupancy


def pprb_map_form(maps: torch.Tensor, classes: torch.Tensor, num_classes: int, chosen_maps,
                  chosen_classes, other_quadrants, beta: float, cap: int = 100):
    """The literal PPRB of the released code, on maps (for tests; memory B·HW·C·D).

    maps (N, H, W, D) the attention-weighted maps of the known positives in dataset order,
    classes (N,); chosen_maps (B, H, W, D) the maps M_{n,c*} to blend, chosen_classes (B,),
    other_quadrants (B,) q' -> (B, D): Σ_hw [β M_{n,c*} + (1-β) P_{c*,q'}]."""
    n, h, w, d = maps.shape
    energy = maps.sum(-1).flatten(1)
    peak = energy.argmax(-1)
    quad = 2 * (peak // w >= h // 2).long() + (peak % w >= w // 2).long()
    protos = torch.zeros(num_classes, QUADRANTS, h, w, d)
    for c in range(num_classes):
        kept = [maps[(classes == c) & (quad == q)][:cap] for q in range(QUADRANTS)]
        everything = torch.cat(kept)
        for q in range(QUADRANTS):
            if len(kept[q]):
                protos[c, q] = kept[q].mean(0)
            elif len(everything):
                protos[c, q] = everything.mean(0)
    blend = beta * chosen_maps + (1 - beta) * protos[chosen_classes, other_quadrants]
    return blend.sum((1, 2))


class QuadrantPrototypes(Prototypes):
    """Buffers (saved with the model): ``centres`` (C, 4, D) pooled prototypes, ``valid`` (C, 4)
    (a class with a known positive has all four, empty quadrants by the fallback),
    ``occupancy`` (C, 4) known positives per quadrant at the last recomputation, ``epoch``."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__(num_classes, QUADRANTS, dim)
        self.register_buffer("occupancy", torch.zeros(num_classes, QUADRANTS, dtype=torch.long))

    @torch.no_grad()
    def recompute(self, ctx, cap: int = 100, shrink: bool = False) -> int:
        """One pass over the training set (every process its shard, gathered in dataset order),
        then the quadrant means on the main process, broadcast. Returns the positives seen."""
        def with_quadrant(desc):
            for batch, out in ctx.eval_batches(desc):
                out = dict(out)
                out[_KEY] = peak_quadrant(out["attention"], out["positions"], out["spatial"])
                yield batch, out
        # the quadrant put beside each known positive's feature (taken at the positives only)
        feats, classes = collect_positive_features(
            dataclasses.replace(ctx, eval_batches=with_quadrant), ("semantic", _KEY))
        faults.point("prototypes")
        feats = feats.reshape(-1, self.centres.shape[-1] + 1)
        quadrants = feats[:, -1].round().long()
        if dist.is_main():
            centres, valid, occupancy = quadrant_means(feats[:, :-1], classes, quadrants,
                                                       self.valid.shape[0], cap, shrink)
            centres = centres.to(self.centres.device)
            valid, occupancy = valid.to(self.valid.device), occupancy.to(self.occupancy.device)
        else:
            centres, valid = torch.zeros_like(self.centres), torch.zeros_like(self.valid)
            occupancy = torch.zeros_like(self.occupancy)
        if dist.is_dist():
            for t in (centres, valid, occupancy):
                torch.distributed.broadcast(t, src=0)
        self.centres.copy_(centres)
        self.valid.copy_(valid)
        self.occupancy.copy_(occupancy)
        self.epoch.fill_(int(ctx.epoch))
        return len(classes)
