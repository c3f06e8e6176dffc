"""SST's cross-image memory bank (docs/methods/sst.md#equations): per class, a FIFO of the most
recent semantic features of known positives."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlrpl.utils import dist
from mlrpl.methods.components.prototypes import cosine_to_mean


class MemoryBank(nn.Module):
    """Per-class FIFO bank of the E most recent detached semantic features of known positives.

    Stored as a ring per class: ``features`` (C, E, D), ``head`` (C,) the slot of the newest
    entry, ``count`` (C,) the filled slots (all buffers: saved, so resume is exact). The
    newest-first order is the released code's ``cat((batch items in batch order, bank))[:E]``:
    within a batch, earlier images come first; if a batch holds more than E positives of a class,
    the first E are kept.
    """

    def __init__(self, num_classes: int, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError("the memory bank needs at least one slot per class")
        self.size = size
        self.register_buffer("features", torch.zeros(num_classes, size, dim))
        self.register_buffer("head", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def pushed(self, semantic: torch.Tensor, target: torch.Tensor):
        """(features, head, count) after pushing the known positives of a batch (semantic
        (B, C, D), target (B, C)), as new tensors: the bank itself is not changed."""
        b, c = (target > 0).nonzero(as_tuple=True)          # image-major: batch order per class
        return self._push(semantic.detach()[b, c].float(), c)

    def _push(self, feats: torch.Tensor, c: torch.Tensor):
        features, head, count = self.features, self.head, self.count
        if c.numel() == 0:
            return features, head, count
        num_classes, e = features.shape[:2]
        onehot = F.one_hot(c, num_classes)
        rank = (onehot.cumsum(0) - 1).gather(1, c[:, None]).squeeze(1)   # order within class
        n = onehot.sum(0)
        new_head = (head - n) % e
        keep = rank < e
        slot = (new_head[c] + rank) % e
        features = features.clone()
        features[c[keep], slot[keep]] = feats[keep].to(features.dtype)
        return features, new_head, (count + n).clamp(max=e)

    @torch.no_grad()
    def update(self, semantic: torch.Tensor, target: torch.Tensor) -> None:
        """Push the known positives of a batch: semantic (B, C, D), target (B, C).

        Under DDP the batch's known-positive features of every process are gathered first (in
        rank order), so that every process's bank is the same. Called from ``update_state``."""
        b, c = (target > 0).nonzero(as_tuple=True)
        feats = semantic.detach()[b, c].float()
        if dist.is_dist():
            feats, c = dist.all_gather_varlen(feats), dist.all_gather_varlen(c)
        features, head, count = self._push(feats, c)
        self.features.copy_(features)
        self.head.copy_(head)
        self.count.copy_(count)

    def ordered(self, c: int) -> torch.Tensor:
        """The filled entries of class c, newest first: (count_c, D)."""
        e = self.features.shape[1]
        k = int(self.count[c])
        slots = (self.head[c] + torch.arange(k, device=self.head.device)) % e
        return self.features[c, slots]

    def scores(self, semantic: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """q^inter (B, C): the mean over all E slots of cos(F_c, bank_c,e); empty (zero) slots
        contribute 0, as released. ``features``: a bank from :meth:`pushed` instead of this one."""
        features = self.features if features is None else features
        c, e = features.shape[:2]
        weight = torch.ones(c, e, device=semantic.device)
        return cosine_to_mean(semantic, features, weight,
                              torch.full((c,), float(e), device=semantic.device))
