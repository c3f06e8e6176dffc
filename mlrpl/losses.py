"""Losses on partial labels. Targets use the internal encoding: +1 / -1 / 0 (unknown, ignored).

All losses compute in fp32, whatever the precision of the logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def partial_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over known entries only (SPEC §1, the HCP ``BCELoss``).

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
