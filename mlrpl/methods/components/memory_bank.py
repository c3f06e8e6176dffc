"""SST's cross-image memory bank (docs/methods/sst.md#equations): per class, a FIFO of the most
recent semantic features of known positives."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlrpl.utils import dist
from mlrpl.methods.components.prototypes import cosine_to, mean_direction


class MemoryBank(nn.Module):
    """Per-class FIFO bank of the E most recent detached semantic features of known positives.

    Stored as a ring per class: ``features`` (C, E, D), ``head`` (C,) the slot of the newest
    entry, ``count`` (C,) the filled slots (all buffers: saved, so resume is exact). The
    newest-first order is the released code's ``cat((batch items in batch order, bank))[:E]``:
    within a batch, earlier images come first; if a batch holds more than E positives of a class,
    the first E are kept.

    Every process pushes the same gathered features in the same order, so every process holds the
    same bank without being sent rank 0's: DDP leaves its buffers alone (``synced_by_itself``;
    broadcasting C x E x D floats before every forward cost 33 MB at C = 80, D = 1024, and the
    cached class means with it).
    """

    synced_by_itself = True

    def __init__(self, num_classes: int, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError("the memory bank needs at least one slot per class")
        self.size = size
        self.register_buffer("features", torch.zeros(num_classes, size, dim))
        self.register_buffer("head", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))
        self._means: torch.Tensor | None = None   # (C, D), see :meth:`means`
        self._means_key: tuple | None = None

    @torch.no_grad()
    def update(self, semantic: torch.Tensor, target: torch.Tensor) -> None:
        """Push the known positives of a batch: semantic (B, C, D), target (B, C).

        Under DDP the batch's known-positive features of every process are gathered first (in
        rank order), so that every process's bank is the same. Called from ``update_state``."""
        b, c = (target > 0).nonzero(as_tuple=True)
        feats = semantic.detach()[b, c].float()
        if dist.is_dist():
            feats, c = dist.all_gather_varlen(feats), dist.all_gather_varlen(c)
        if c.numel() == 0:
            return
        fresh = self._means_key == self._key()
        touched, rows, head, count = self._push(feats, c)
        self.features[touched] = rows
        self.head.copy_(head)
        self.count.copy_(count)
        if fresh:   # only the pushed classes' means change
            self._means[touched] = class_means(rows)
        else:
            self._means = class_means(self.features)
        self._means_key = self._key()

    def _push(self, feats: torch.Tensor, c: torch.Tensor):
        """Push ``feats`` (N, D) of classes ``c`` (N,), N >= 1 -> (touched classes (n,), their
        rows after the push (n, E, D), head (C,), count (C,)), new tensors: the bank is not
        changed. Work and memory: O(n E D) for the n classes pushed to, not O(C E D)."""
        features, head, count = self.features, self.head, self.count
        e = features.shape[1]
        touched, local = torch.unique(c, return_inverse=True)       # sorted classes, (N,) -> n
        onehot = F.one_hot(local, touched.shape[0])
        rank = (onehot.cumsum(0) - 1).gather(1, local[:, None]).squeeze(1)   # order within class
        n = torch.zeros_like(count).index_add_(0, touched, onehot.sum(0))
        new_head = (head - n) % e
        keep = rank < e
        slot = (new_head[c] + rank) % e
        rows = features[touched]
        rows[local[keep], slot[keep]] = feats[keep].to(features.dtype)
        return touched, rows, new_head, (count + n).clamp(max=e)

    def ordered(self, c: int) -> torch.Tensor:
        """The filled entries of class c, newest first: (count_c, D)."""
        e = self.features.shape[1]
        k = int(self.count[c])
        slots = (self.head[c] + torch.arange(k, device=self.head.device)) % e
        return self.features[c, slots]

    def _key(self) -> tuple:
        """What the cached class means were computed from: the bank tensor and its version
        (any in-place change of it, loading a checkpoint included, makes them stale)."""
        return self.features.data_ptr(), self.features._version, self.features.device

    @torch.no_grad()
    def means(self) -> torch.Tensor:
        """(C, D): per class, the mean over all E slots of the normalised entries (empty slots
        count 0). :meth:`update` keeps them (patching the classes it pushes to); when the bank
        changed since (loaded, written to, never pushed to), they are computed afresh and not
        kept: scoring changes no state."""
        if self._means_key == self._key():
            return self._means
        return class_means(self.features)

    @torch.no_grad()
    def scores(self, semantic: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """q^inter (B, C): the mean over all E slots of cos(F_c, bank_c,e); empty (zero) slots
        contribute 0, as released. With ``target`` (B, C): against the bank with the known
        positives of this batch (``semantic`` (B, C, D)) pushed, a preview (the bank itself is
        not changed) that recomputes the means of the classes pushed to only."""
        means = self.means()
        if target is not None:
            b, c = (target > 0).nonzero(as_tuple=True)
            if c.numel():
                touched, rows, _, _ = self._push(semantic.detach()[b, c].float(), c)
                means = means.clone()
                means[touched] = class_means(rows)
        return cosine_to(semantic, means)


def class_means(features: torch.Tensor, chunk: int = 2 ** 22) -> torch.Tensor:
    """(n, E, D) bank rows -> (n, D): the mean over the E slots of the normalised entries (a
    zero slot stays 0; :func:`~mlrpl.methods.components.prototypes.mean_direction` with unit
    weights); a few rows at a time (about ``chunk`` values), so that the whole bank is never
    normalised at once."""
    e, d = features.shape[1:]
    rows = max(1, chunk // (e * d))
    return torch.cat([mean_direction(part, part.new_ones(part.shape[:2]),
                                     part.new_full(part.shape[:1], float(e)))
                      for part in features.split(rows)])
