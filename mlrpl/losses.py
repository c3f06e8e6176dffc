"""Losses on partial labels, written once for every method.

Targets use the internal encoding: +1 known positive, -1 known negative, 0 unknown (ignored).
Every loss computes in fp32, whatever the precision of the logits, and returns a tensor with a
gradient graph even when it has nothing to count (0), so that every process of a data-parallel
run takes part in the same backward.

===============================  ==========================  =====================================
loss                             shapes                      used by
===============================  ==========================  =====================================
:func:`partial_bce`              (B, C), (B, C) -> ()        every method
:func:`soft_partial_bce`         (B, C), (B, C), (B, C)      blending with soft targets (SARB/DSRB)
:func:`asymmetric_loss`          (B, C), (B, C) -> ()        CLSL (known labels)
:func:`soft_asymmetric_loss`     (B, C), (B, C) -> ()        CLSL (recovered soft targets)
:func:`cooccurrence_focal`       (...), (...) -> (...)       SST/HST co-occurrence head
:func:`instance_contrastive`     (B, C, D), (B, C) -> ()     SST/HST/SARB/DSRB cross-image term
:func:`ranking_loss`             (B, C), (B, C) -> ()        SATL, the ``ranking`` plug-in
===============================  ==========================  =====================================

The equations: docs/methods/README.md#shared-losses (partial BCE, instance contrastive loss),
docs/methods/sarb.md#equations (soft partial BCE), docs/methods/clsl.md#equations (ASL),
docs/methods/sst.md#equations (co-occurrence loss), docs/methods/satl.md#equations (ranking).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def partial_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over known entries only (the HCP ``BCELoss``;
    docs/methods/README.md#partial-bce).

    Parameters
    ----------
    logits : (B, C) float
    targets : (B, C) with +1 known positive, -1 known negative, 0 unknown (ignored);
        soft positive targets t in (0, 1] are allowed (the term is then
        -[t log σ(s) + (1 - t) log(1 - σ(s))]).

    The normalisation is the number of known entries in the batch; a batch without any known entry
    gives 0 (with a gradient graph, so that every rank of a data-parallel run takes a step).

    >>> partial_bce(torch.tensor([[0.0, 5.0]]), torch.tensor([[1, 0]]))
    tensor(0.6931)
    """
    logits = logits.float()
    targets = targets.to(logits.dtype)
    known = targets != 0
    prob_target = targets.clamp(min=0)  # -1 -> 0, soft positives kept
    loss = F.binary_cross_entropy_with_logits(logits, prob_target, reduction="none")
    loss = loss * known
    return loss.sum() / known.sum().clamp(min=1)


def soft_partial_bce(logits: torch.Tensor, soft_targets: torch.Tensor,
                     weight: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy against soft targets in [0, 1] on the entries ``weight`` selects.

    Parameters
    ----------
    logits : (B, C) float
    soft_targets : (B, C) float in [0, 1]
    weight : (B, C) bool or float >= 0, the entries that count (0: ignored)

    Returns the weighted mean, ``sum(w * bce) / max(sum(w), 1)`` (0 with a graph when nothing
    counts).

    >>> soft_partial_bce(torch.tensor([[0.0, 3.0]]), torch.tensor([[0.5, 1.0]]),
    ...                  torch.tensor([[True, False]]))  # ln 2: the target 0.5 at p = 0.5
    tensor(0.6931)
    """
    logits = logits.float()
    w = weight.to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, soft_targets.to(logits.dtype),
                                              reduction="none")
    return (loss * w).sum() / w.sum().clamp(min=1)


def asymmetric_loss_elements(logits: torch.Tensor, t: torch.Tensor, gamma_pos: float = 0.0,
                             gamma_neg: float = 4.0, clip: float = 0.05, eps: float = 1e-8,
                             focal: str = "parts", detach_focal: bool = False,
                             clip_form: str = "prob") -> torch.Tensor:
    """Element-wise asymmetric loss (ASL, Ridnik et al. 2021) against targets t in [0, 1].

    With p = σ(s), the shifted probability p_m = max(p − clip, 0) and the cross-entropy parts
    L⁺ = −log max(p, eps), L⁻ = −log max(1 − p_m, eps):

    - ``focal="parts"``: t · (1 − p)^γ⁺ · L⁺ + (1 − t) · p_m^γ⁻ · L⁻ (each part its own weight);
    - ``focal="joint"``: (t · L⁺ + (1 − t) · L⁻) · (1 − p_t)^(γ⁺ t + γ⁻ (1 − t)) with
      p_t = t · p + (1 − t) · (1 − p_m): the ASL authors' ``AsymmetricLossOptimized``, which CLSL's
      released code uses, soft targets included (docs/methods/clsl.md#equations).

    The two forms are equal for hard targets (t ∈ {0, 1}). ``detach_focal``: the focal weights
    carry no gradient (the authors' ``disable_torch_grad_focal_loss``).

    ``clip_form``: how the shifted pair (p_m, 1 − p_m) is computed. ``"prob"``: p_m = max(p − clip,
    0), then 1 − p_m; ``"complement"``: 1 − p_m = min(1 − p + clip, 1), then p_m = 1 − (1 − p_m),
    as the ASL authors' code (``xs_neg``) and the released ``intraAsymmetricLoss`` compute it.
    The two are equal in exact arithmetic and round differently in floating point; each caller
    keeps the form its numbers were computed with.

    >>> asymmetric_loss_elements(torch.tensor([0.0]), torch.tensor([1.0]))  # -log 0.5
    tensor([0.6931])
    """
    logits = logits.float()
    t = t.to(logits.dtype)
    p = torch.sigmoid(logits)
    if clip_form == "prob":
        p_m, q_m = (p - clip).clamp(min=0) if clip and clip > 0 else p, None   # q_m: 1 - p_m
    elif clip_form == "complement":
        q_m = (1 - p + clip).clamp(max=1) if clip and clip > 0 else 1 - p
        if focal == "parts" and not detach_focal:
            # The released intraAsymmetricLoss's own order of operations: the same values, but
            # the gradients reach p in another order, whose round-off the recorded SST/HST
            # numbers were made with.
            loss_pos = -(1 - p).pow(gamma_pos) * torch.log(p.clamp(min=eps))
            loss_neg = -(1 - q_m).pow(gamma_neg) * torch.log(q_m.clamp(min=eps))
            return t * loss_pos + (1 - t) * loss_neg
        p_m = 1 - q_m
    else:
        raise ValueError(f"unknown clip form {clip_form!r}; expected 'prob' or 'complement'")
    loss_pos = -torch.log(p.clamp(min=eps))
    loss_neg = -torch.log((1 - p_m if q_m is None else q_m).clamp(min=eps))
    if focal == "joint":
        loss = t * loss_pos + (1 - t) * loss_neg
        if gamma_pos or gamma_neg:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_focal):
                p_t = t * p + (1 - t) * (1 - p_m if q_m is None else q_m)
                w = (1 - p_t).pow(gamma_pos * t + gamma_neg * (1 - t))
            loss = loss * w
        return loss
    if focal != "parts":
        raise ValueError(f"unknown focal form {focal!r}; expected 'parts' or 'joint'")
    with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_focal):
        w_pos = (1 - p).pow(gamma_pos) if gamma_pos else None
        w_neg = p_m.pow(gamma_neg) if gamma_neg else None
    if w_pos is not None:
        loss_pos = loss_pos * w_pos
    if w_neg is not None:
        loss_neg = loss_neg * w_neg
    return t * loss_pos + (1 - t) * loss_neg


def _reduce(loss: torch.Tensor, weight: torch.Tensor, reduction: str) -> torch.Tensor:
    loss = loss * weight
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / weight.sum().clamp(min=1)
    raise ValueError(f"unknown reduction {reduction!r}; expected 'mean' or 'sum'")


def asymmetric_loss(logits: torch.Tensor, targets: torch.Tensor, gamma_pos: float = 0.0,
                    gamma_neg: float = 4.0, clip: float = 0.05, eps: float = 1e-8,
                    reduction: str = "mean", focal: str = "parts",
                    detach_focal: bool = False) -> torch.Tensor:
    """Asymmetric loss (ASL, Ridnik et al. 2021) on the known entries of partial labels.

    With p = σ(s) and the shifted probability p_m = max(p − clip, 0):
    a positive costs −(1 − p)^γ⁺ log p, a negative −p_m^γ⁻ log(1 − p_m); unknown entries cost 0.
    Soft positive targets t in (0, 1] weigh the two parts as t and 1 − t
    (:func:`asymmetric_loss_elements` gives the element-wise terms and the focal forms).

    Parameters
    ----------
    logits : (B, C) float
    targets : (B, C) +1 / -1 / 0 (unknown), or soft positives in (0, 1]
    reduction : ``mean`` (over known entries, the library's convention) or ``sum`` (the ASL
        authors' code, which CLSL's released recipe scales by 1000)
    focal, detach_focal : see :func:`asymmetric_loss_elements`

    >>> asymmetric_loss(torch.tensor([[0.0]]), torch.tensor([[1]]), gamma_pos=0.0)  # -log 0.5
    tensor(0.6931)
    """
    logits = logits.float()
    t = targets.to(logits.dtype)
    known = (t != 0).to(logits.dtype)
    loss = asymmetric_loss_elements(logits, t.clamp(min=0), gamma_pos, gamma_neg, clip, eps,
                                    focal, detach_focal)
    return _reduce(loss, known, reduction)


def soft_asymmetric_loss(logits: torch.Tensor, soft_targets: torch.Tensor,
                         weight: torch.Tensor | None = None, gamma_pos: float = 0.0,
                         gamma_neg: float = 4.0, clip: float = 0.05, eps: float = 1e-8,
                         reduction: str = "mean", focal: str = "parts",
                         detach_focal: bool = False) -> torch.Tensor:
    """ASL against soft targets in [0, 1] on the entries ``weight`` selects (every entry when
    None): a target of 0 is a negative here, not an unknown (CLSL's recovered labels,
    docs/methods/clsl.md#equations).

    ``reduction="mean"`` divides by ``sum(weight)`` (B·C when every entry counts), ``sum`` does
    not divide.

    >>> soft_asymmetric_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]]),
    ...                      gamma_neg=0.0, clip=0.0)                        # ln 2 twice, mean
    tensor(0.6931)
    """
    logits = logits.float()
    w = torch.ones_like(logits) if weight is None else weight.to(logits.dtype)
    loss = asymmetric_loss_elements(logits, soft_targets, gamma_pos, gamma_neg, clip, eps, focal,
                                    detach_focal)
    return _reduce(loss, w, reduction)


def cooccurrence_focal(logits: torch.Tensor, target: torch.Tensor, gamma_pos: float = 1.0,
                       gamma_neg: float = 2.0, clip: float = 0.05, eps: float = 1e-8) -> torch.Tensor:
    """Element-wise asymmetric focal BCE of the co-occurrence head (the released
    ``intraAsymmetricLoss``; docs/methods/sst.md#equations): t = 1 -> -(1-p)^gamma+ log p;
    t = 0 -> -p_m^gamma- log(1 - p_m), p_m = max(p - clip, 0). The focal weights are not detached
    (as released). It is :func:`asymmetric_loss_elements` with these defaults and
    ``clip_form="complement"`` (1 - p_m computed as the released code does).

    >>> cooccurrence_focal(torch.tensor([0.0]), torch.tensor([1.0]))  # -(0.5) log 0.5
    tensor([0.3466])
    """
    return asymmetric_loss_elements(logits, target, gamma_pos, gamma_neg, clip, eps,
                                    clip_form="complement")


def instance_contrastive(semantic: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-image contrastive loss on semantic features (released ``ContrastiveLoss``;
    docs/methods/README.md#instance-contrastive-loss).

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


def ranking_loss(logits: torch.Tensor, target: torch.Tensor, margin: float = 0.0,
                 temperature: float = 1.0) -> torch.Tensor:
    """Differentiable per-class ranking loss over the batch.

    For each class c with at least one (positive i, negative j) pair among the batch's labels
    (``target`` +1 / -1 / 0), the mean over its pairs of softplus((s_jc - s_ic + m) / T); the loss
    is the mean over those classes (0, with a graph, when no class has a pair).

    >>> ranking_loss(torch.tensor([[2.0], [0.0]]), torch.tensor([[1], [-1]]))  # softplus(-2)
    tensor(0.1269)
    """
    s = logits.float()
    pos, neg = (target > 0).float(), (target < 0).float()
    # (B_i, B_j, C): pairs i positive, j negative, per class.
    diff = (s[None, :, :] - s[:, None, :] + float(margin)) / float(temperature)
    weight = pos[:, None, :] * neg[None, :, :]
    pairs = weight.sum((0, 1))                                              # (C,)
    per_class = (F.softplus(diff) * weight).sum((0, 1)) / pairs.clamp(min=1)
    has = pairs > 0
    if not bool(has.any()):
        return s.sum() * 0.0
    return per_class[has].mean()


def zero_loss(logits: torch.Tensor) -> torch.Tensor:
    """A zero loss term (a term that is off in this epoch keeps its column in summary.csv)."""
    return logits.new_zeros((), dtype=torch.float32)


def warmup_ramp(batch: dict, epoch: int, enabled: bool = True) -> float:
    """The weight ramp of the co-occurrence and contrastive terms: step / steps_per_epoch during
    epoch 0 (the released linear warm-up), 1 afterwards."""
    if not enabled or epoch > 0:
        return 1.0
    steps = batch.get("steps_per_epoch")
    if not steps:
        return 1.0
    return float(batch.get("step", 0)) / float(steps)
