"""Pieces shared by the semantic-transfer methods ``sst`` and ``hst`` (SPEC §1, §3, §4), written once.

* :class:`CooccurrenceHead` / :class:`IntraImageTransfer` -- the IST head: an image-specific
  class co-occurrence probability P_ij for every class pair, its supervision
  (:func:`cooccurrence_focal`) and the intra-image score q^intra (:func:`intra_scores`).
* :func:`instance_contrastive` -- the cross-image instance contrastive loss of SPEC §1.
* :class:`PseudoLabelQuality` -- how many unknown entries a method pseudo-labels, and how many of
  them are right, against the hidden true labels (SPEC §11.13).
* :func:`sst_threshold` -- SST's threshold schedule.
* :class:`TransferMethod` -- the base of ``sst`` and ``hst``: SARL trunk + IST head + the loss
  terms they share.

Efficient IST (SPEC §11.9). The head scores a class pair (i, j), i < j, with
``m_ij = <w_p, fc2(relu(fc1([g_i; g_j])))> + b_p`` (p = the pair's index, its own weight). The
first layer splits into ``fc1([g_i; g_j]) = A g_i + B g_j + b``, so ``u = A g + b`` and
``v = B g`` are computed once per class (B x C x H) and a pair's pre-activation is
``u_i + v_j``: no (pairs x 2H) concatenation. The second layer is linear and followed by a
linear read-out, so it folds into the pair weights (``W2^T w_p``, once per step, not per image). Pseudo-labelling needs P[c, j] only for the entries
c it scores and the image's known positives j, i.e. sum_b |entries_b| x |K+_b| pairs instead of
B x C(C-1)/2. The co-occurrence loss uses all pairs (``cooc_pairs: all``) or the known-positive
pairs plus a uniform sample of the others (``cooc_pairs: sample``). ``dense: true`` computes
everything the literal way (all pairs, concatenated inputs): the reference the efficient path is
tested against, and a benchmark baseline.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mlrpl.engine import dist
from mlrpl.errors import ConfigError
from mlrpl.losses import partial_bce
from mlrpl.methods._sarl import SARLMethod, SARLMethodConfig
from mlrpl.methods._satl import SATLThresholdConfig, ScoreDistributions
from mlrpl.models.sarl import ElementWiseClassifier


# ---- config -------------------------------------------------------------------------------------
@dataclass
class TransferConfig(SARLMethodConfig):
    """Keys shared by ``sst`` and ``hst`` (under ``method:``)."""
    start_epoch: int = 5              # E0: pseudo-label losses from this epoch on
    intra_weight: float = 1.0         # weight of bce(s, y^intra)
    inter_weight: float = 1.0         # weight of bce(s, y^inter)
    cooc_weight: float = 10.0         # co-occurrence loss weight
    contrast_weight: float = 0.05     # instance contrastive loss weight
    warmup: bool = True               # ramp the two weights above over epoch 0 (step/steps)
    cooc_pairs: str = "sample"        # sample | all: pairs the co-occurrence loss uses (§11.9)
    cooc_sample: int = 512            # per image, sampled pairs that are not both known positive
    cooc_gamma_pos: float = 1.0       # asymmetric focal BCE (ASL): gamma+, gamma-, clip
    cooc_gamma_neg: float = 2.0
    cooc_clip: float = 0.05
    ist_proj_dim: Optional[int] = None    # g_c size; None: D / 2
    ist_hidden_dim: Optional[int] = None  # pair MLP width; None: D
    dense: bool = False               # literal all-pairs IST (reference / benchmark)
    pl_stats_per_class: bool = True   # per-class pseudo-label quality columns in summary.csv
    # own: the method's thresholds (SST's schedule, HST's DTL); satl: per-class thresholds from
    # the score distributions of known positives / negatives of each source (SPEC §11.11)
    thresholds: str = "own"
    satl: SATLThresholdConfig = field(default_factory=SATLThresholdConfig)


# ---- IST head -------------------------------------------------------------------------------------
def pair_index_matrix(num_classes: int) -> torch.Tensor:
    """(C, C) long: the index of pair (i, j) in the i-major order of the i < j pairs
    ((0,1), (0,2), ..., (1,2), ...), symmetric; -1 on the diagonal."""
    iu = torch.triu_indices(num_classes, num_classes, 1)
    idx = torch.full((num_classes, num_classes), -1, dtype=torch.long)
    ar = torch.arange(iu.shape[1])
    idx[iu[0], iu[1]] = ar
    idx[iu[1], iu[0]] = ar
    return idx


class CooccurrenceHead(nn.Module):
    """The IST co-occurrence head (SPEC §3): g_c = W_g F_c + b, pair MLP on [g_i; g_j]
    (Linear 2H' -> H, ReLU, Linear H -> H), then a pair-specific inner product + bias.

    Parameters are those of the literal formulation (``fc1`` acts on the concatenation), so that
    :meth:`dense_logits` (literal) and :meth:`pair_logits` (factorised) are the same function.
    """

    def __init__(self, num_classes: int, dim: int, proj_dim: Optional[int] = None,
                 hidden_dim: Optional[int] = None):
        super().__init__()
        self.num_classes = num_classes
        self.proj_dim = int(proj_dim or max(dim // 2, 1))
        self.hidden_dim = int(hidden_dim or dim)
        self.num_pairs = num_classes * (num_classes - 1) // 2
        self.proj = nn.Linear(dim, self.proj_dim)
        self.fc1 = nn.Linear(2 * self.proj_dim, self.hidden_dim)
        self.fc2 = nn.Linear(self.hidden_dim, self.hidden_dim)
        self.pairs = ElementWiseClassifier(self.num_pairs, self.hidden_dim)
        iu = torch.triu_indices(num_classes, num_classes, 1)
        # Derived from C alone: not saved with the model.
        self.register_buffer("pair_i", iu[0], persistent=False)
        self.register_buffer("pair_j", iu[1], persistent=False)
        self.register_buffer("pair_lookup", pair_index_matrix(num_classes), persistent=False)

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
        w = self.pairs.weight if p is None else self.pairs.weight[p]
        c = self.pairs.bias if p is None else self.pairs.bias[p]
        return w @ self.fc2.weight, w @ self.fc2.bias + c

    def pair_logits(self, u, v, b, i, j) -> torch.Tensor:
        """Logits m_ij of image b for the listed pairs (i < j), all (N,) long -> (N,)."""
        r = torch.relu(u[b, i] + v[b, j])
        p = self.pair_lookup[i, j]
        if p.shape[0] >= self.num_pairs:   # fold once for every pair, then look up
            w, c = self.folded()
            w, c = w[p], c[p]
        else:
            w, c = self.folded(p)
        return (r * w).sum(-1) + c

    def all_pair_logits(self, u, v) -> torch.Tensor:
        """Every pair of every image, (B, C(C-1)/2), from the factorised projections. With fc2
        folded into the pair weights, a pair costs one add, a ReLU and a dot product of size H
        (no B x pairs x H second-layer activation)."""
        w, c = self.folded()
        r = torch.relu(u[:, self.pair_i] + v[:, self.pair_j])             # (B, P, H)
        return torch.einsum("bph,ph->bp", r, w) + c

    # -- literal reference ---------------------------------------------------------------------
    def dense_logits(self, semantic: torch.Tensor) -> torch.Tensor:
        """(B, C, D) -> (B, C(C-1)/2): concatenate [g_i; g_j] for every pair, as released."""
        g = self.proj(semantic)
        x = torch.cat([g[:, self.pair_i], g[:, self.pair_j]], dim=-1)
        return self.pairs(self.fc2(torch.relu(self.fc1(x))))

    def matrix(self, pair_logits: torch.Tensor) -> torch.Tensor:
        """(B, pairs) logits -> (B, C, C) probabilities, symmetric, unit diagonal."""
        b = pair_logits.shape[0]
        c = self.num_classes
        prob = torch.sigmoid(pair_logits.float())
        P = prob.new_zeros(b, c, c)
        P = P.index_put((torch.arange(b, device=P.device)[:, None], self.pair_i[None], self.pair_j[None]),
                        prob)
        P = P + P.transpose(1, 2)
        return P + torch.eye(c, device=P.device, dtype=P.dtype)


def cooccurrence_focal(logits: torch.Tensor, target: torch.Tensor, gamma_pos: float = 1.0,
                       gamma_neg: float = 2.0, clip: float = 0.05, eps: float = 1e-8) -> torch.Tensor:
    """Element-wise asymmetric focal BCE of the co-occurrence head (SPEC §3; the released
    ``intraAsymmetricLoss``): t = 1 -> -(1-p)^gamma+ log p; t = 0 -> -p_m^gamma- log(1 - p_m),
    p_m = max(p - clip, 0). The focal weights are not detached (as released).

    >>> cooccurrence_focal(torch.tensor([0.0]), torch.tensor([1.0]))  # -(0.5) log 0.5
    tensor([0.3466])
    """
    p = torch.sigmoid(logits.float())
    t = target.float()
    p_neg = (1 - p + clip).clamp(max=1) if clip and clip > 0 else 1 - p   # = 1 - p_m
    loss_pos = -(1 - p).pow(gamma_pos) * torch.log(p.clamp(min=eps))
    loss_neg = -(1 - p_neg).pow(gamma_neg) * torch.log(p_neg.clamp(min=eps))
    return t * loss_pos + (1 - t) * loss_neg


def intra_scores(head: CooccurrenceHead, u, v, target: torch.Tensor,
                 entries: torch.Tensor) -> torch.Tensor:
    """q^intra_c = (1 / max(|K+|, 1)) sum_{j in K+} P_cj (P_cc = 1) for the entries asked for.

    Parameters
    ----------
    u, v : (B, C, H) from :meth:`CooccurrenceHead.project`
    target : (B, C) partial labels (+1 / -1 / 0)
    entries : (B, C) bool, the entries to score; the others are 0 in the result

    Only the pairs (c, j), c an asked entry and j a known positive, are evaluated.
    """
    pos = target > 0
    bsz, c = target.shape
    eye = torch.eye(c, dtype=torch.bool, device=target.device)
    sel = entries[:, :, None] & pos[:, None, :] & ~eye
    b, ci, cj = sel.nonzero(as_tuple=True)
    lo, hi = torch.minimum(ci, cj), torch.maximum(ci, cj)
    prob = torch.sigmoid(head.pair_logits(u, v, b, lo, hi).float())
    # Scatter into a (B, C, C) grid (indices are unique: deterministic), then sum over j.
    grid = u.new_zeros((bsz, c, c), dtype=torch.float32).index_put((b, ci, cj), prob)
    total = grid.sum(-1) + (entries & pos).float()
    return total / pos.sum(1, keepdim=True).clamp(min=1).float()


def intra_scores_dense(P: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The same score from a full (B, C, C) co-occurrence matrix (reference)."""
    pos = (target > 0).float()
    return (P * pos[:, None, :]).sum(-1) / pos.sum(1, keepdim=True).clamp(min=1)


class IntraImageTransfer(nn.Module):
    """The IST head with its loss and scores: one call per training step."""

    def __init__(self, cfg, num_classes: int, dim: int):
        super().__init__()
        if cfg.cooc_pairs not in ("all", "sample"):
            raise ConfigError(f"bad value for 'method.cooc_pairs': {cfg.cooc_pairs!r}; expected "
                              f"'all' or 'sample'")
        if cfg.cooc_pairs == "sample" and cfg.cooc_sample < 1:
            raise ConfigError("bad value for 'method.cooc_sample': expected a positive integer")
        self.head = CooccurrenceHead(num_classes, dim, cfg.ist_proj_dim, cfg.ist_hidden_dim)
        self.dense = bool(cfg.dense)
        self.mode = cfg.cooc_pairs
        self.sample = int(cfg.cooc_sample)
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
        t = pos[:, head.pair_i] & pos[:, head.pair_j]                      # (B, pairs)
        if self.dense:
            logits = head.dense_logits(semantic)
            loss = self._mean(cooccurrence_focal(logits, t, **self.focal), semantic)
            q = None
            if entries is not None:
                with torch.set_grad_enabled(score_grad and torch.is_grad_enabled()):
                    q = intra_scores_dense(head.matrix(logits), target) * entries
            return loss, q
        u, v = head.project(semantic)
        if self.mode == "sample" and self.sample < head.num_pairs:
            loss = self._sampled_loss(u, v, t)
        else:
            loss = self._mean(cooccurrence_focal(head.all_pair_logits(u, v), t, **self.focal),
                              semantic)
        q = None
        if entries is not None:
            with torch.set_grad_enabled(score_grad and torch.is_grad_enabled()):
                q = intra_scores(head, u, v, target, entries)
        return loss, q

    @staticmethod
    def _mean(terms, like):
        return terms.mean() if terms.numel() else like.sum() * 0.0

    def _sampled_loss(self, u, v, t):
        """Unbiased estimate of the all-pairs mean: every known-positive pair (t = 1) counts
        once; per image, m_b of its n_b other pairs are drawn uniformly without replacement and
        weighted n_b / m_b (Horvitz-Thompson), and the sum is divided by B x pairs as the
        all-pairs mean is."""
        head = self.head
        bsz, npairs = t.shape
        # Uniform sample without replacement of the t = 0 pairs: the smallest random keys, with
        # the t = 1 pairs pushed beyond every draw.
        keys = torch.rand(bsz, npairs, device=t.device)
        keys = keys.masked_fill(t, 2.0)
        m = min(self.sample, npairs)
        picked_key, picked = keys.topk(m, dim=1, largest=False)
        valid = picked_key < 1.5                                             # (B, m)
        n_neg = (~t).sum(1)
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
        return (terms * w).sum() / float(bsz * npairs) + u.sum() * 0.0


# ---- cross-image instance contrastive loss (SPEC §1) ----------------------------------------
def instance_contrastive(semantic: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-image contrastive loss on semantic features (SPEC §1; released ``ContrastiveLoss``).

    For every image pair i < j and class c, d = cos(F_ic, F_jc): both known positive -> 1 - d,
    one positive and one negative -> 1 + d, both negative -> 1 + d, any unknown -> excluded.
    With P positive-positive terms (P > 0), the neg-neg list becomes min(2P, n) random terms
    (without replacement) + the min(P, n) largest, and the same for pos-neg (duplicates between
    the two parts possible). Mean of all kept terms; 0 when none. Randomness: torch's global
    (CPU) generator, neg-neg drawn first, as released.

    semantic (B, C, D), target (B, C) -> scalar.
    """
    bsz = semantic.shape[0]
    if bsz < 2:
        return semantic.sum() * 0.0
    fn = F.normalize(semantic.float(), dim=-1, eps=1e-9)
    sims = torch.einsum("icd,jcd->ijc", fn, fn)                        # (B, B, C)
    iu = torch.triu_indices(bsz, bsz, 1, device=semantic.device)
    d = sims[iu[0], iu[1]]                                               # (pairs, C), pair-major
    ta, tb = target[iu[0]], target[iu[1]]
    pp = (ta == 1) & (tb == 1)
    pn = ((ta == 1) & (tb == -1)) | ((ta == -1) & (tb == 1))
    nn_ = (ta == -1) & (tb == -1)
    pos_terms = (1 - d)[pp]
    pn_terms = (1 + d)[pn]
    nn_terms = (1 + d)[nn_]
    n_pos = pos_terms.shape[0]
    if n_pos > 0:
        nn_terms = _hard_mine(nn_terms, n_pos)
        pn_terms = _hard_mine(pn_terms, n_pos)
    terms = torch.cat([pos_terms, pn_terms, nn_terms])
    return terms.mean() if terms.numel() else semantic.sum() * 0.0


def _hard_mine(terms: torch.Tensor, n_pos: int) -> torch.Tensor:
    n = terms.shape[0]
    if n == 0:
        return terms
    rand = torch.randperm(n)[: 2 * n_pos].to(terms.device)
    return torch.cat([terms[rand], terms.topk(min(n_pos, n)).values])


# ---- schedules -------------------------------------------------------------------------------
def sst_threshold(epoch: int, start_epoch: int, start: float = 0.95, step: float = 0.025,
                  floor: float = 0.75) -> float:
    """SST's pseudo-label threshold: ``start`` up to and at E0, lowered by ``step`` after every
    epoch from E0 on, never below ``floor`` (E0 = 5: 0.95 at epoch 5, 0.925 at 6, ..., 0.75
    from 13). A ``start`` below ``floor`` is kept as it is.

    >>> [round(sst_threshold(e, 5), 3) for e in (0, 5, 6, 12, 13, 19)]
    [0.95, 0.95, 0.925, 0.775, 0.75, 0.75]
    """
    return max(start - step * max(epoch - start_epoch, 0), min(floor, start))


def warmup_ramp(batch: dict, epoch: int, enabled: bool = True) -> float:
    """step / steps_per_epoch during epoch 0 (the released linear warm-up), 1 afterwards."""
    if not enabled or epoch > 0:
        return 1.0
    steps = batch.get("steps_per_epoch")
    if not steps:
        return 1.0
    return float(batch.get("step", 0)) / float(steps)


# ---- pseudo-label quality (SPEC §11.13) --------------------------------------------------------
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


# ---- the shared method base --------------------------------------------------------------------
class TransferMethod(SARLMethod):
    """SARL trunk + IST head + instance contrastive loss + pseudo-label quality tracking.

    Subclasses compute their pseudo-labels in ``forward`` (as boolean ``pl_<source>`` outputs)
    and their losses in ``loss``; ``after_step`` records the pseudo-labels' quality.
    """

    pl_sources = ("intra", "inter")

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.class_names = list(ctx.class_names)
        self.ist = IntraImageTransfer(cfg, ctx.num_classes, self.trunk.dim)
        self.quality = PseudoLabelQuality(self.pl_sources, self.class_names,
                                          cfg.pl_stats_per_class)
        if cfg.thresholds not in ("own", "satl"):
            raise ConfigError(f"bad value for 'method.thresholds': {cfg.thresholds!r}; expected "
                              f"'own' or 'satl'")
        # SATL thresholds in place of the method's own: positive pseudo-labels only, as the
        # method's own thresholds make (the effect of the thresholds alone).
        self.distributions = (ScoreDistributions(cfg.satl, self.pl_sources, ctx.num_classes,
                                                 ctx.partial_labels)
                              if cfg.thresholds == "satl" else None)

    @property
    def uses_satl(self) -> bool:
        return self.distributions is not None

    def on_epoch_start(self, trainer, epoch):
        if self.uses_satl:
            self.distributions.snapshot_at_start(epoch, self.cfg.start_epoch)

    def track_intra(self, q_intra: torch.Tensor, target: torch.Tensor) -> None:
        """Add the batch's intra-image scores of known entries to the SATL distributions, each
        known positive scored as if it were unknown (leave-one-out: without its own P_cc = 1)."""
        loo, valid = leave_one_out_intra(q_intra.detach(), target)
        self.distributions.update("intra", loo, target, valid)

    def satl_positives(self, source: str, scores: torch.Tensor, target: torch.Tensor):
        return self.distributions.pseudo_labels(source, scores, target)[0]

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
            return zero_like_loss(outputs["logits"])
        target = torch.where(outputs[key], torch.ones_like(batch["target"]), batch["target"])
        return partial_bce(outputs["logits"], target)

    def after_step(self, outputs, batch, epoch):
        for s in self.pl_sources:
            if f"pl_{s}" in outputs:
                self.quality.update(s, outputs[f"pl_{s}"], batch["target"], batch.get("full"))

    def epoch_stats(self) -> dict[str, float]:
        device = next(self.parameters()).device
        stats = self.quality.compute(device)
        self.quality.reset()
        if self.uses_satl:
            stats.update(self.distributions.stats())
        return stats


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


def cosine_to_mean(semantic: torch.Tensor, refs: torch.Tensor, weight: torch.Tensor,
                   denom: torch.Tensor) -> torch.Tensor:
    """sum_k weight_ck cos(F_bc, r_ck) / denom_c for every (b, c), in O(B C D):
    cos is bilinear in the normalised vectors, so the sum over k moves inside.

    semantic (B, C, D), refs (C, K, D), weight (C, K), denom (C,) -> (B, C)."""
    fn = F.normalize(semantic.float(), dim=-1, eps=1e-9)
    rn = F.normalize(refs.float(), dim=-1, eps=1e-9)
    mean_ref = (rn * weight[..., None].float()).sum(1) / denom[:, None].float()
    return (fn * mean_ref[None]).sum(-1)


def zero_like_loss(logits: torch.Tensor) -> torch.Tensor:
    """A zero loss term (a term that is off in this epoch keeps its column in summary.csv)."""
    return logits.new_zeros((), dtype=torch.float32)


__all__ = ["TransferConfig", "CooccurrenceHead", "IntraImageTransfer", "cooccurrence_focal",
           "intra_scores", "intra_scores_dense", "instance_contrastive", "sst_threshold",
           "warmup_ramp", "PseudoLabelQuality", "TransferMethod", "cosine_to_mean",
           "pair_index_matrix", "zero_like_loss", "leave_one_out_intra"]
