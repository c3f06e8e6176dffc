"""Class prototypes: per class, K-means centres of the semantic features of the known positives of
the whole training set, recomputed by a pass over the data in evaluation mode. One implementation
for HST, SARB and DSRB (docs/methods/hst.md#equations, "Prototypes"; docs/methods/hst.md D3-D4).
DSRB's location-aware ones: :mod:`mlrpl.methods.components.quadrant_prototypes`."""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlrpl.utils import dist, faults
from mlrpl.utils.progress import progress


def recompute_due(epoch: int, last: int, start_epoch: int, interval: int) -> bool:
    """Whether prototypes are (re)computed before ``epoch``: at E0 = ``start_epoch`` and every
    ``interval`` epochs after (``interval`` <= 0: only at E0), unless ``last``, the epoch they were
    last computed at, is this one already (a resumed run)."""
    if epoch < start_epoch or epoch == last:
        return False
    return epoch == start_epoch if interval <= 0 else (epoch - start_epoch) % interval == 0


def kmeans_seed(seed: int, epoch: int) -> int:
    """The K-means random_state of a prototype pass: from the experiment seed and the epoch."""
    return int((int(seed) * 1_000_003 + int(epoch) * 7919) % 2**32)


def class_slices(classes: np.ndarray, num_classes: int):
    """Rows of each class, grouped once: (order, bounds) with ``order[bounds[c]:bounds[c + 1]]``
    the rows of class c in their original order (a stable sort: O(N log N) once, instead of a
    pass over all N rows per class)."""
    classes = np.asarray(classes)
    order = np.argsort(classes, kind="stable")
    bounds = np.searchsorted(classes[order], np.arange(num_classes + 1), side="left")
    return order, bounds


def kmeans_prototypes(features: np.ndarray, classes: np.ndarray, num_classes: int, k: int,
                      random_state: int, n_init: int = 10, show_progress=None):
    """Per-class K-means centres of known-positive features.

    Parameters
    ----------
    features : (N, D) float, classes : (N,) int -- one row per known-positive (image, class)
    k : clusters per class; a class with n < k features gets n clusters, one with none gets none

    Each class's K-means runs on one OpenMP thread: scikit-learn's Lloyd iterations split the
    rows into chunks of 256 over its threads, and on the small per-class problems the threads
    cost far more than they share (on two busy cores, ten to twenty times the single-threaded
    time). A class with at most 256 rows gets the same centres whatever the thread count (one
    chunk); a larger one used to depend on the machine's thread count (the order the chunks'
    sums are added in), and is now the same on every machine.

    Returns
    -------
    prototypes (C, k, D) float32 tensor (zero rows where invalid), valid (C, k) bool tensor
    """
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits
    features = np.asarray(features, dtype=np.float32)
    classes = np.asarray(classes)
    dim = features.shape[1] if features.ndim == 2 else 0
    protos = np.zeros((num_classes, k, dim), dtype=np.float32)
    valid = np.zeros((num_classes, k), dtype=bool)
    order, bounds = class_slices(classes, num_classes)
    with threadpool_limits(limits=1, user_api="openmp"):
        for c in progress(range(num_classes), desc="k-means per class", enable=show_progress):
            if bounds[c + 1] == bounds[c]:
                continue
            x = features[order[bounds[c]:bounds[c + 1]]]
            n_clusters = min(k, len(x))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # duplicate points
                km = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=random_state).fit(x)
            protos[c, :n_clusters] = km.cluster_centers_
            valid[c, :n_clusters] = True
    return torch.from_numpy(protos), torch.from_numpy(valid)


@torch.no_grad()
def collect_positive_features(ctx, key="semantic") -> tuple[torch.Tensor, torch.Tensor]:
    """The per-class feature ``outputs[key][b, c]`` of every known-positive (image, class) of the
    training set, the model in evaluation mode, in dataset order (image, then class) whatever the
    number of processes. ``key`` may be a tuple of keys: their per-class values ((B, C, d) or
    (B, C)) are taken at the known positives only and put side by side, (N, Σ d).

    ``ctx`` is the :class:`~mlrpl.methods.base.EpochContext`: under DDP each process runs its
    shard; the pairs are all-gathered and the sampler's padding duplicates removed. Returns CPU
    tensors (features (N, D) float32, classes (N,) long)."""
    keys = (key,) if isinstance(key, str) else tuple(key)
    idx, cls, feats = [], [], []
    device = None
    for batch, outputs in ctx.eval_batches("prototype features"):
        device = outputs[keys[0]].device
        b, c = (batch["target"] > 0).nonzero(as_tuple=True)
        idx.append(batch["index"].long()[b].cpu())
        cls.append(c.cpu())
        parts = [outputs[k][b, c].float() for k in keys]
        feats.append((parts[0] if len(parts) == 1 else
                      torch.cat([p.reshape(len(b), -1) for p in parts], 1)).cpu())
    dim = feats[0].shape[1] if feats else 0
    index = torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long)
    classes = torch.cat(cls) if cls else torch.zeros(0, dtype=torch.long)
    features = torch.cat(feats) if feats else torch.zeros(0, dim)
    if dist.is_dist():
        index = dist.all_gather_varlen(index.to(device)).cpu()
        classes = dist.all_gather_varlen(classes.to(device)).cpu()
        features = dist.all_gather_varlen(features.to(device)).cpu()
    num_classes = int(ctx.partial_labels.shape[1])
    key_ = index * num_classes + classes
    _, first = np.unique(key_.numpy(), return_index=True)       # sorted by (image, class)
    if len(first) == len(key_) and bool((first == np.arange(len(first))).all()):
        return features, classes       # already in order, no duplicate: no copy
    first = torch.from_numpy(first)
    return features[first], classes[first]


class Prototypes(nn.Module):
    """K prototypes per class, in buffers (saved with the model): ``centres`` (C, K, D),
    ``valid`` (C, K) bool (a class with n < K known positives has n), ``epoch`` (the epoch they
    were computed at, -1 before)."""

    def __init__(self, num_classes: int, k: int, dim: int):
        super().__init__()
        self.register_buffer("centres", torch.zeros(num_classes, k, dim))
        self.register_buffer("valid", torch.zeros(num_classes, k, dtype=torch.bool))
        self.register_buffer("epoch", torch.tensor(-1, dtype=torch.long))

    @property
    def any(self) -> torch.Tensor:
        """(C,) bool: classes that have a prototype."""
        return self.valid.any(1)

    @torch.no_grad()
    def recompute(self, ctx, n_init: int = 10, key: str = "semantic") -> int:
        """K-means over the known positives' features of the whole training set (one K-means on
        the main process, seeded by the experiment seed and the epoch, the same prototypes on
        every process). Returns the number of features clustered."""
        feats, classes = collect_positive_features(ctx, key)
        faults.point("prototypes")  # the fault suite kills here, mid-recomputation
        feats = feats.reshape(-1, self.centres.shape[-1])
        num_classes, k = self.valid.shape
        if dist.is_main():
            centres, valid = kmeans_prototypes(feats.numpy(), classes.numpy(), num_classes, k,
                                               kmeans_seed(ctx.seed, ctx.epoch), int(n_init),
                                               show_progress=ctx.show_progress)
            centres, valid = centres.to(self.centres.device), valid.to(self.valid.device)
        else:
            centres, valid = torch.zeros_like(self.centres), torch.zeros_like(self.valid)
        if dist.is_dist():
            torch.distributed.broadcast(centres, src=0)
            torch.distributed.broadcast(valid, src=0)
        self.centres.copy_(centres)
        self.valid.copy_(valid)
        self.epoch.fill_(int(ctx.epoch))
        return len(classes)

    def scores(self, semantic: torch.Tensor) -> torch.Tensor:
        """g (B, C): mean over the class's valid prototypes of cos(F_c, p_ck); 0 without any."""
        valid = self.valid
        return cosine_to_mean(semantic, self.centres, valid, valid.sum(1).clamp(min=1))


def cosine_to_mean(semantic: torch.Tensor, refs: torch.Tensor, weight: torch.Tensor,
                   denom: torch.Tensor) -> torch.Tensor:
    """sum_k weight_ck cos(F_bc, r_ck) / denom_c for every (b, c), in O(B C D):
    cos is bilinear in the normalised vectors, so the sum over k moves inside.

    semantic (B, C, D), refs (C, K, D), weight (C, K), denom (C,) -> (B, C)."""
    return cosine_to(semantic, mean_direction(refs, weight, denom))


def mean_direction(refs: torch.Tensor, weight: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """sum_k weight_ck r_ck / |r_ck| / denom_c: refs (C, K, D), weight (C, K), denom (C,) -> (C, D)
    (a zero reference stays 0)."""
    rn = F.normalize(refs.float(), dim=-1, eps=1e-9)
    return (rn * weight[..., None].float()).sum(1) / denom[:, None].float()


def cosine_to(semantic: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """<F_bc / |F_bc|, mean_c>: semantic (B, C, D), mean (C, D) from :func:`mean_direction` ->
    (B, C)."""
    fn = F.normalize(semantic.float(), dim=-1, eps=1e-9)
    return (fn * mean[None]).sum(-1)
