"""``sr``: saliency regularisation + consistency self-training (Wang et al., ICCV 2023).

Wang, Wan, Xiang, Zeng, *Saliency Regularization for Self-Training with Partial Annotations*,
ICCV 2023. Written from a summary of the paper, not from its text or code
(docs/methods/baselines.md#sr; docs/methods/baselines.md D2): a class activation map (CAM) with a
top-k saliency boost, a weak and a strong view, and confidence-thresholded pseudo-labels.

* CAM: a 1x1 convolution of the backbone map, A_c (H x W) per class.
* Saliency boost (:func:`saliency_logits`): s_c = mean(A_c) + β · mean(top-k of A_c), k = ⌈κ·HW⌉:
  the most salient locations of a class count more than global pooling alone.
* Weak view: the backbone map as it comes (of images with the dataset's augmentation, or cached
  maps); strong view: a feature-map augmentation of that map (:func:`strong_map_view`:
  horizontal flip, random dropout of whole locations, Gaussian noise; the image-level strong
  augmentation is not implemented), documented in docs/decisions.md.
* Pseudo-labels (:func:`confidence_pseudo_labels`) from the weak view's detached probabilities:
  an unknown entry with p >= τ⁺ is a pseudo-positive, p <= τ⁻ a pseudo-negative.
* Loss, three terms (:meth:`SR.loss`): ``bce`` = bce(s_weak, y); ``known_strong`` =
  γ · bce(s_strong, y), the known labels on the strong view, at every epoch; ``consistency`` =
  [ep >= E0] λ · bce(s_strong, pseudo), where ``pseudo`` holds only the pseudo-labels (known
  entries set to unknown), so it is a mean over the pseudo-labelled entries (0 when there are
  none). The strong view thus learns the known labels and the pseudo-labels through two
  separately weighted terms, not one bce(s_strong, y ∪ pseudo).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mlrpl.errors import ConfigError
from mlrpl.losses import partial_bce, zero_loss
from mlrpl.methods.base import Method, MethodConfig
from mlrpl.methods.components.pseudo_labels import PseudoLabelQuality
from mlrpl.methods.base import register_method


@dataclass
class SRConfig(MethodConfig):
    name: str = "sr"
    topk: float = 0.1              # κ: share of the map's locations in the saliency boost
    boost: float = 1.0             # β
    tau_pos: float = 0.9           # pseudo-positive confidence
    tau_neg: float = 0.05          # pseudo-negative confidence
    negatives: bool = True
    start_epoch: int = 5           # E0
    consistency_weight: float = 1.0   # λ
    known_strong_weight: float = 1.0  # γ
    # strong view on feature maps (cached): dropout of whole locations, noise, flip
    map_drop: float = 0.3
    map_noise: float = 0.1
    map_flip: bool = True
    pl_stats_per_class: bool = False


def saliency_logits(cam: torch.Tensor, topk: float, boost: float) -> torch.Tensor:
    """cam (B, C, H, W) -> (B, C): mean over locations + boost x mean of the top-k locations,
    k = max(1, ceil(topk x H x W)).

    >>> cam = torch.tensor([[[[0.0, 1.0], [2.0, 5.0]]]])
    >>> saliency_logits(cam, 0.25, 1.0)          # mean 2 + top-1 5
    tensor([[7.]])
    """
    flat = cam.flatten(2).float()
    k = max(1, int(math.ceil(float(topk) * flat.shape[-1])))
    top = flat.topk(k, dim=-1).values.mean(-1)
    return flat.mean(-1) + float(boost) * top


def confidence_pseudo_labels(prob: torch.Tensor, target: torch.Tensor, tau_pos: float,
                             tau_neg: float, negatives: bool = True):
    """(positive, negative) (B, C) bool over the unknown entries of ``target``:
    p >= τ⁺ -> positive, p <= τ⁻ -> negative (never both; known entries never).

    >>> p = torch.tensor([[0.95, 0.95, 0.5, 0.01, 0.01]])
    >>> t = torch.tensor([[0, 1, 0, 0, -1]])
    >>> [x.tolist() for x in confidence_pseudo_labels(p, t, 0.9, 0.05)]
    [[[True, False, False, False, False]], [[False, False, False, True, False]]]
    """
    unknown = target == 0
    pos = unknown & (prob >= tau_pos)
    neg = unknown & (prob <= tau_neg) & ~pos
    if not negatives:
        neg = torch.zeros_like(neg)
    return pos, neg


def strong_map_view(x: torch.Tensor, drop: float, noise: float, flip: bool) -> torch.Tensor:
    """A strong view of feature maps (B, C, H, W): per sample a horizontal flip (p = 0.5), whole
    locations zeroed with probability ``drop`` (the rest rescaled), Gaussian noise of ``noise``
    times the map's standard deviation. torch's global generator."""
    b = x.shape[0]
    if flip:
        f = torch.rand(b, device=x.device) < 0.5
        x = torch.where(f[:, None, None, None], x.flip(-1), x)
    if drop > 0:
        keep = (torch.rand(b, 1, x.shape[2], x.shape[3], device=x.device) >= drop).to(x.dtype)
        x = x * keep / max(1.0 - drop, 1e-6)
    if noise > 0:
        x = x + noise * x.detach().std() * torch.randn_like(x)
    return x


@register_method("sr")
class SR(Method):
    reads_prior = True                # pseudo-labels from the scores with the prior
    Config = SRConfig
    recipes = {"cpu-cached": [], "hcp": []}

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        if not 0 < float(cfg.topk) <= 1:
            raise ConfigError(f"bad value for 'method.topk': {cfg.topk}; expected (0, 1]")
        if not 0 <= float(cfg.tau_neg) < float(cfg.tau_pos) <= 1:
            raise ConfigError("bad values for 'method.tau_neg' / 'tau_pos': expected "
                              "0 <= tau_neg < tau_pos <= 1")
        self.cam = nn.Conv2d(ctx.feature_channels, ctx.num_classes, 1)
        self.quality = PseudoLabelQuality(("pos", "neg"), ctx.class_names, cfg.pl_stats_per_class)

    def logits_of(self, maps):
        maps = maps.float()
        if maps.dim() == 2:
            maps = maps[:, :, None, None]
        return saliency_logits(self.cam(maps), self.cfg.topk, self.cfg.boost)

    def forward(self, features, batch=None):
        # pseudo-labels from the scores the model outputs (the class prior's included); both
        # views carry the prior of the clean image
        out = {"logits": self.with_prior(self.logits_of(features), batch)}
        if not self.training or batch is None or "target" not in batch:
            return out
        cfg = self.cfg
        strong = features.float()
        if strong.dim() == 4:
            strong = strong_map_view(strong, float(cfg.map_drop), float(cfg.map_noise),
                                     bool(cfg.map_flip))
        out["logits_strong"] = self.with_prior(self.logits_of(strong), batch)
        prob = torch.sigmoid(out["logits"].detach().float())
        pos, neg = confidence_pseudo_labels(prob, batch["target"], float(cfg.tau_pos),
                                            float(cfg.tau_neg), bool(cfg.negatives))
        out["pl_pos"], out["pl_neg"] = pos, neg
        return out

    def loss(self, outputs, batch, epoch):
        cfg, target = self.cfg, batch["target"]
        terms = {"bce": partial_bce(outputs["logits"], target)}
        strong = outputs["logits_strong"]
        terms["known_strong"] = cfg.known_strong_weight * partial_bce(strong, target)
        if epoch >= int(cfg.start_epoch):
            full = torch.where(outputs["pl_pos"], torch.ones_like(target), target)
            full = torch.where(outputs["pl_neg"], -torch.ones_like(target), full)
            unknown_labelled = (outputs["pl_pos"] | outputs["pl_neg"])
            pseudo = torch.where(unknown_labelled, full, torch.zeros_like(full))
            terms["consistency"] = cfg.consistency_weight * partial_bce(strong, pseudo)
        else:
            terms["consistency"] = zero_loss(strong)
        return terms

    def update_state(self, outputs, batch):
        if int(batch.get("epoch", 0)) < int(self.cfg.start_epoch) or "pl_pos" not in outputs:
            return
        self.quality.update_pos_neg("pos", "neg", outputs["pl_pos"], outputs["pl_neg"],
                                    batch["target"], batch.get("full"))

    def epoch_stats(self):
        stats = self.quality.compute(self.cam.weight.device)
        self.quality.reset()
        return stats
