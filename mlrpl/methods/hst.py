"""``hst``: Heterogeneous Semantic Transfer (Chen et al., IJCV 2024; SPEC §4).

SST's trunk and IST head, with two changes:

* CST uses class **prototypes**: at epoch E0 and every ``prototype_interval`` epochs after, the
  model runs in eval mode over the whole training set, the semantic feature of every known
  positive (image, class) is collected, and K-means (K = 10) per class gives the prototypes
  p_ck; q^inter_c = mean_k cos(F_c, p_ck). A prototype contrastive loss pulls known positives
  towards their class's prototypes and pushes known negatives away (SPEC §11.6).
* **Differential threshold learning** (DTL): two learnable scalar thresholds θ_intra, θ_inter;
  ŝ = clip(q − θ, 0, 1); an unknown entry is pseudo-positive where ŝ > 0 (q > θ); ŝ is also
  scored as a logit against the known labels (partial BCE), which moves θ (and the head or the
  features). Thresholds start at 0.95 and are not weight-decayed (SPEC §11.7).

``reference_quirks: true`` gives the released behaviour: thresholds start at 1.0 and are decayed
by the optimiser's L2 term; the prototype loss is the released mean over all entries of
1 + y·g (which pushes known positives away from their prototypes).

Loss: bce(s, y) + [ep >= E0](bce(s, y^intra) + bce(s, y^inter) + 0.1 L_dtl^intra
+ 0.1 L_dtl^inter + 0.05 L_proto) + 10 L_co + 0.05 L_contrast. Inference: σ(s).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from mlrpl.engine import dist
from mlrpl.losses import partial_bce
from mlrpl.methods import register_method
from mlrpl.methods._transfer import (TransferConfig, TransferMethod, cosine_to_mean,
                                     instance_contrastive, zero_like_loss)
from mlrpl.progress import progress

log = logging.getLogger("mlrpl")


@dataclass
class HSTConfig(TransferConfig):
    name: str = "hst"
    prototype_interval: int = 5       # recompute at E0, E0 + interval, ... (0: only at E0)
    num_prototypes: int = 10          # K per class (fewer when a class has fewer positives)
    kmeans_n_init: int = 10           # K-means restarts (scikit-learn's former default)
    threshold_init: Optional[float] = None   # None: 0.95 (1.0 with reference_quirks)
    dtl_weight: float = 0.1           # weight of each of L_dtl^intra, L_dtl^inter
    prototype_weight: float = 0.05    # weight of the prototype contrastive loss
    reference_quirks: bool = False    # released init/decay of the thresholds, released proto sign


def kmeans_seed(seed: int, epoch: int) -> int:
    """The K-means random_state of a prototype pass: from the experiment seed and the epoch."""
    return int((int(seed) * 1_000_003 + int(epoch) * 7919) % 2**32)


def kmeans_prototypes(features: np.ndarray, classes: np.ndarray, num_classes: int, k: int,
                      random_state: int, n_init: int = 10, show_progress=None):
    """Per-class K-means centres of known-positive features.

    Parameters
    ----------
    features : (N, D) float, classes : (N,) int -- one row per known-positive (image, class)
    k : clusters per class; a class with n < k features gets n clusters, one with none gets none

    Returns
    -------
    prototypes (C, k, D) float32 tensor (zero rows where invalid), valid (C, k) bool tensor
    """
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    features = np.asarray(features, dtype=np.float32)
    classes = np.asarray(classes)
    dim = features.shape[1] if features.ndim == 2 else 0
    protos = np.zeros((num_classes, k, dim), dtype=np.float32)
    valid = np.zeros((num_classes, k), dtype=bool)
    for c in progress(range(num_classes), desc="k-means", enable=show_progress):
        x = features[classes == c]
        if len(x) == 0:
            continue
        n_clusters = min(k, len(x))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # duplicate points
            km = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=random_state).fit(x)
        protos[c, :n_clusters] = km.cluster_centers_
        valid[c, :n_clusters] = True
    return torch.from_numpy(protos), torch.from_numpy(valid)


@register_method("hst")
class HST(TransferMethod):
    Config = HSTConfig
    # θ takes no part before E0 (and θ_inter none while no class has a prototype).
    ddp_find_unused_parameters = True

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        c, k, d = ctx.num_classes, int(cfg.num_prototypes), self.trunk.dim
        self.quirks = bool(cfg.reference_quirks)
        init = cfg.threshold_init if cfg.threshold_init is not None else (1.0 if self.quirks else 0.95)
        self.threshold_intra = nn.Parameter(torch.tensor(float(init)))
        self.threshold_inter = nn.Parameter(torch.tensor(float(init)))
        self.register_buffer("prototypes", torch.zeros(c, k, d))
        self.register_buffer("prototype_valid", torch.zeros(c, k, dtype=torch.bool))
        self.register_buffer("prototype_epoch", torch.tensor(-1, dtype=torch.long))

    # ---- optimiser ---------------------------------------------------------------------------
    def param_groups(self):
        thresholds = [self.threshold_intra, self.threshold_inter]
        ids = {id(p) for p in thresholds}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        if self.quirks:  # released: one Adam group, thresholds L2-decayed like every weight
            return [{"params": rest + thresholds}]
        return [{"params": rest},
                {"params": thresholds, "weight_decay": 0.0, "name": "thresholds"}]

    # ---- prototypes --------------------------------------------------------------------------
    def prototype_due(self, epoch: int) -> bool:
        e0, every = int(self.cfg.start_epoch), int(self.cfg.prototype_interval)
        if epoch < e0:
            return False
        return epoch == e0 if every <= 0 else (epoch - e0) % every == 0

    def on_epoch_start(self, trainer, epoch):
        super().on_epoch_start(trainer, epoch)
        if not self.prototype_due(epoch) or int(self.prototype_epoch) == epoch:
            return
        feats, classes = collect_positive_features(trainer)
        device = self.prototypes.device
        if dist.is_main():
            protos, valid = kmeans_prototypes(
                feats.numpy(), classes.numpy(), self.num_classes, self.prototypes.shape[1],
                kmeans_seed(trainer.cfg.seed, epoch), int(self.cfg.kmeans_n_init),
                show_progress=trainer.show_progress)
            protos, valid = protos.to(device), valid.to(device)
        else:
            protos, valid = torch.zeros_like(self.prototypes), torch.zeros_like(self.prototype_valid)
        if dist.is_dist():  # one K-means (on the main process), the same prototypes everywhere
            torch.distributed.broadcast(protos, src=0)
            torch.distributed.broadcast(valid, src=0)
        self.prototypes.copy_(protos)
        self.prototype_valid.copy_(valid)
        self.prototype_epoch.fill_(epoch)
        log.info(f"hst: prototypes at epoch {epoch + 1} from {len(classes)} known positives "
                 f"({int(valid.any(1).sum())} of {self.num_classes} classes)")

    def prototype_scores(self, semantic: torch.Tensor) -> torch.Tensor:
        """g (B, C): mean over the class's valid prototypes of cos(F_c, p_ck); 0 without any."""
        valid = self.prototype_valid
        return cosine_to_mean(semantic, self.prototypes, valid, valid.sum(1).clamp(min=1))

    # ---- training step -----------------------------------------------------------------------
    def forward(self, features, batch=None):
        out = self.trunk(features)
        if not self.training or batch is None or "target" not in batch:
            return out
        target = batch["target"]
        epoch = int(batch.get("epoch", 0))
        active = self.is_active(epoch)
        semantic = out["semantic"]
        unknown = target == 0
        # DTL scores every entry (known ones train θ), with the graph kept; SATL thresholds
        # need every entry's score from the start (the distributions), without a graph.
        satl = self.uses_satl
        everything = torch.ones_like(unknown) if (active or satl) else None
        out["cooc"], q_intra = self.ist(semantic, target, entries=everything,
                                        score_grad=not satl)
        out["contrast"] = instance_contrastive(semantic, target)
        has = self.prototype_valid.any(1)                          # (C,)
        if satl:
            # Prototypes exist from E0 on, so g (with its graph, for the prototype loss) is
            # computed once, when pseudo-labelling is on.
            g = self.prototype_scores(semantic) if bool(has.any()) else None
            self.track_intra(q_intra, target)
            if g is not None:
                self.distributions.update("inter", g, target, has[None].expand_as(target))
            if not active:
                return out
            out["pl_intra"] = self.satl_positives("intra", q_intra, target)
            if g is not None:
                out["pl_inter"] = self.satl_positives("inter", g, target) & has
                out["proto"] = self.prototype_loss(g, target, has)
            return out
        if not active:
            return out
        s_intra = (q_intra - self.threshold_intra).clamp(0, 1)
        out["dtl_intra"] = partial_bce(s_intra, target)
        out["pl_intra"] = unknown & (s_intra.detach() > 0)
        if bool(has.any()):
            g = self.prototype_scores(semantic)
            s_inter = (g - self.threshold_inter).clamp(0, 1)
            # Classes without a prototype have no score: they take no part in DTL or labelling.
            out["dtl_inter"] = partial_bce(s_inter, target * has)
            out["pl_inter"] = unknown & has & (s_inter.detach() > 0)
            out["proto"] = self.prototype_loss(g, target, has)
        return out

    def prototype_loss(self, g: torch.Tensor, target: torch.Tensor, has: torch.Tensor):
        """SPEC §11.6: mean over known entries (of classes with prototypes) of 1 − y·g; with
        ``reference_quirks`` the released mean over all B x C entries of 1 + y·g."""
        y = target.float()
        if self.quirks:
            return (1 + y * g).mean()
        known = (target != 0) & has
        return ((1 - y * g) * known).sum() / known.sum().clamp(min=1)

    def loss(self, outputs, batch, epoch):
        cfg = self.cfg
        terms = self.shared_terms(outputs, batch, epoch)
        zero = zero_like_loss(outputs["logits"])
        active = self.is_active(epoch)
        terms["bce_intra"] = cfg.intra_weight * self.pseudo_bce(outputs, batch, "intra") if active else zero
        terms["bce_inter"] = cfg.inter_weight * self.pseudo_bce(outputs, batch, "inter") if active else zero
        terms["dtl_intra"] = cfg.dtl_weight * outputs["dtl_intra"] if "dtl_intra" in outputs else zero
        terms["dtl_inter"] = cfg.dtl_weight * outputs["dtl_inter"] if "dtl_inter" in outputs else zero
        terms["prototype"] = cfg.prototype_weight * outputs["proto"] if "proto" in outputs else zero
        return terms

    def epoch_stats(self):
        stats = super().epoch_stats()
        if self.uses_satl:  # the learnable thresholds take no part
            return stats
        stats["threshold_intra"] = float(self.threshold_intra.detach())
        stats["threshold_inter"] = float(self.threshold_inter.detach())
        return stats


@torch.no_grad()
def collect_positive_features(trainer) -> tuple[torch.Tensor, torch.Tensor]:
    """The semantic feature of every known-positive (image, class) of the training set, the
    model in eval mode, in dataset order (image, then class) whatever the number of processes.

    Under DDP each process runs its shard (DistributedSampler, no shuffle); the pairs are
    all-gathered and the sampler's padding duplicates removed. Returns CPU tensors
    (features (N, D) float32, classes (N,) long)."""
    from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

    from mlrpl.engine.trainer import to_device
    model, ds, cfg = trainer.model, trainer.train_ds, trainer.cfg
    device = trainer.device
    sampler = (DistributedSampler(ds, shuffle=False, drop_last=False) if dist.is_dist()
               else SequentialSampler(ds))
    loader = DataLoader(ds, batch_size=cfg.train.eval_batch_size, sampler=sampler,
                        num_workers=cfg.data.num_workers)
    dist.broadcast_buffers(model)  # rank 0's BatchNorm statistics everywhere, as DDP will
    was_training = model.training
    model.eval()
    idx, cls, feats = [], [], []
    try:
        for batch in progress(loader, desc="prototypes", enable=trainer.show_progress):
            batch = to_device(batch, device)
            with torch.autocast(device_type=device.type, dtype=trainer.amp,
                                enabled=trainer.amp is not None):
                semantic = model(batch)["semantic"]
            b, c = (batch["target"] > 0).nonzero(as_tuple=True)
            idx.append(batch["index"].long()[b].cpu())
            cls.append(c.cpu())
            feats.append(semantic[b, c].float().cpu())
    finally:
        model.train(was_training)
    dim = model.method.trunk.dim
    index = torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long)
    classes = torch.cat(cls) if cls else torch.zeros(0, dtype=torch.long)
    features = torch.cat(feats) if feats else torch.zeros(0, dim)
    if dist.is_dist():
        index = dist.all_gather_varlen(index.to(device)).cpu()
        classes = dist.all_gather_varlen(classes.to(device)).cpu()
        features = dist.all_gather_varlen(features.to(device)).cpu()
    key = index * trainer.exp.train.num_classes + classes
    _, first = np.unique(key.numpy(), return_index=True)       # sorted by (image, class)
    first = torch.from_numpy(first)
    return features[first], classes[first]
