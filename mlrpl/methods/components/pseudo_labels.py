"""How good a method's pseudo-labels are (docs/methods/README.md#pseudo-label-quality): counted
against the hidden full labels, which are used for nothing else."""
from __future__ import annotations

import torch

from mlrpl.utils import dist


class PseudoLabelQuality:
    """Counts, per source ("intra", "inter", ...) and class, of the unknown entries a method
    pseudo-labels positive and how many of them are truly positive, against the hidden full
    labels (``batch["full"]``, used for nothing else).

    Statistics (``compute``), for source s, overall and per class:

    - ``pl_s_n``: unknown entries labelled;
    - ``pl_s_precision``: % of the labelled entries whose hidden label is positive (entries whose
      hidden label is itself unknown are left out);
    - ``pl_s_recall``: % of the hidden positives seen (unknown in ``target``, positive in
      ``full``) that were labelled.

    Undefined ratios are NaN. The counts live in plain tensors, not registered buffers: DDP
    broadcasts rank 0's buffers at every forward, which would overwrite the other ranks' counts;
    they are all-reduced at ``compute`` and are zero at every epoch boundary (so a checkpoint
    never needs them).
    """

    FIELDS = ("n", "tp", "fp", "hidden_pos")

    def __init__(self, sources, class_names, per_class: bool = True):
        self.sources = list(sources)
        self.class_names = list(class_names)
        self.per_class = per_class
        self.counts = torch.zeros(len(self.sources), len(self.FIELDS), len(self.class_names),
                                  dtype=torch.long)
        self.active = torch.zeros(len(self.sources), dtype=torch.long)

    def reset(self):
        self.counts = torch.zeros_like(self.counts)
        self.active = torch.zeros_like(self.active)

    @torch.no_grad()
    def update(self, source: str, pseudo: torch.Tensor, target: torch.Tensor, full) -> None:
        """pseudo (B, C) bool: entries labelled positive; only unknown entries of ``target``
        count. Without ``full`` nothing can be measured and nothing is counted."""
        if full is None:
            return
        s = self.sources.index(source)
        unknown = target == 0
        lab = pseudo.bool() & unknown
        truth_pos, truth_neg = full > 0, full < 0
        rows = torch.stack([lab.sum(0), (lab & truth_pos).sum(0), (lab & truth_neg).sum(0),
                            (unknown & truth_pos).sum(0)]).long()
        if self.counts.device != rows.device:
            self.counts = self.counts.to(rows.device)
            self.active = self.active.to(rows.device)
        self.counts[s] += rows
        self.active[s] = 1

    def update_pos_neg(self, pos_source: str, neg_source: str, positive: torch.Tensor,
                       negative: torch.Tensor, target: torch.Tensor, full) -> None:
        """Count positive and negative pseudo-labels at once: a negative pseudo-label is right
        when the hidden label is negative."""
        self.update(pos_source, positive, target, full)
        self.update(neg_source, negative, target, None if full is None else -full)

    def compute(self, device=None) -> dict[str, float]:
        counts, active = self.counts, self.active
        if device is not None:
            counts, active = counts.to(device), active.to(device)
        packed = dist.all_reduce_sum(torch.cat([counts.flatten(), active]).clone())
        counts = packed[:counts.numel()].view_as(self.counts).cpu().double()
        active = packed[counts.numel():].cpu()
        out: dict[str, float] = {}
        for s, name in enumerate(self.sources):
            n, tp, fp, hp = counts[s]
            on = bool(active[s] > 0)
            out.update(self._ratios(f"pl_{name}", n.sum(), tp.sum(), fp.sum(), hp.sum(), on))
            if self.per_class:
                for c, cls in enumerate(self.class_names):
                    out.update(self._ratios(f"pl_{name}", n[c], tp[c], fp[c], hp[c], on, f"/{cls}"))
        return out

    @staticmethod
    def _ratios(prefix, n, tp, fp, hp, on, suffix=""):
        nan = float("nan")
        judged = float(tp + fp)
        return {f"{prefix}_n{suffix}": int(n),
                f"{prefix}_precision{suffix}": 100.0 * float(tp) / judged if on and judged > 0 else nan,
                f"{prefix}_recall{suffix}": 100.0 * float(tp) / float(hp) if on and hp > 0 else nan}
