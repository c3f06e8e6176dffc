"""Pseudo-labels: how good they are, and the score distributions some methods make them from.

* :class:`PseudoLabelQuality` (docs/methods/README.md#pseudo-label-quality): counted against the
  hidden full labels, which are used for nothing else.
* :class:`ScoreDistributions` (docs/methods/satl.md#equations): for each score source (the
  classifier probability ``cls``, SST/HST's intra-image ``intra`` and cross-image ``inter``
  scores) and each class, the histograms of the detached scores of known positives and of known
  negatives. They are exponentially decayed counts: every training step multiplies them by
  ``momentum`` and adds the step's counts, all-reduced over processes, so every process holds
  the same histograms. The per-class thresholds are recomputed from them after every update.
  Everything lives in buffers: saved in checkpoints, exact on resume. Used by ``satl``, by
  ``sst``/``hst`` with ``thresholds: satl`` and by the ``dist_pseudo`` plug-in.
* :func:`distribution_thresholds`: from two histograms and the class prior, the positive
  threshold at a target precision, the negative threshold at a target negative predictive value,
  and a decision threshold (the estimated-F1 optimum) used at inference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mlrpl.errors import ConfigError
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


# ---- distributions --------------------------------------------------------------------------------
# The range of each score source: probabilities and co-occurrence means lie in [0, 1], cosine
# similarities in [-1, 1].
SOURCE_RANGES = {"cls": (0.0, 1.0), "intra": (0.0, 1.0), "inter": (-1.0, 1.0)}


@dataclass
class SATLThresholdConfig:
    """Keys under ``method.satl``: how the distributions are kept and the thresholds derived."""
    bins: int = 50                    # histogram bins over the source's range
    momentum: float = 0.99            # per-step decay of the histogram counts
    target_precision: float = 0.95    # positive threshold: estimated precision reaches this
    target_npv: float = 0.95          # negative threshold: estimated NPV reaches this
    min_positives: int = 5            # a class with fewer known positives makes no pseudo-labels
    # Conservative bounds (docs/decisions.md): τ⁺ no lower than this quantile of the known
    # positives' scores, τ⁻ no higher than this quantile of the known negatives' (0 / 1: off).
    positive_quantile: float = 0.1
    negative_quantile: float = 0.9


def check_threshold_config(cfg, where: str = "method.satl") -> None:
    """Refuse values the threshold machinery cannot use, naming the key."""
    if int(cfg.bins) < 2:
        raise ConfigError(f"bad value for '{where}.bins': {cfg.bins}; expected at least 2")
    if not 0.0 <= float(cfg.momentum) < 1.0:
        raise ConfigError(f"bad value for '{where}.momentum': {cfg.momentum}; expected a "
                          f"number in [0, 1)")
    for key in ("target_precision", "target_npv"):
        v = float(getattr(cfg, key))
        if not 0.0 < v <= 1.0:
            raise ConfigError(f"bad value for '{where}.{key}': {v}; expected a number in (0, 1]")
    for key in ("positive_quantile", "negative_quantile"):
        v = float(getattr(cfg, key))
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"bad value for '{where}.{key}': {v}; expected a number in [0, 1]")
    if int(cfg.min_positives) < 1:
        raise ConfigError(f"bad value for '{where}.min_positives': {cfg.min_positives}; "
                          f"expected a positive integer")


def _last_true(mask: torch.Tensor) -> torch.Tensor:
    """(C, K) bool -> (C,) index of the last True per row, -1 where none."""
    k = mask.shape[1]
    idx = torch.arange(k, device=mask.device).expand_as(mask)
    return torch.where(mask, idx, torch.full_like(idx, -1)).max(1).values


def _first_true(mask: torch.Tensor) -> torch.Tensor:
    """(C, K) bool -> (C,) index of the first True per row, K where none."""
    k = mask.shape[1]
    idx = torch.arange(k, device=mask.device).expand_as(mask)
    return torch.where(mask, idx, torch.full_like(idx, k)).min(1).values


def distribution_thresholds(pos_hist: torch.Tensor, neg_hist: torch.Tensor,
                            prior_pos: torch.Tensor, target_precision: float = 0.95,
                            target_npv: float = 0.95, lo: float = 0.0, hi: float = 1.0,
                            positive_quantile: float = 0.0, negative_quantile: float = 1.0):
    """Per-class thresholds from the score histograms of known positives and known negatives.

    Parameters
    ----------
    pos_hist, neg_hist : (C, K) non-negative counts over K equal bins of [lo, hi]
    prior_pos : (C,) π⁺, the share of positives among the class's labels (π⁻ = 1 − π⁺)

    With S±(t) the share of positives / negatives scoring at least t (t a bin edge),
    precision(t) = π⁺S⁺(t) / (π⁺S⁺(t) + π⁻S⁻(t)) and, below t,
    NPV(t) = π⁻(1 − S⁻(t)) / (π⁻(1 − S⁻(t)) + π⁺(1 − S⁺(t))).

    Returns (all (C,) float64)
    -------
    tau_pos : the lowest edge from which the estimated precision stays at or above the target at
        every higher edge (where defined) and some positive still scores above; +inf where none.
        An unknown entry scoring >= tau_pos is a pseudo-positive.
    tau_neg : the highest edge up to which the estimated NPV stays at or above the target, with
        some negative below; -inf where none; never above tau_pos. Scores < tau_neg are
        pseudo-negatives.
        With ``positive_quantile`` q⁺ > 0, tau_pos is raised to at least the highest edge with at
        most a share q⁺ of the positives below it; with ``negative_quantile`` q⁻ < 1, tau_neg is
        lowered to at most the lowest edge with at least a share q⁻ of the negatives below it.
        When the distributions are far apart (a model that fits its known labels), precision and
        NPV reach the target anywhere in the empty gap between them; the bounds keep the
        thresholds next to the scores known labels actually take instead of at the far ends of
        the gap.
    decision : the edge that maximises the estimated F1 = 2 TP / (2 TP + FP + FN) (the lowest
        such edge); NaN where a histogram is empty.
    """
    pos = pos_hist.double().clamp(min=0)
    neg = neg_hist.double().clamp(min=0)
    c, k = pos.shape
    edges = torch.linspace(lo, hi, k + 1, dtype=torch.float64, device=pos.device)
    pos_mass, neg_mass = pos.sum(1, keepdim=True), neg.sum(1, keepdim=True)
    usable = (pos_mass[:, 0] > 0) & (neg_mass[:, 0] > 0)
    p = pos / pos_mass.clamp(min=1e-300)
    n = neg / neg_mass.clamp(min=1e-300)
    zero = p.new_zeros(c, 1)
    # S(t_k): mass in bins >= k for k = 0..K (S(t_K) = 0); F = 1 - S: mass below the edge.
    s_pos = torch.cat([p.flip(1).cumsum(1).flip(1), zero], 1)
    s_neg = torch.cat([n.flip(1).cumsum(1).flip(1), zero], 1)
    f_pos = torch.cat([zero, p.cumsum(1)], 1)
    f_neg = torch.cat([zero, n.cumsum(1)], 1)
    pi = prior_pos.double().clamp(0, 1)[:, None]
    tp, fp = pi * s_pos, (1 - pi) * s_neg
    tn, fn = (1 - pi) * f_neg, pi * f_pos
    tiny = 1e-12
    # Positive threshold: above the highest edge where precision is defined and below target.
    defined = (tp + fp) > tiny
    precision = tp / (tp + fp).clamp(min=1e-300)
    bad = defined & (precision < target_precision - 1e-12)
    k_pos = _last_true(bad) + 1                                   # (C,), in 0..K
    has_pos = torch.gather(tp, 1, k_pos[:, None])[:, 0] > tiny
    ok_pos = usable & has_pos
    tau_pos = torch.where(ok_pos, edges[k_pos.clamp(max=k)], torch.full_like(edges[:1].expand(c), float("inf")))
    # Negative threshold: below the lowest edge where NPV is defined and below target.
    defined = (tn + fn) > tiny
    npv = tn / (tn + fn).clamp(min=1e-300)
    bad = defined & (npv < target_npv - 1e-12)
    k_neg = _first_true(bad) - 1                                  # (C,), in -1..K
    has_neg = torch.gather(tn, 1, k_neg.clamp(min=0)[:, None])[:, 0] > tiny
    ok_neg = usable & (k_neg >= 0) & has_neg
    tau_neg = torch.where(ok_neg, edges[k_neg.clamp(min=0)],
                          torch.full_like(edges[:1].expand(c), float("-inf")))
    if positive_quantile > 0:
        k_q = _last_true(f_pos <= positive_quantile + 1e-12).clamp(min=0)
        tau_pos = torch.maximum(tau_pos, edges[k_q])
    if negative_quantile < 1:
        k_q = _first_true(f_neg >= negative_quantile - 1e-12).clamp(max=k)
        tau_neg = torch.minimum(tau_neg, edges[k_q])
    tau_neg = torch.minimum(tau_neg, tau_pos)
    # Decision threshold: the estimated-F1 optimum over the edges 0..K-1.
    f1 = 2 * tp / (2 * tp + fp + fn).clamp(min=1e-300)
    best = f1[:, :k].argmax(1)
    decision = torch.where(usable, edges[best], torch.full_like(edges[:1].expand(c), float("nan")))
    return tau_pos, tau_neg, decision


class ScoreDistributions(nn.Module):
    """Decayed per-class histograms of known-positive and known-negative scores, per source, and
    the thresholds derived from them (buffers, so saved with the model).

    Buffers (S sources, C classes, K bins): ``pos``/``neg`` (S, C, K) float64 decayed counts;
    ``tau_pos``/``tau_neg``/``decision`` (S, C) the current thresholds; ``known_pos``/``known_neg``
    (C,) the known labels of each class in the training set (the prior π⁺ and the
    ``min_positives`` rule); ``updates`` (S,) steps seen per source; ``start_*`` a snapshot taken
    when pseudo-labelling starts (``start_epoch`` = -1 until then), for the figure of SATL.
    """

    def __init__(self, cfg: SATLThresholdConfig, sources, num_classes: int, partial_labels=None):
        super().__init__()
        check_threshold_config(cfg)
        self.cfg = cfg
        self.sources = list(sources)
        for s in self.sources:
            if s not in SOURCE_RANGES:
                raise ValueError(f"unknown score source {s!r} (known: {sorted(SOURCE_RANGES)})")
        n, c, k = len(self.sources), int(num_classes), int(cfg.bins)
        self.register_buffer("pos", torch.zeros(n, c, k, dtype=torch.float64))
        self.register_buffer("neg", torch.zeros(n, c, k, dtype=torch.float64))
        self.register_buffer("updates", torch.zeros(n, dtype=torch.long))
        inf = float("inf")
        self.register_buffer("tau_pos", torch.full((n, c), inf))
        self.register_buffer("tau_neg", torch.full((n, c), -inf))
        self.register_buffer("decision", torch.full((n, c), float("nan")))
        known_pos = torch.zeros(c, dtype=torch.long)
        known_neg = torch.zeros(c, dtype=torch.long)
        if partial_labels is not None:
            y = torch.as_tensor(partial_labels)
            known_pos, known_neg = (y > 0).sum(0).long(), (y < 0).sum(0).long()
        self.register_buffer("known_pos", known_pos)
        self.register_buffer("known_neg", known_neg)
        self.register_buffer("start_pos", torch.zeros(n, c, k, dtype=torch.float64))
        self.register_buffer("start_neg", torch.zeros(n, c, k, dtype=torch.float64))
        self.register_buffer("start_tau_pos", torch.full((n, c), inf))
        self.register_buffer("start_tau_neg", torch.full((n, c), -inf))
        self.register_buffer("start_decision", torch.full((n, c), float("nan")))
        self.register_buffer("start_epoch", torch.tensor(-1, dtype=torch.long))

    # ---- bookkeeping ---------------------------------------------------------------------------
    def index(self, source: str) -> int:
        return self.sources.index(source)

    def prior(self) -> torch.Tensor:
        total = (self.known_pos + self.known_neg).clamp(min=1).double()
        return self.known_pos.double() / total

    def enabled(self) -> torch.Tensor:
        """(C,) bool: classes with enough known positives to make pseudo-labels."""
        return self.known_pos >= int(self.cfg.min_positives)

    def bin_index(self, source: str, scores: torch.Tensor) -> torch.Tensor:
        lo, hi = SOURCE_RANGES[source]
        k = int(self.cfg.bins)
        return ((scores.float() - lo) / (hi - lo) * k).floor().clamp(0, k - 1).long()

    def _counts(self, source: str, scores: torch.Tensor, target: torch.Tensor,
                valid: torch.Tensor | None) -> torch.Tensor:
        """This process's (2, C x K) histogram counts of known positives / negatives."""
        c, k = self.pos.shape[1:]
        scores = scores.detach()
        ok = torch.isfinite(scores)
        if valid is not None:
            ok &= valid
        bins = self.bin_index(source, torch.nan_to_num(scores))
        flat = torch.arange(c, device=bins.device)[None] * k + bins           # (B, C)
        return torch.stack([
            torch.bincount(flat[ok & (target > 0)], minlength=c * k),
            torch.bincount(flat[ok & (target < 0)], minlength=c * k)]).to(self.pos.dtype)

    def _thresholds(self, s: int, pos: torch.Tensor, neg: torch.Tensor):
        """(tau_pos, tau_neg, decision) (C,) float32 from histograms (C, K); classes without
        enough known positives get none."""
        lo, hi = SOURCE_RANGES[self.sources[s]]
        tau_pos, tau_neg, decision = distribution_thresholds(
            pos, neg, self.prior().to(pos.device), float(self.cfg.target_precision),
            float(self.cfg.target_npv), lo, hi, float(self.cfg.positive_quantile),
            float(self.cfg.negative_quantile))
        on = self.enabled().to(tau_pos.device)
        inf = torch.full_like(tau_pos, float("inf"))
        return (torch.where(on, tau_pos, inf).float(), torch.where(on, tau_neg, -inf).float(),
                decision.float())

    @torch.no_grad()
    def update(self, source: str, scores: torch.Tensor, target: torch.Tensor,
               valid: torch.Tensor | None = None) -> None:
        """Add a batch: scores (B, C) (detached here), target (B, C) partial labels; ``valid``
        (B, C) bool marks the entries whose score is defined (default: finite scores).

        The counts of every process are summed first, so every process holds the same state.
        A method calls it from ``update_state``."""
        s = self.index(source)
        c, k = self.pos.shape[1:]
        counts = dist.all_reduce_sum(self._counts(source, scores, target, valid).to(self.pos.device))
        m = float(self.cfg.momentum)
        self.pos[s].mul_(m).add_(counts[0].view(c, k))
        self.neg[s].mul_(m).add_(counts[1].view(c, k))
        self.updates[s] += 1
        self.recompute(s)

    @torch.no_grad()
    def recompute(self, s: int) -> None:
        self.tau_pos[s], self.tau_neg[s], self.decision[s] = self._thresholds(
            s, self.pos[s], self.neg[s])

    @torch.no_grad()
    def preview(self, source: str, scores: torch.Tensor, target: torch.Tensor,
                valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(tau_pos, tau_neg) (C,) as :meth:`update` with this batch would make them, without
        changing anything: ``forward`` labels a batch with thresholds that already count it (the
        released order), and ``update_state`` commits it. Under DDP the preview counts this
        process's batch only; the committed state counts every process's."""
        s = self.index(source)
        c, k = self.pos.shape[1:]
        counts = self._counts(source, scores, target, valid).to(self.pos.device)
        m = float(self.cfg.momentum)
        pos = self.pos[s] * m + counts[0].view(c, k)
        neg = self.neg[s] * m + counts[1].view(c, k)
        return self._thresholds(s, pos, neg)[:2]

    @torch.no_grad()
    def pseudo_labels(self, source: str, scores: torch.Tensor, target: torch.Tensor,
                      taus: tuple[torch.Tensor, torch.Tensor] | None = None):
        """(positive, negative) (B, C) bool for the unknown entries of ``target``: score >= τ⁺,
        score < τ⁻ (classes without a threshold make none). ``taus``: thresholds from
        :meth:`preview` instead of the current ones."""
        s = self.index(source)
        tau_pos, tau_neg = taus if taus is not None else (self.tau_pos[s], self.tau_neg[s])
        unknown = target == 0
        scores = scores.detach().float()
        positive = unknown & (scores >= tau_pos[None])
        negative = unknown & (scores < tau_neg[None]) & ~positive
        return positive, negative

    @torch.no_grad()
    def snapshot(self, epoch: int) -> None:
        """Keep the current state as the 'start of pseudo-labelling' picture."""
        for name in ("pos", "neg", "tau_pos", "tau_neg", "decision"):
            getattr(self, f"start_{name}").copy_(getattr(self, name))
        self.start_epoch.fill_(int(epoch))

    def snapshot_at_start(self, epoch: int, start_epoch: int) -> None:
        """Take the snapshot when epoch E0 begins (once: a resumed run keeps the saved one)."""
        if int(epoch) == int(start_epoch) and int(self.start_epoch) < 0:
            self.snapshot(epoch)

    def stats(self, prefix: str = "satl") -> dict[str, float]:
        """Per source: classes with a positive / negative threshold and their mean value."""
        out = {}
        for s, name in enumerate(self.sources):
            tp, tn = self.tau_pos[s], self.tau_neg[s]
            fp, fn = torch.isfinite(tp), torch.isfinite(tn)
            out[f"{prefix}_{name}_pos_classes"] = int(fp.sum())
            out[f"{prefix}_{name}_neg_classes"] = int(fn.sum())
            out[f"{prefix}_{name}_tau_pos"] = float(tp[fp].mean()) if bool(fp.any()) else float("nan")
            out[f"{prefix}_{name}_tau_neg"] = float(tn[fn].mean()) if bool(fn.any()) else float("nan")
        return out

    def table(self, class_names, source: str, start: bool = False) -> dict:
        """Per-class thresholds of one source as plain data (None where a threshold is absent)."""
        s = self.index(source)
        pre = "start_" if start else ""
        rows = {}
        values = {t: getattr(self, pre + t)[s].double().cpu().tolist()
                  for t in ("tau_pos", "tau_neg", "decision")}

        def num(t, c):
            v = values[t][c]
            return round(v, 6) if math.isfinite(v) else None
        for c, name in enumerate(class_names):
            rows[name] = {"positive": num("tau_pos", c), "negative": num("tau_neg", c),
                          "decision": num("decision", c),
                          "known_positives": int(self.known_pos[c]),
                          "known_negatives": int(self.known_neg[c])}
        return rows
