"""Representation blending: the base of ``sarb`` and ``dsrb`` (docs/methods/sarb.md#equations,
docs/methods/dsrb.md#equations).

Instead of turning scores into pseudo-labels, a blending method mixes the representation F_nc of
an *unknown* label with a known-positive representation of the same class (another image's, or a
class prototype), runs the shared graph network and classifier on the blend and trains it with a
soft positive target:

* instance level (SARB's ILRB, DSRB's IPRB): the partner of image n is image B-1-n; for every
  class c unknown in n and known positive in the partner, F~_nc = α F_nc + (1-α) F_partner,c,
  target 1 - α;
* prototype level (SARB's PLRB, DSRB's PPRB): per image one unknown class c* drawn uniformly
  among those that have a prototype, F^_nc* = β F_nc* + (1-β) p, target 1 - β (the prototype p
  is the method's: k-means for SARB, a location-aware quadrant prototype for DSRB).

Every other entry keeps its feature and its label; the soft partial BCE of a blended forward
counts the known entries and the blended ones (those whose soft target is above 0). An entry
that is known is never blended, and an image without an eligible unknown entry takes no part in
prototype blending (docs/methods/sarb.md D1: the released SARB overwrote class 0;
``reference_quirks: true`` restores that).

α and β are learnable scalars (init 0.5) kept in [0, 1] as the released code kept them: the
parameters themselves are clamped in place after every optimiser step (``update_state``), and the
forward uses the clamped value with the gradient of the parameter (:func:`unit_interval`), so a
coefficient that sits on 0 or 1 still receives its gradient (a projected gradient step, as the
release's in-place clamp of ``.data`` before use; ``torch.clamp`` would pass none on the bound and
could pin it there). They receive gradients through the blended features and through the soft
targets. A blended entry whose soft target is exactly 0 (α = 1 or β = 1: its feature is its own)
is dropped from the loss, as in the released loss, which counts a target above 0 as a positive,
below 0 as a negative and 0 as unknown; it is not taught to be a negative.

Randomness (the class drawn per image, SARB's k, DSRB's quadrant offset) comes from torch's
global CPU generator inside ``forward``, which the trainer seeds per epoch and process.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mlrpl.utils import dist
from mlrpl.losses import (instance_contrastive, partial_bce, soft_partial_bce, warmup_ramp,
                          zero_loss)
from mlrpl.methods.components.prototypes import recompute_due
from mlrpl.methods.base import MethodConfig
from mlrpl.models.sarl import SARLConfig, trunk_for

MODULES = ("instance", "prototype")


# ---- selection and blending (pure functions) ------------------------------------------------------
def instance_selection(target: torch.Tensor) -> torch.Tensor:
    """(B, C) bool: entries unknown in image n and known positive in its partner B-1-n."""
    return (target == 0) & (target.flip(0) > 0)


def instance_entries(semantic: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor):
    """ILRB / IPRB on the blended entries only. semantic (B, C, D), target (B, C), alpha scalar
    -> (selected (B, C) bool, images (n,), classes (n,), features (n, D)): the n selected entries
    in row-major order and F~_nc = α F_nc + (1-α) F_partner,c for each (O(n D), not O(B C D))."""
    sel = instance_selection(target)
    n, c = sel.nonzero(as_tuple=True)
    partner = semantic.shape[0] - 1 - n
    return sel, n, c, alpha * semantic[n, c] + (1 - alpha) * semantic[partner, c]


def instance_blend(semantic: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor):
    """ILRB / IPRB. semantic (B, C, D), target (B, C), alpha scalar in [0, 1] ->
    (blended (B, C, D), selected (B, C) bool, soft targets (B, C) float)."""
    sel, n, c, values = instance_entries(semantic, target, alpha)
    blended = semantic.index_put((n, c), values)
    return blended, sel, soft_targets(target, sel, 1 - alpha)


def draw_classes(eligible: torch.Tensor):
    """One class per image, uniformly among its eligible entries (torch's global CPU generator,
    one number per entry). eligible (B, C) bool -> (chosen (B,) long, rows (B,) bool: images that
    have an eligible entry; ``chosen`` is 0 where they have none)."""
    r = torch.rand(eligible.shape).to(eligible.device)
    r = torch.where(eligible, r, torch.full_like(r, -1.0))
    return r.argmax(1), eligible.any(1)


def prototype_entries(semantic: torch.Tensor, target: torch.Tensor, chosen: torch.Tensor,
                      rows: torch.Tensor, prototypes: torch.Tensor, beta: torch.Tensor):
    """PLRB / PPRB on the blended entries only: F^_n,c* = β F_n,c* + (1-β) p_n for the images
    ``rows``. chosen (B,) class per image, rows (B,) bool, prototypes (B, D) -> (selected (B, C)
    bool, images (n,), classes (n,), features (n, D))."""
    n = rows.nonzero().flatten()
    c = chosen[n]
    sel = torch.zeros_like(target, dtype=torch.bool)
    sel[n, c] = True
    values = beta * semantic[n, c] + (1 - beta) * prototypes[n].to(semantic.dtype)
    return sel, n, c, values


def prototype_blend(semantic: torch.Tensor, target: torch.Tensor, chosen: torch.Tensor,
                    rows: torch.Tensor, prototypes: torch.Tensor, beta: torch.Tensor):
    """PLRB / PPRB in the pooled form: F^_n,c* = β F_n,c* + (1-β) p_n for the images ``rows``.

    semantic (B, C, D), target (B, C), chosen (B,) class per image, rows (B,) bool, prototypes
    (B, D) the prototype each image blends with -> (blended, selected (B, C) bool, soft targets)."""
    sel, n, c, values = prototype_entries(semantic, target, chosen, rows, prototypes, beta)
    blended = semantic.index_put((n, c), values)
    return blended, sel, soft_targets(target, sel, 1 - beta)


def unit_interval(coefficient: torch.Tensor) -> torch.Tensor:
    """``coefficient`` clamped into [0, 1] in value, with the gradient of ``coefficient`` itself
    (straight through the clamp, also on and beyond the bounds). Inside [0, 1] it is
    ``coefficient`` bit for bit, with the same gradient."""
    return coefficient + (coefficient.clamp(0, 1) - coefficient).detach()


def soft_targets(target: torch.Tensor, selected: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Targets of a blended forward: ``value`` (a scalar tensor, with its graph) on the selected
    entries, 1 / 0 on known positives / negatives elsewhere, 0 on unknown ones (weight 0)."""
    return torch.where(selected, value, (target > 0).to(value.dtype))


def blend_weight(target: torch.Tensor, selected: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """The entries a blended forward's soft BCE counts: known ones and blended ones whose soft
    target is above 0 (a soft target of exactly 0, from α = 1 or β = 1, is dropped as the
    released loss dropped it)."""
    return (target != 0) | (selected & (soft.detach() > 0))


# ---- counters for summary.csv -------------------------------------------------------------------
class BlendStats:
    """Per epoch: entries blended per module, how many of them are truly positive (against the
    hidden full labels, when the labels were simulated), and the mean α, β over the steps.

    Plain tensors, not buffers (DDP would broadcast rank 0's over the others); all-reduced in
    ``compute`` and zero at every epoch boundary, so a checkpoint never needs them.

    Columns: ``blend_<module>_n``, ``blend_<module>_precision`` (% of the blended entries whose
    hidden label is positive; NaN when none is judged), ``alpha_mean``, ``beta_mean``.
    """

    def __init__(self, modules=MODULES):
        self.modules = list(modules)
        self.counts = torch.zeros(len(self.modules), 3, dtype=torch.float64)   # n, tp, judged
        self.coef = torch.zeros(3, dtype=torch.float64)                        # Σα, Σβ, steps

    def reset(self):
        self.counts = torch.zeros_like(self.counts)
        self.coef = torch.zeros_like(self.coef)

    @torch.no_grad()
    def update(self, outputs: dict, batch: dict, alpha: float, beta: float):
        full = batch.get("full")
        for i, m in enumerate(self.modules):
            sel = outputs.get(f"blend_{m}")
            if sel is None:
                continue
            self.counts[i, 0] += float(sel.sum())
            if full is not None:
                self.counts[i, 1] += float((sel & (full > 0)).sum())
                self.counts[i, 2] += float((sel & (full != 0)).sum())
        self.coef += torch.tensor([alpha, beta, 1.0], dtype=torch.float64)

    def compute(self, device=None) -> dict[str, float]:
        packed = torch.cat([self.counts.flatten(), self.coef])
        if dist.is_dist():
            packed = dist.all_reduce_sum(packed.to(device or "cpu")).cpu()
        counts = packed[:self.counts.numel()].view_as(self.counts)
        a, b, steps = packed[self.counts.numel():].tolist()
        out: dict[str, float] = {}
        for i, m in enumerate(self.modules):
            n, tp, judged = counts[i].tolist()
            out[f"blend_{m}_n"] = int(n)
            out[f"blend_{m}_precision"] = 100.0 * tp / judged if judged > 0 else float("nan")
        out["alpha_mean"] = a / steps if steps else float("nan")
        out["beta_mean"] = b / steps if steps else float("nan")
        return out


# ---- the config and the shared hooks ----------------------------------------------------------------------------
@dataclass
class BlendingConfig(MethodConfig):
    """Keys shared by ``sarb`` and ``dsrb`` (under ``method:``)."""
    trunk: SARLConfig = field(default_factory=SARLConfig)
    start_epoch: int = 5              # E0: blending (and the first prototypes) from this epoch on
    prototype_interval: int = 5       # prototypes recomputed at E0, E0 + interval, ... (0: at E0)
    contrast_weight: float = 0.05     # CSRL instance contrastive loss
    warmup: bool = True               # ramp the contrastive weight over epoch 0 (step/steps)
    instance_weight: float = 1.0      # weight of the instance-level blending loss
    prototype_weight: float = 1.0     # weight of the prototype-level blending loss
    alpha_init: float = 0.5           # α (instance), learnable, clamped to [0, 1]
    beta_init: float = 0.5            # β (prototype), learnable, clamped to [0, 1]
    reference_quirks: bool = False    # the released prototype-blending behaviour (see the method)


# Functions of the method (``self``: a sarb or dsrb), taken by each as its own hook or
# helper; the method owns ``trunk``, ``alpha``, ``beta``, ``blend_stats`` (:func:`build_parts`)
# and ``prototypes``, and defines ``recompute_prototypes(ctx)`` and ``prototype_choice(out,
# target)`` -> (chosen (B,), rows (B,) bool, prototype vectors (B, D)).
def build_parts(self, cfg, ctx) -> None:
    """The trunk, then α and β (learnable, in this order: the order the parameters are drawn
    in) and the blending counters; the method adds its own ``prototypes``."""
    self.trunk = trunk_for(cfg.trunk, ctx)
    self.quirks = bool(cfg.reference_quirks)
    self.alpha = nn.Parameter(torch.tensor(float(cfg.alpha_init)))
    self.beta = nn.Parameter(torch.tensor(float(cfg.beta_init)))
    self.blend_stats = BlendStats()


# ---- prototypes --------------------------------------------------------------------------
def blending_on_epoch_start(self, ctx):
    """``on_epoch_start``: the method's prototypes recomputed at E0 and every interval."""
    if recompute_due(ctx.epoch, int(self.prototypes.epoch), int(self.cfg.start_epoch),
                     int(self.cfg.prototype_interval)):
        self.recompute_prototypes(ctx)


# ---- forward -----------------------------------------------------------------------------
def coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
    return unit_interval(self.alpha), unit_interval(self.beta)


def is_active(self, epoch: int) -> bool:
    return epoch >= int(self.cfg.start_epoch)


def blending_forward(self, features, batch=None):
    """``forward``: the trunk, CSRL, and from E0 the instance and prototype blends, scored in
    one pass (the method's ``prototype_choice`` picks the prototypes)."""
    out = self.trunk(features)
    if not self.training or batch is None or "target" not in batch:
        return out
    target = batch["target"]
    out["contrast"] = instance_contrastive(out["semantic"], target)
    if not self.is_active(int(batch.get("epoch", 0))):
        return out
    alpha, beta = self.coefficients()
    semantic = out["semantic"]
    sel, n, c, values = instance_entries(semantic, target, alpha)
    blends = {"instance": (sel, n, c, values, soft_targets(target, sel, 1 - alpha))}
    chosen, rows, protos = self.prototype_choice(out, target)
    sel, n, c, values = prototype_entries(semantic, target, chosen, rows, protos, beta)
    blends["prototype"] = (sel, n, c, values, soft_targets(target, sel, 1 - beta))
    blended_forward(self, out, blends, target)
    return out


def blended_forward(self, out, blends: dict, target):
    """Graph network + classifier on the blends, in one call over only the images a blend
    changed: an image none of whose features were blended keeps its plain logits (the same
    numbers, from the same graph), so its rows need no second pass. Exact: the graph
    network and the classifier act on each image alone (no batch statistics).

    ``blends``: module -> (selected (B, C) bool, images (n,), classes (n,), blended features
    (n, D), soft targets (B, C)), as :func:`instance_entries` / :func:`prototype_entries` give
    them. The changed images' features are gathered once and the blended entries written into
    that copy: no (B, C, D) blend of the whole batch is formed."""
    semantic = out["semantic"]
    rows = {m: sel.any(1).nonzero().flatten() for m, (sel, *_) in blends.items()}
    sizes = [len(r) for r in rows.values()]
    new = [None] * len(blends)
    if sum(sizes):
        images = torch.cat(list(rows.values()))
        stacked = semantic[images]                                      # (R, C, D), a copy
        at, cls, values, offset = [], [], [], 0
        for (module, (_, n, c, v, _)), size in zip(blends.items(), sizes):
            at.append(offset + torch.searchsorted(rows[module], n))     # n is among the rows
            cls.append(c)
            values.append(v)
            offset += size
        at, cls = torch.cat(at), torch.cat(cls)
        stacked = stacked.index_put_((at, cls), torch.cat(values))
        # Above refine_all_up_to classes, the pre-graph scores of the entries no blend changed
        # are the first pass's (the same features): only the blended entries' are computed.
        plain = out.get("pre_graph_logits")
        if plain is not None:
            plain = plain[images]
        new = self.trunk.classify(stacked, plain, (at, cls))[0].split(sizes)
    for (module, (sel, _, _, _, soft)), logits in zip(blends.items(), new):
        out[f"logits_{module}"] = (out["logits"].index_put((rows[module],), logits)
                                   if len(rows[module]) else out["logits"])
        out[f"soft_{module}"] = soft
        out[f"weight_{module}"] = blend_weight(target, sel, soft)
        out[f"blend_{module}"] = sel


# ---- loss and state ----------------------------------------------------------------------
def blending_loss(self, outputs, batch, epoch):
    cfg = self.cfg
    ramp = warmup_ramp(batch, epoch, cfg.warmup)
    zero = zero_loss(outputs["logits"])
    terms = {"bce": partial_bce(outputs["logits"], batch["target"]),
             "contrast": cfg.contrast_weight * ramp * outputs["contrast"]}
    for module, weight in (("instance", cfg.instance_weight),
                           ("prototype", cfg.prototype_weight)):
        key = f"logits_{module}"
        terms[f"blend_{module}"] = (weight * soft_partial_bce(
            outputs[key], outputs[f"soft_{module}"], outputs[f"weight_{module}"])
            if key in outputs else zero)
    return terms


@torch.no_grad()
def blending_update_state(self, outputs, batch):
    # The released code kept the parameters themselves in [0, 1] (an in-place clamp).
    self.alpha.clamp_(0, 1)
    self.beta.clamp_(0, 1)
    self.blend_stats.update(outputs, batch, float(self.alpha), float(self.beta))


def blending_epoch_stats(self):
    device = next(self.parameters()).device
    stats = self.blend_stats.compute(device)
    self.blend_stats.reset()
    stats["alpha"] = float(self.alpha.detach())
    stats["beta"] = float(self.beta.detach())
    return stats
