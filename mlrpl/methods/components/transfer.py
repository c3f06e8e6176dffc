"""What ``sst`` and ``hst`` share: the keys of their config, the intra-image semantic transfer
(IST) head, the threshold rules, and the functions a semantic-transfer method composes its
hooks from.

**IST** (docs/methods/sst.md#equations): an image-specific class co-occurrence probability P_ij
for every class pair, its supervision (:func:`mlrpl.losses.cooccurrence_focal`) and the
intra-image score q^intra (:func:`intra_scores`).

Efficient IST (docs/methods/sst.md D1). The head scores a class pair (i, j), i < j, with
``m_ij = <w_p, fc2(relu(fc1([g_i; g_j])))> + b_p`` (p = the pair's index, its own weight). The
first layer splits into ``fc1([g_i; g_j]) = A g_i + B g_j + b``, so ``u = A g + b`` and
``v = B g`` are computed once per class (B x C x H) and a pair's pre-activation is
``u_i + v_j``: no (pairs x 2H) concatenation. The second layer is linear and followed by a
linear read-out, so it folds into the pair weights (``W2^T w_p``, once per step, not per
image). Pseudo-labelling needs P[c, j] only for the entries c it scores and the image's known
positives j, i.e. at most sum_b |entries_b| x |K+_b| pairs instead of B x C(C-1)/2. The
co-occurrence loss uses all pairs (``cooc_pairs: all``) or the known-positive pairs plus a uniform
sample of the others (``cooc_pairs: sample``, docs/methods/sst.md D2). ``dense: true`` computes
everything the literal way (all pairs, concatenated inputs): the reference the efficient path is
tested against, and a benchmark baseline.

Sparse pairs (docs/methods/sst.md D7). "All pairs" above are the pairs of the head's set: each
class's ``trunk.graph_k`` most co-occurring classes in the training labels, symmetrised
(:func:`ist_pairs`), about C x k pairs instead of C(C-1)/2; a pair outside the set has no weight
and P_ij = 0. ``graph_k`` null (or >= C - 1) keeps every pair, the released head.

**The threshold rules** turn an entry's two scores, intra-image q^intra and cross-image
(q^inter from SST's memory bank, g from HST's prototypes), into positive pseudo-labels. One
interface (:class:`ThresholdRule`), called the same way whichever rule is configured:
:class:`ScheduledThreshold` (SST's θ(epoch)), :class:`LearnedThresholds` (HST's DTL,
docs/methods/hst.md D2) or :class:`DistributionThresholds` (SATL's, ``thresholds: satl``;
docs/methods/sst.md D5, docs/methods/hst.md D6). In a step the method asks :meth:`entries
<ThresholdRule.entries>` and :attr:`~ThresholdRule.grad` (which q^intra entries to score, with
their graph or not), then per source :meth:`~ThresholdRule.observe` and, from E0 on,
:meth:`~ThresholdRule.positives`; its hooks call :meth:`~ThresholdRule.update`,
:meth:`~ThresholdRule.on_epoch_start` and :meth:`~ThresholdRule.stats`. A rule holds no tensor
of its own: its state (HST's θ, SATL's distributions) is registered on the method, under the
names checkpoints carry (``threshold_intra``, ``threshold_inter``, ``distributions.*``).

**The shared hooks.** A semantic-transfer method owns ``trunk``, ``ist``, ``quality``,
``distributions`` and its threshold ``rule`` (built by :func:`build_parts`, in that order) and
takes, as its own hooks, the functions here that fit: :func:`transfer_forward` (the trunk, then
the method's ``transfer``), :func:`transfer_update_state`, :func:`transfer_on_epoch_start`,
:func:`transfer_epoch_stats`; its ``loss`` starts from :func:`shared_terms` and
:func:`pseudo_bce`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlrpl.data.stats import cooccurrence_graph, top_k_neighbours
from mlrpl.errors import ConfigError
from mlrpl.losses import cooccurrence_focal, partial_bce, warmup_ramp, zero_loss
from mlrpl.methods.components.pseudo_labels import (PseudoLabelQuality, SATLThresholdConfig,
                                                    ScoreDistributions)
from mlrpl.methods.base import MethodConfig
from mlrpl.models.sarl import ElementWiseClassifier, SARLConfig, trunk_for

@dataclass
class TransferConfig(MethodConfig):
    """Keys shared by ``sst`` and ``hst`` (under ``method:``)."""
    trunk: SARLConfig = field(default_factory=SARLConfig)
    start_epoch: int = 5              # E0: pseudo-label losses from this epoch on
    intra_weight: float = 1.0         # weight of bce(s, y^intra)
    inter_weight: float = 1.0         # weight of bce(s, y^inter)
    cooc_weight: float = 10.0         # co-occurrence loss weight
    contrast_weight: float = 0.05     # instance contrastive loss weight
    warmup: bool = True               # ramp the two weights above over epoch 0 (step/steps)
    # sample | all: the pairs the co-occurrence loss uses (docs/methods/sst.md D2)
    cooc_pairs: str = "sample"
    cooc_sample: int = 512            # per image, sampled pairs that are not both known positive
    cooc_gamma_pos: float = 1.0       # asymmetric focal BCE (ASL): gamma+, gamma-, clip
    cooc_gamma_neg: float = 2.0
    cooc_clip: float = 0.05
    # Pairs with an unknown label: negative ("never co-occur", the released code) or ignore
    # (only pairs whose two labels are known are supervised): docs/methods/sst.md D3;
    # benchmarks/RESULTS.md measures both.
    cooc_unknown: str = "negative"
    ist_proj_dim: Optional[int] = None    # g_c size; None: D / 2
    ist_hidden_dim: Optional[int] = None  # pair MLP width; None: D
    dense: bool = False               # literal all-pairs IST (reference / benchmark)
    pl_stats_per_class: bool = True   # per-class pseudo-label quality columns in summary.csv
    # own: the method's thresholds (SST's schedule, HST's DTL); satl: per-class thresholds from
    # the score distributions of known positives / negatives of each source
    # (docs/methods/sst.md D5, docs/methods/hst.md D6)
    thresholds: str = "own"
    satl: SATLThresholdConfig = field(default_factory=SATLThresholdConfig)


# ---- the shared hooks ------------------------------------------------------------------------
# Functions of the method (``self``: an sst or hst), taken by each as its own hook or helper.
PL_SOURCES = ("intra", "inter")


def build_parts(self, cfg, ctx, own_rule: ThresholdRule) -> None:
    """The trunk, the IST head, the pseudo-label quality counters and (with
    ``thresholds: satl``) the score distributions, in this order (the order the parameters are
    drawn in); then ``self.rule``, the thresholds that make the pseudo-labels: ``own_rule`` (the
    method's own) or, with ``thresholds: satl``, SATL's."""
    self.trunk = trunk_for(cfg.trunk, ctx)
    self.class_names = list(ctx.class_names)
    self.ist = IntraImageTransfer(cfg, ctx.num_classes, self.trunk.dim, head_pairs(cfg, ctx))
    self.quality = PseudoLabelQuality(PL_SOURCES, self.class_names, cfg.pl_stats_per_class)
    if cfg.thresholds not in ("own", "satl"):
        raise ConfigError(f"bad value for 'method.thresholds': {cfg.thresholds!r}; expected "
                          f"'own' or 'satl'")
    # SATL thresholds in place of the method's own: positive pseudo-labels only, as the
    # method's own thresholds make (the effect of the thresholds alone).
    self.distributions = None
    self.rule = own_rule
    if cfg.thresholds == "satl":
        self.distributions = ScoreDistributions(cfg.satl, PL_SOURCES, ctx.num_classes,
                                                ctx.partial_labels)
        self.rule = DistributionThresholds(self.distributions, cfg.start_epoch)


def head_pairs(cfg, ctx) -> Optional[torch.Tensor]:
    """The IST head's pair set (2, P), or None for every pair: from the training labels and
    ``trunk.graph_k`` (:func:`ist_pairs`); without labels (a model rebuilt to load a checkpoint),
    a set of the size the checkpoint saved (its pairs replace it on loading), or every pair when
    it saved none."""
    if ctx.partial_labels is not None:
        return ist_pairs(ctx.partial_labels, cfg.trunk.graph_k)
    saved = (ctx.state_shapes or {}).get("ist.head.pair_ij")
    if saved is None:
        return None
    return torch.triu_indices(ctx.num_classes, ctx.num_classes, 1)[:, :saved[-1]]


def transfer_forward(self, features, batch=None):
    """``forward``: the trunk, then (training, with labels) the method's own ``transfer``: its
    pseudo-labelling and extra terms added to the trunk's outputs (pure)."""
    out = self.trunk(features)
    if not self.training or batch is None or "target" not in batch:
        return out
    return self.transfer(out, batch["target"], int(batch.get("epoch", 0)))


def transfer_on_epoch_start(self, ctx):
    """``on_epoch_start``: the threshold rule's (SATL's: the distributions' snapshot at E0)."""
    self.rule.on_epoch_start(ctx)


def is_active(self, epoch: int) -> bool:
    return epoch >= int(self.cfg.start_epoch)


def shared_terms(self, outputs: dict, batch: dict, epoch: int) -> dict:
    """Partial BCE on the known labels + the warmed-up co-occurrence and contrastive terms."""
    ramp = warmup_ramp(batch, epoch, self.cfg.warmup)
    return {"bce": partial_bce(outputs["logits"], batch["target"]),
            "cooc": self.cfg.cooc_weight * ramp * outputs["cooc"],
            "contrast": self.cfg.contrast_weight * ramp * outputs["contrast"]}


def pseudo_bce(self, outputs: dict, batch: dict, source: str) -> torch.Tensor:
    """bce(s, y^source): the known labels plus the source's positive pseudo-labels."""
    key = f"pl_{source}"
    if key not in outputs:
        return zero_loss(outputs["logits"])
    target = torch.where(outputs[key], torch.ones_like(batch["target"]), batch["target"])
    return partial_bce(outputs["logits"], target)


def transfer_update_state(self, outputs, batch):
    """``update_state``: the threshold rule's state and the pseudo-label quality counters."""
    target = batch["target"]
    self.rule.update(outputs, batch)
    for s in PL_SOURCES:
        if f"pl_{s}" in outputs:
            self.quality.update(s, outputs[f"pl_{s}"], target, batch.get("full"))


def transfer_epoch_stats(self) -> dict[str, float]:
    """``epoch_stats``: pseudo-label quality, then the threshold rule's thresholds."""
    device = next(self.parameters()).device
    stats = self.quality.compute(device)
    self.quality.reset()
    stats.update(self.rule.stats())
    return stats


# ---- the threshold rules ---------------------------------------------------------------------
Scores = Union[torch.Tensor, Callable[[], torch.Tensor]]


def sst_threshold(epoch: int, start_epoch: int, start: float = 0.95, step: float = 0.025,
                  floor: float = 0.75) -> float:
    """SST's pseudo-label threshold: ``start`` up to and at E0, lowered by ``step`` after every
    epoch from E0 on, never below ``floor`` (E0 = 5: 0.95 at epoch 5, 0.925 at 6, ..., 0.75
    from 13). A ``start`` below ``floor`` is kept as it is.

    >>> [round(sst_threshold(e, 5), 3) for e in (0, 5, 6, 12, 13, 19)]
    [0.95, 0.95, 0.925, 0.775, 0.75, 0.75]
    """
    return max(start - step * max(epoch - start_epoch, 0), min(floor, start))


class ThresholdRule:
    """The interface (and the defaults: a rule that observes nothing and keeps no state)."""

    grad = False   # whether the scores keep their graph (the rule trains through them)

    def entries(self, unknown: torch.Tensor, active: bool) -> Optional[torch.Tensor]:
        """(B, C) bool: the q^intra entries to score this step (None: none). ``unknown`` marks
        the unknown labels; ``active``: pseudo-labelling is on (epoch >= E0)."""
        return unknown if active else None

    def observe(self, out: dict, source: str, scores: Optional[Scores], target: torch.Tensor,
                valid: Optional[torch.Tensor] = None) -> None:
        """Record the batch's ``scores`` of ``source`` in ``out`` for :meth:`positives` and
        :meth:`update`. ``scores`` may be a function that computes them (called only by a rule
        that observes); ``valid`` (B, C) bool marks the entries that have a score."""

    def positives(self, out: dict, source: str, scores: torch.Tensor, target: torch.Tensor,
                  epoch: int, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, C) bool positive pseudo-labels of ``source``, on unknown entries of ``target``
        (and, with ``valid``, on valid ones only); a rule with a loss adds it to ``out``."""
        raise NotImplementedError

    def update(self, outputs: dict, batch: dict) -> None:
        """Change the rule's state from a step's outputs (the method's ``update_state``)."""

    def on_epoch_start(self, ctx) -> None:
        """Work before an epoch (the method's ``on_epoch_start``)."""

    def stats(self) -> dict[str, float]:
        """The thresholds for summary.csv (the method's ``epoch_stats``)."""
        return {}


class ScheduledThreshold(ThresholdRule):
    """SST's threshold: θ(epoch) (:func:`sst_threshold`) for both sources; an unknown entry whose
    score reaches it is positive. Only the unknown entries are scored, without a gradient."""

    def __init__(self, cfg):
        self.start_epoch = int(cfg.start_epoch)
        self.start, self.step = cfg.threshold_start, cfg.threshold_step
        self.floor = cfg.threshold_min
        self.last_epoch: Optional[int] = None   # the epoch of the last step (for stats)

    def threshold(self, epoch: int) -> float:
        return sst_threshold(epoch, self.start_epoch, self.start, self.step, self.floor)

    def positives(self, out, source, scores, target, epoch, valid=None):
        positive = (target == 0) & (scores >= self.threshold(epoch))
        return positive if valid is None else positive & valid

    def update(self, outputs, batch):
        self.last_epoch = int(batch.get("epoch", 0))

    def stats(self):
        epoch = self.last_epoch
        if epoch is None:
            return {}
        active = epoch >= self.start_epoch
        return {"pl_threshold": self.threshold(epoch) if active else float("nan")}


class LearnedThresholds(ThresholdRule):
    """HST's differential threshold learning: one learnable scalar θ per source,
    ŝ = clip(q − θ, 0, 1); an unknown entry is positive where ŝ > 0, and ŝ is scored as a logit
    against the known labels (partial BCE, the output ``dtl_<source>``), which moves θ. Every
    entry is scored, with its graph.

    θ_intra, θ_inter are registered on ``holder`` (the method) as ``threshold_intra``,
    ``threshold_inter``. They start at ``init`` (None: 0.95) and form an optimiser group of their
    own without weight decay; ``quirks`` (the released code): they start at 1.0 (when ``init`` is
    None) and sit, last, in the method's one group, decayed like every weight."""

    grad = True

    def __init__(self, holder: nn.Module, init: Optional[float] = None, quirks: bool = False):
        init = init if init is not None else (1.0 if quirks else 0.95)
        holder.threshold_intra = nn.Parameter(torch.tensor(float(init)))
        holder.threshold_inter = nn.Parameter(torch.tensor(float(init)))
        self.holder = holder
        self.one_group = bool(quirks)

    def theta(self, source: str) -> nn.Parameter:
        return getattr(self.holder, f"threshold_{source}")

    def entries(self, unknown, active):
        return torch.ones_like(unknown) if active else None   # the known ones train θ

    def positives(self, out, source, scores, target, epoch, valid=None):
        s = (scores - self.theta(source)).clamp(0, 1)
        # Entries without a score (``valid`` false) take no part in the loss or the labelling.
        out[f"dtl_{source}"] = partial_bce(s, target if valid is None else target * valid)
        positive = (target == 0) & (s.detach() > 0)
        return positive if valid is None else positive & valid

    def param_groups(self, params) -> list[dict]:
        """The optimiser's groups for ``params`` (the method's, θ among them)."""
        thresholds = [self.theta("intra"), self.theta("inter")]
        ids = {id(p) for p in thresholds}
        rest = [p for p in params if p.requires_grad and id(p) not in ids]
        if self.one_group:
            return [{"params": rest + thresholds}]
        return [{"params": rest},
                {"params": thresholds, "weight_decay": 0.0, "name": "thresholds"}]

    def stats(self):
        return {f"threshold_{s}": float(self.theta(s).detach()) for s in ("intra", "inter")}


class DistributionThresholds(ThresholdRule):
    """SATL's thresholds: per class and source, τ⁺ from the decayed histograms of the scores of
    known positives and negatives (``distributions``, registered on the method); an unknown entry
    whose score reaches τ⁺ is positive (positive pseudo-labels only, as the methods' own rules
    make). Every entry is scored from the first epoch on (the known ones feed the histograms),
    without a graph; a known positive's intra-image score is observed leave-one-out
    (:func:`leave_one_out_intra`). The positives of a batch count its own scores (the thresholds
    :meth:`ScoreDistributions.preview` gives); ``update`` commits them."""

    def __init__(self, distributions: ScoreDistributions, start_epoch: int):
        self.distributions = distributions
        self.start_epoch = int(start_epoch)

    def entries(self, unknown, active):
        return torch.ones_like(unknown)

    def observe(self, out, source, scores, target, valid=None):
        with torch.no_grad():
            scores = scores() if callable(scores) else scores
            if source == "intra":   # a known positive scored as if it were unknown
                seen = leave_one_out_intra(scores.detach(), target)
            else:
                seen = (scores.detach(), valid)
        out.setdefault("observed", {})[source] = seen

    def positives(self, out, source, scores, target, epoch, valid=None):
        seen, seen_valid = out["observed"][source]
        taus = self.distributions.preview(source, seen, target, seen_valid)
        positive = self.distributions.pseudo_labels(source, scores, target, taus)[0]
        return positive if valid is None else positive & valid

    def update(self, outputs, batch):
        for source, (scores, valid) in outputs.get("observed", {}).items():
            self.distributions.update(source, scores, batch["target"], valid)

    def on_epoch_start(self, ctx):
        """The distributions' snapshot when E0 begins."""
        self.distributions.snapshot_at_start(ctx.epoch, self.start_epoch)

    def stats(self):
        return self.distributions.stats()


# ---- the IST head ----------------------------------------------------------------------------
def ist_pairs(partial_labels: np.ndarray, k: Optional[int]) -> Optional[torch.Tensor]:
    """The class pairs the IST head scores (docs/methods/sst.md D7): (i, j), i < j, where j is
    among i's ``k`` most co-occurring classes or i among j's
    (:func:`~mlrpl.data.stats.top_k_neighbours` of the co-occurrence graph of the partial labels
    (N, C), symmetrised), in i-major order. Returns
    (2, P) long, or None when that is every pair (``k`` None or ``k >= C - 1``)."""
    graph = cooccurrence_graph(partial_labels)
    near = top_k_neighbours(graph, k)
    kept = np.triu(near | near.T, 1)
    c = graph.shape[0]
    if int(kept.sum()) == c * (c - 1) // 2:
        return None
    return torch.from_numpy(np.stack(np.nonzero(kept))).long()


def pair_index_matrix(num_classes: int, pairs: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(C, C) long: the index of pair (i, j) in ``pairs`` (2, P) (None: every i < j pair in
    i-major order, (0,1), (0,2), ..., (1,2), ...), symmetric; -1 on the diagonal and for the
    pairs not listed."""
    if pairs is None:
        pairs = torch.triu_indices(num_classes, num_classes, 1)
    idx = torch.full((num_classes, num_classes), -1, dtype=torch.long, device=pairs.device)
    ar = torch.arange(pairs.shape[1], device=pairs.device)
    idx[pairs[0], pairs[1]] = ar
    idx[pairs[1], pairs[0]] = ar
    return idx


class CooccurrenceHead(nn.Module):
    """The IST co-occurrence head (docs/methods/sst.md#equations): g_c = W_g F_c + b, pair MLP on
    [g_i; g_j] (Linear 2H' -> H, ReLU, Linear H -> H), then a pair-specific inner product + bias.

    Parameters are those of the literal formulation (``fc1`` acts on the concatenation), so that
    :meth:`dense_logits` (literal) and :meth:`pair_logits` (factorised) are the same function.

    The head scores the P pairs ``pairs`` (2, P) (i < j, i-major; None: all C(C-1)/2, the
    released head), with one weight vector each (``self.pairs``, P x H); a pair outside the set
    has P_ij = 0 (docs/methods/sst.md D7). A sparse set is saved with the model (the buffer
    ``pair_ij``) and a checkpoint's set replaces the head's on loading (:meth:`set_pairs`).
    """

    def __init__(self, num_classes: int, dim: int, proj_dim: Optional[int] = None,
                 hidden_dim: Optional[int] = None, pairs: Optional[torch.Tensor] = None):
        super().__init__()
        self.num_classes = num_classes
        self.proj_dim = int(proj_dim or max(dim // 2, 1))
        self.hidden_dim = int(hidden_dim or dim)
        self.num_pairs = (num_classes * (num_classes - 1) // 2 if pairs is None
                          else int(pairs.shape[1]))
        self.proj = nn.Linear(dim, self.proj_dim)
        self.fc1 = nn.Linear(2 * self.proj_dim, self.hidden_dim)
        self.fc2 = nn.Linear(self.hidden_dim, self.hidden_dim)
        self.pairs = ElementWiseClassifier(self.num_pairs, self.hidden_dim)
        self.set_pairs(pairs)

    @property
    def pair_i(self) -> torch.Tensor:
        """(P,) long: the first class of each scored pair."""
        return self.pair_ij[0]

    @property
    def pair_j(self) -> torch.Tensor:
        """(P,) long: the second class of each scored pair (> its first)."""
        return self.pair_ij[1]

    def set_pairs(self, pairs: Optional[torch.Tensor]) -> None:
        """Score the pairs ``pairs`` (2, P) long (None: every pair). The buffers follow: ``pair_ij``
        (2, P), saved with the model when the set is not every pair; ``pair_lookup`` (C, C), the
        index of each pair in the set (-1 outside), derived. The per-pair weights are resized
        (in place, uninitialised) when P changes: loading a checkpoint fills them."""
        c = self.num_classes
        device = self.proj.weight.device
        sparse = pairs is not None
        pairs = (torch.triu_indices(c, c, 1, device=device) if pairs is None
                 else pairs.to(device=device, dtype=torch.long))
        self.register_buffer("pair_ij", pairs, persistent=sparse)
        self.register_buffer("pair_lookup", pair_index_matrix(c, pairs), persistent=False)
        self.num_pairs = int(pairs.shape[1])
        for p in (self.pairs.weight, self.pairs.bias):
            if p.shape[0] != self.num_pairs:
                p.data = p.new_empty((self.num_pairs, *p.shape[1:]))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The checkpoint's pair set: its saved ``pair_ij``, or every pair when it has the head's
        # weights without one (a checkpoint of the released head, or saved before sparse sets).
        saved = state_dict.get(prefix + "pair_ij")
        weight = state_dict.get(prefix + "pairs.weight")
        if saved is not None:
            self.set_pairs(saved)
        elif weight is not None and weight.shape[0] != self.num_pairs:
            self.set_pairs(None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- factorised ---------------------------------------------------------------------------
    def project(self, semantic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, D) -> u = A g + b, v = B g, each (B, C, H), where fc1 = [A | B]."""
        g = self.proj(semantic)
        h = self.proj_dim
        u = F.linear(g, self.fc1.weight[:, :h], self.fc1.bias)
        v = F.linear(g, self.fc1.weight[:, h:])
        return u, v

    def folded(self, p: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair weights folded through fc2: <w_p, W2 r + b2> + c_p = <W2^T w_p, r> +
        (<w_p, b2> + c_p). Returns (weights (P, H), biases (P,)) for the pairs ``p`` (all: None)."""
        w = self.pairs.weight if p is None else self.pairs.weight.index_select(0, p)
        c = self.pairs.bias if p is None else self.pairs.bias.index_select(0, p)
        return w @ self.fc2.weight, w @ self.fc2.bias + c

    def pair_logits(self, u, v, b, i, j) -> torch.Tensor:
        """Logits m_ij of image b for the listed pairs (i < j, each in the set), all (N,) long
        -> (N,). Rows are gathered with ``index_select`` (its backward, ``index_add``, is
        cheaper than that of advanced indexing)."""
        classes = u.shape[1]
        r = torch.relu(u.flatten(0, 1).index_select(0, b * classes + i)
                       + v.flatten(0, 1).index_select(0, b * classes + j))
        p = self.pair_lookup[i, j]
        if p.shape[0] >= self.num_pairs:   # fold once for every pair, then look up
            w, c = self.folded()
            w, c = w.index_select(0, p), c.index_select(0, p)
        else:
            w, c = self.folded(p)
        return (r * w).sum(-1) + c

    def all_pair_logits(self, u, v) -> torch.Tensor:
        """Every pair of the set of every image, (B, P), from the factorised projections. With
        fc2 folded into the pair weights, a pair costs one add, a ReLU and a dot product of size
        H (no B x P x H second-layer activation)."""
        w, c = self.folded()
        r = torch.relu(u.index_select(1, self.pair_i) + v.index_select(1, self.pair_j))  # (B, P, H)
        return torch.einsum("bph,ph->bp", r, w) + c

    # -- literal reference ---------------------------------------------------------------------
    def dense_logits(self, semantic: torch.Tensor) -> torch.Tensor:
        """(B, C, D) -> (B, P): concatenate [g_i; g_j] for every pair of the set, as released."""
        g = self.proj(semantic)
        x = torch.cat([g[:, self.pair_i], g[:, self.pair_j]], dim=-1)
        return self.pairs(self.fc2(torch.relu(self.fc1(x))))

    def matrix(self, pair_logits: torch.Tensor) -> torch.Tensor:
        """(B, P) logits -> (B, C, C) probabilities, symmetric, unit diagonal, 0 at the pairs
        outside the set."""
        b = pair_logits.shape[0]
        c = self.num_classes
        prob = torch.sigmoid(pair_logits.float())
        P = prob.new_zeros(b, c, c)
        P = P.index_put((torch.arange(b, device=P.device)[:, None], self.pair_i[None], self.pair_j[None]),
                        prob)
        P = P + P.transpose(1, 2)
        return P + torch.eye(c, device=P.device, dtype=P.dtype)


def intra_scores(head: CooccurrenceHead, u, v, target: torch.Tensor,
                 entries: torch.Tensor) -> torch.Tensor:
    """q^intra_c = (1 / max(|K+|, 1)) sum_{j in K+} P_cj (P_cc = 1; P_cj = 0 for a pair outside
    the head's set) for the entries asked for.

    Parameters
    ----------
    u, v : (B, C, H) from :meth:`CooccurrenceHead.project`
    target : (B, C) partial labels (+1 / -1 / 0)
    entries : (B, C) bool, the entries to score; the others are 0 in the result

    Only the pairs (c, j) of the set, c an asked entry and j a known positive, are evaluated,
    each once, and summed per entry into (B, C): O(B x P) work and memory, no (B, C, C) grid.
    """
    pos = target > 0
    bsz, c = target.shape
    i, j = head.pair_i, head.pair_j
    to_i = entries[:, i] & pos[:, j]            # (B, P): pair (i, j) adds P_ij to q_i ...
    to_j = entries[:, j] & pos[:, i]            # ... and to q_j
    b, p = (to_i | to_j).nonzero(as_tuple=True)
    ip, jp = i[p], j[p]
    prob = torch.sigmoid(head.pair_logits(u, v, b, ip, jp).float())
    add_i, add_j = to_i[b, p], to_j[b, p]
    index = torch.cat([(b * c + ip)[add_i], (b * c + jp)[add_j]])
    total = prob.new_zeros(bsz * c).index_add(0, index, torch.cat([prob[add_i], prob[add_j]]))
    total = total.view(bsz, c) + (entries & pos).float()
    return total / pos.sum(1, keepdim=True).clamp(min=1).float()


def intra_scores_dense(P: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The same score from a full (B, C, C) co-occurrence matrix (reference)."""
    pos = (target > 0).float()
    return (P * pos[:, None, :]).sum(-1) / pos.sum(1, keepdim=True).clamp(min=1)


class IntraImageTransfer(nn.Module):
    """The IST head with its loss and scores: one call per training step."""

    def __init__(self, cfg, num_classes: int, dim: int, pairs: Optional[torch.Tensor] = None):
        """``pairs`` (2, P) long: the class pairs the head scores (:func:`ist_pairs`; None: every
        pair)."""
        super().__init__()
        if cfg.cooc_pairs not in ("all", "sample"):
            raise ConfigError(f"bad value for 'method.cooc_pairs': {cfg.cooc_pairs!r}; expected "
                              f"'all' or 'sample'")
        if getattr(cfg, "cooc_unknown", "negative") not in ("negative", "ignore"):
            raise ConfigError(f"bad value for 'method.cooc_unknown': {cfg.cooc_unknown!r}; "
                              f"expected 'negative' or 'ignore'")
        if cfg.cooc_pairs == "sample" and cfg.cooc_sample < 1:
            raise ConfigError("bad value for 'method.cooc_sample': expected a positive integer")
        self.head = CooccurrenceHead(num_classes, dim, cfg.ist_proj_dim, cfg.ist_hidden_dim, pairs)
        self.dense = bool(cfg.dense)
        self.mode = cfg.cooc_pairs
        self.sample = int(cfg.cooc_sample)
        # negative: a pair with an unknown label is a "never co-occur" target (as released);
        # ignore: only pairs whose two labels are known are supervised
        self.ignore_unknown = getattr(cfg, "cooc_unknown", "negative") == "ignore"
        self.focal = dict(gamma_pos=cfg.cooc_gamma_pos, gamma_neg=cfg.cooc_gamma_neg,
                          clip=cfg.cooc_clip)

    def forward(self, semantic: torch.Tensor, target: torch.Tensor,
                entries: Optional[torch.Tensor] = None, score_grad: bool = True):
        """-> (co-occurrence loss (scalar, unweighted), q^intra (B, C) or None).

        ``entries`` (B, C) bool: which q^intra entries are needed (None: no scores).
        ``score_grad``: whether the scores keep their graph (HST's DTL) or not (SST).
        """
        head = self.head
        pos = target > 0
        t = pos[:, head.pair_i] & pos[:, head.pair_j]             # (B, P), the head's pairs
        keep = None
        if self.ignore_unknown:
            known = target != 0
            keep = known[:, head.pair_i] & known[:, head.pair_j]
        if self.dense:
            logits = head.dense_logits(semantic)
            loss = self._mean(cooccurrence_focal(logits, t, **self.focal), semantic, keep)
            q = None
            if entries is not None:
                with torch.set_grad_enabled(score_grad and torch.is_grad_enabled()):
                    q = intra_scores_dense(head.matrix(logits), target) * entries
            return loss, q
        u, v = head.project(semantic)
        if self.mode == "sample" and self.sample < head.num_pairs:
            loss = self._sampled_loss(u, v, t, keep)
        else:
            loss = self._mean(cooccurrence_focal(head.all_pair_logits(u, v), t, **self.focal),
                              semantic, keep)
        q = None
        if entries is not None:
            with torch.set_grad_enabled(score_grad and torch.is_grad_enabled()):
                q = intra_scores(head, u, v, target, entries)
        return loss, q

    @staticmethod
    def _mean(terms, like, keep=None):
        if keep is not None:   # the mean over the supervised pairs (0 with a graph when none)
            w = keep.to(terms.dtype)
            return (terms * w).sum() / w.sum().clamp(min=1) + like.sum() * 0.0
        return terms.mean() if terms.numel() else like.sum() * 0.0

    def _sampled_loss(self, u, v, t, keep=None):
        """Unbiased estimate of the mean over the head's P pairs: every known-positive pair
        (t = 1) counts once; per image, m_b of its n_b other pairs are drawn uniformly without
        replacement and weighted n_b / m_b (Horvitz-Thompson), and the sum is divided by B x P as
        the mean over every pair is. With ``keep`` (pairs whose labels are both known), the other
        pairs are drawn among the kept ones only and the sum is divided by the number kept."""
        head = self.head
        bsz, npairs = t.shape
        # Uniform sample without replacement of the t = 0 pairs: the smallest random keys, with
        # the t = 1 pairs pushed beyond every draw.
        keys = torch.rand(bsz, npairs, device=t.device)
        keys = keys.masked_fill(t if keep is None else t | ~keep, 2.0)
        m = min(self.sample, npairs)
        picked_key, picked = keys.topk(m, dim=1, largest=False)
        valid = picked_key < 1.5                                             # (B, m)
        n_neg = (~t).sum(1) if keep is None else (~t & keep).sum(1)
        m_b = valid.sum(1).clamp(min=1)
        w_neg = (n_neg.float() / m_b.float())[:, None].expand(bsz, m)
        bn, slot = valid.nonzero(as_tuple=True)
        pn = picked[bn, slot]
        bp, pp = t.nonzero(as_tuple=True)
        b = torch.cat([bp, bn])
        p = torch.cat([pp, pn])
        w = torch.cat([torch.ones(bp.shape[0], device=t.device), w_neg[bn, slot]])
        logits = head.pair_logits(u, v, b, head.pair_i[p], head.pair_j[p])
        terms = cooccurrence_focal(logits, t[b, p], **self.focal)
        denom = float(bsz * npairs) if keep is None else keep.sum().clamp(min=1).float()
        return (terms * w).sum() / denom + u.sum() * 0.0


def leave_one_out_intra(q: torch.Tensor, target: torch.Tensor):
    """q^intra of every entry (B, C), as :func:`intra_scores` gives it for ``entries`` = all ->
    (scores, valid): a known positive's score without its own term, (sum_{j in K+, j != c} P_cj)
    / (|K+| - 1), defined when the image has another known positive; any other entry's score
    as it is, defined when the image has a known positive."""
    pos = target > 0
    npos = pos.sum(1, keepdim=True).float()
    total = q.float() * npos.clamp(min=1)
    loo = torch.where(pos, (total - 1) / (npos - 1).clamp(min=1), q.float())
    valid = torch.where(pos, npos >= 2, npos >= 1)
    return loo, valid
