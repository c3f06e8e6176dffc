"""``sarb``: Semantic-Aware Representation Blending (Pu et al., AAAI 2022, arXiv 2203.02172;
docs/methods/sarb.md).

SARL trunk (semantic features F (B, C, D), graph network, shared classifier) and:

* **CSRL**: the instance contrastive loss on F (weight 0.05, ramped over epoch 0);
* **ILRB** (instance level): for every class c unknown in image n and known positive in its batch
  partner B-1-n, F~_nc = α F_nc + (1-α) F_partner,c, soft target 1 - α; graph network +
  classifier on F~ -> s~1, loss soft partial BCE(s~1, y~) over known and blended entries;
* **PLRB** (prototype level): K = 10 k-means prototypes p_ck per class over the semantic
  features of every known positive of the training set (the shared prototype component: the
  model in evaluation mode, all processes' data in dataset order, seeded), at E0 and every
  ``prototype_interval`` epochs after. Per step one k is drawn (shared by the batch; a class with
  n < K prototypes uses k mod n); per image one unknown class c* that has prototypes is drawn
  uniformly, F^_nc* = β F_nc* + (1-β) p_c*k, soft target 1 - β -> s~2, soft partial BCE.
  An image without such a class takes no part (docs/methods/sarb.md D1);
  ``reference_quirks: true`` gives the released behaviour, class 0 blended for an image without
  an unknown label.

α, β: learnable, init 0.5, kept in [0, 1] as released (the parameters clamped in place, so the
gradient still reaches a coefficient on 0 or 1, and a soft target of exactly 0 is dropped from
the loss, not counted as a negative). Blending from E0 = 5.
Loss: bce(s, y) + 0.05 L_contrast + [ep >= E0](L_ILRB + L_PLRB). Inference: σ(s).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from mlrpl.methods.base import Method, register_method
from mlrpl.methods.components import blending
from mlrpl.methods.components.blending import BlendingConfig, draw_classes
from mlrpl.methods.components.prototypes import Prototypes
from mlrpl.models.sarl import sarl_recipes

log = logging.getLogger("mlrpl")


@dataclass
class SARBConfig(BlendingConfig):
    name: str = "sarb"
    num_prototypes: int = 10          # K per class (fewer when a class has fewer positives)
    kmeans_n_init: int = 10           # K-means restarts


@register_method("sarb")
class SARB(Method):
    Config = SARBConfig
    needs_embeddings = True
    # α, β take no part before E0, or when a batch blends nothing.
    ddp_find_unused_parameters = True
    recipes = sarl_recipes(hcp=["train.batch_size=8"])
    # What it shares with dsrb (mlrpl.methods.components.blending), taken by name:
    forward = blending.blending_forward
    loss = blending.blending_loss
    update_state = blending.blending_update_state
    epoch_stats = blending.blending_epoch_stats
    on_epoch_start = blending.blending_on_epoch_start
    coefficients = blending.coefficients
    is_active = blending.is_active

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        blending.build_parts(self, cfg, ctx)
        self.prototypes = Prototypes(ctx.num_classes, int(cfg.num_prototypes), self.trunk.dim)

    def recompute_prototypes(self, ctx):
        n = self.prototypes.recompute(ctx, int(self.cfg.kmeans_n_init))
        log.info(f"sarb: prototypes at epoch {ctx.epoch + 1} from {n} known positives "
                 f"({int(self.prototypes.any.sum())} of {self.num_classes} classes)")

    def prototype_choice(self, out, target):
        protos = self.prototypes
        eligible = (target == 0) & protos.any[None]
        chosen, rows = draw_classes(eligible)
        k = int(torch.randint(protos.valid.shape[1], ()))
        if self.quirks:  # released: an image without an unknown label blends class 0
            rows = torch.ones_like(rows)
        n_valid = protos.valid.sum(1).clamp(min=1)[chosen]
        return chosen, rows, protos.centres[chosen, k % n_valid]
