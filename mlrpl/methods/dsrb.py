"""``dsrb``: Dual-Perspective Semantic-Aware Representation Blending (Pu et al., ESWA 2024,
arXiv 2205.13092; docs/methods/dsrb.md).

As ``sarb`` (SARL trunk, CSRL, learnable α and β, blending from E0 with soft targets), with the
two blending modules on the attention-weighted maps M_nc = (a_nch f_nh)_h, summed over space:

* **IPRB** (instance perspective): the maps of class c unknown in image n and known positive in
  its partner B-1-n are blended, α M_nc + (1-α) M_partner,c, target 1 - α. Summation over space
  is linear, so this is computed on the pooled features F (exactly equal, tested).
* **PPRB** (prototype perspective, location-aware): four prototypes per class, one per quadrant
  of the attention-weighted map's peak (:mod:`~mlrpl.methods.components.quadrant_prototypes`:
  the first 100 known positives per quadrant, an empty quadrant falling back to the class's
  mean), recomputed at E0 and every ``prototype_interval`` epochs. Per image one unknown class c*
  with prototypes is drawn; with q the quadrant of its own peak and r drawn from {1, 2, 3},
  q' = (q - r) mod 4 (always another location); β M_nc* + (1-β) P_c*q', target 1 - β. Computed
  in the pooled form of docs/methods/dsrb.md D1 (equal to the map form, tested). An image
  without such a class takes no part (docs/methods/dsrb.md D2; the release's topK could pick a
  known entry).

The released DSRB does not run (undefined names); w_I = w_P = 1 as in SARB.
``reference_quirks: true``: the released per-quadrant mean that also averages its zero initial
row (prototypes shrunk by n / (n + 1)).
Loss: bce(s, y) + 0.05 L_contrast + [ep >= E0](L_IPRB + L_PPRB). Inference: σ(s).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from mlrpl.methods.base import Method, register_method
from mlrpl.methods.components import blending
from mlrpl.methods.components.blending import BlendingConfig, draw_classes
from mlrpl.methods.components.quadrant_prototypes import QuadrantPrototypes, peak_quadrant
from mlrpl.models.sarl import sarl_recipes

log = logging.getLogger("mlrpl")


@dataclass
class DSRBConfig(BlendingConfig):
    name: str = "dsrb"
    prototype_cap: int = 100          # maps averaged per (class, quadrant), first in dataset order


@register_method("dsrb")
class DSRB(Method):
    Config = DSRBConfig
    needs_embeddings = True
    # α, β take no part before E0, or when a batch blends nothing.
    ddp_find_unused_parameters = True
    recipes = sarl_recipes(hcp=["train.batch_size=8"])
    # What it shares with sarb (mlrpl.methods.components.blending), taken by name:
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
        self.prototypes = QuadrantPrototypes(ctx.num_classes, self.trunk.dim)

    def recompute_prototypes(self, ctx):
        n = self.prototypes.recompute(ctx, int(self.cfg.prototype_cap), shrink=self.quirks)
        occ = self.prototypes.occupancy
        log.info(f"dsrb: quadrant prototypes at epoch {ctx.epoch + 1} from {n} known positives "
                 f"({int(self.prototypes.any.sum())} of {self.num_classes} classes; "
                 f"{int((occ[self.prototypes.any] == 0).sum())} empty quadrants filled)")

    def prototype_choice(self, out, target):
        protos = self.prototypes
        eligible = (target == 0) & protos.any[None]
        chosen, rows = draw_classes(eligible)
        shift = torch.randint(1, 4, (len(chosen),)).to(chosen.device)
        # the peak quadrant of each image's chosen class only (O(B HW), not O(B C HW))
        att = out["attention"].detach()[torch.arange(len(chosen), device=chosen.device), chosen]
        own = peak_quadrant(att[:, None], out["positions"].detach(), out["spatial"])[:, 0]
        other = (own - shift) % 4
        return chosen, rows, protos.centres[chosen, other]
