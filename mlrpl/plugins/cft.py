"""``cft``: category-wise fine-tuning of the final linear layer after training (also
``mlrpl cft --checkpoint C``).

The model's final layer is found by what it computes: the module whose output is the method's
logits, either a ``Linear`` (s_c = <w_c, x> + b_c) or a per-class classifier (s_c = <w_c, x_c> +
b_c, the SARL trunk's). With ``model.prior`` the model's logits are that plus the class prior,
s_c = <w_c, x> + b_c + prior_c(x): the prior of every image is collected with the layer's inputs
and kept as a fixed offset, so the re-fit and the selection score what the model outputs. The
inputs over the training images (evaluation mode) are collected once; then every class's
(w_c, b_c) is re-fitted, independently of the others, on the known labels only with the
asymmetric loss (ASL; ``steps`` full-batch Adam steps from the trained values), and a class keeps
its new weights only where that improves its AP on the selection set (:func:`keep_if_better`).

Selection set (``select``): ``train_holdout`` (default) compares AP on the known labels of the
training images the run held out of training before it started (``train.select=train_holdout``,
``train.select_holdout`` of them, drawn with ``data.split_seed``; the same images choose the best
epoch); the re-fit uses the known labels of the images the run trained on. A run without them is
refused in one line (naming both keys) before it trains: images the model was trained on cannot
tell whether the re-fit generalises. ``eval_split`` fits on every training image and selects on
the evaluation split's labels: that tunes on the split the run reports, so its numbers are an
upper bound, labelled as such (docs/decisions.md). The evolutionary variant of the paper is not
implemented.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mlrpl.utils import dist
from mlrpl.errors import ConfigError, MlrplError
from mlrpl.losses import asymmetric_loss_elements
from mlrpl.metrics import per_class_ap
from mlrpl.plugins.base import Plugin, PluginConfig
from mlrpl.plugins.registry import register_plugin

log = logging.getLogger("mlrpl")

# plugins.cft.holdout was the share of the training images the plug-in split off at the end of
# the run (images the run had trained on). Retired: the held-out images are train.select's. The
# key stays, at its old value, so that the configs recorded with it still load and match.
_RETIRED_HOLDOUT = 0.2

NO_HELD_OUT = ("plugins.cft.select=train_holdout selects on training images held out of "
               "training before the run, and this run holds none: set "
               "train.select=train_holdout (train.select_holdout of the training images, which "
               "also choose the best epoch), or plugins.cft.select=eval_split (an upper bound: it "
               "selects on the evaluation split)")


@dataclass
class CFTConfig(PluginConfig):
    name: str = "cft"
    variant: str = "gradient"     # gradient (the evolutionary variant is not implemented)
    select: str = "train_holdout"  # train_holdout (train.select's held-out images) | eval_split
    holdout: float = _RETIRED_HOLDOUT  # retired (0.2 only): the share is train.select_holdout
    steps: int = 100
    lr: float = 0.01
    weight_decay: float = 0.0
    gamma_pos: float = 0.0        # ASL
    gamma_neg: float = 4.0
    clip: float = 0.05
    min_gain: float = 0.0         # AP points (fraction) a class must gain to keep the new weights


def keep_if_better(ap_before: np.ndarray, ap_after: np.ndarray, min_gain: float = 0.0) -> np.ndarray:
    """(C,) bool: classes whose AP on the selection set improves by more than ``min_gain``.
    A class whose AP is undefined before or after (no known positive there) keeps its weights.

    >>> keep_if_better(np.array([0.5, 0.5, np.nan, 0.7]), np.array([0.6, 0.5, 0.9, 0.65]))
    array([ True, False, False, False])
    """
    before, after = np.asarray(ap_before, float), np.asarray(ap_after, float)
    ok = np.isfinite(before) & np.isfinite(after)
    gain = np.where(ok, after - np.where(ok, before, 0.0), -np.inf)
    return ok & (gain > float(min_gain))


def _per_class_logits(x, w, b, offset=None):
    """x (N, C, D) or (N, 1, D), w (C, D), b (C,), offset (N, C) or None -> (N, C)."""
    s = (x * w[None]).sum(-1) + b[None]
    return s if offset is None else s + offset


@register_plugin("cft")
class CFT(Plugin):
    Config = CFTConfig

    def __init__(self, cfg, ctx, model):
        super().__init__(cfg, ctx, model)
        if cfg.select == "train_holdout" and int(getattr(ctx, "select_images", 0)) < 1:
            raise ConfigError(NO_HELD_OUT)
        self.register_buffer("kept", torch.zeros(ctx.num_classes, dtype=torch.bool))
        self.register_buffer("done", torch.zeros((), dtype=torch.bool))
        self.seed = int(ctx.seed)

    @classmethod
    def check(cls, cfg):
        if cfg.variant != "gradient":
            raise ConfigError(f"bad value for 'plugins.cft.variant': {cfg.variant!r}; only "
                              f"'gradient' is implemented (the evolutionary variant is not)")
        if cfg.select not in ("train_holdout", "eval_split"):
            raise ConfigError(f"bad value for 'plugins.cft.select': {cfg.select!r}; expected "
                              f"'train_holdout' or 'eval_split'")
        if float(cfg.holdout) != _RETIRED_HOLDOUT:
            raise ConfigError(f"'plugins.cft.holdout' ({cfg.holdout}) is no longer used: cft "
                              f"selects on the images train.select=train_holdout holds out of "
                              f"training before the run; set their share with "
                              f"train.select_holdout and leave plugins.cft.holdout out")
        if int(cfg.steps) < 1 or float(cfg.lr) <= 0:
            raise ConfigError("bad value for 'plugins.cft.steps' / 'lr': expected positive values")

    # ---- collecting the final layer's inputs -----------------------------------------------------
    @staticmethod
    def collect(batches, method: nn.Module, num_classes: int, prior: nn.Module | None = None):
        """Run the passes with a hook on every candidate layer (a weight (C, D) and a bias (C,))
        and on ``prior`` (the model's class prior, added to the method's logits); -> (layer,
        kind, X, offset, index) with X (N, C or 1, D) the inputs of the layer whose outputs (plus
        the prior's) are the logits and offset (N, C) the prior's logits (zeros without one),
        float32 on the CPU."""
        c = int(num_classes)
        cands = [m for m in method.modules()
                 if isinstance(getattr(m, "weight", None), torch.Tensor)
                 and isinstance(getattr(m, "bias", None), torch.Tensor)
                 and m.weight.dim() == 2 and m.weight.shape[0] == c
                 and tuple(m.bias.shape) == (c,)]
        if not cands:
            raise MlrplError("cft: the method has no final linear layer (a weight (C, D) and a "
                             "bias (C,)) to fine-tune")
        store = {i: [] for i in range(len(cands))}
        hooks = [m.register_forward_hook(
            lambda mod, inp, out, i=i: store[i].append(
                (inp[0].detach().float().cpu(), out.detach().float().cpu())))
            for i, m in enumerate(cands)]
        priors = []
        if prior is not None:
            hooks.append(prior.register_forward_hook(
                lambda mod, inp, out: priors.append(out.detach().float().cpu())))
        idx_all, logits_all = [], []
        try:
            for batch, outputs in batches:
                idx_all.append(batch["index"].cpu())
                logits_all.append(outputs["logits"].detach().float().cpu())
        finally:
            for h in hooks:
                h.remove()
        logits = torch.cat(logits_all)
        if prior is not None and len(priors) != len(logits_all):
            raise MlrplError("cft: the model's class prior did not run with every batch")
        offset = torch.cat(priors) if prior is not None else torch.zeros_like(logits)
        for i, m in enumerate(cands):
            got = store[i]
            if len(got) != len(logits_all):
                continue
            x = torch.cat([g[0] for g in got])
            out = torch.cat([g[1] for g in got])
            if out.shape == logits.shape and torch.allclose(out + offset, logits, atol=1e-4,
                                                            rtol=1e-4):
                kind = "per_class" if x.dim() == 3 else "linear"
                return (m, kind, (x if x.dim() == 3 else x[:, None, :]), offset,
                        torch.cat(idx_all))
        raise MlrplError("cft: no layer of the method outputs its logits directly (a final "
                         "Linear or per-class classifier is needed)")

    # ---- the fit ---------------------------------------------------------------------------------
    def fit(self, x, y, w0, b0, offset=None):
        """Every class's (w_c, b_c) re-fitted on the known labels of (x, y) with ASL, on the
        scores <w_c, x> + b_c + offset (the prior's logits, fixed; none without a prior)."""
        cfg = self.cfg
        w = w0.detach().clone().float().requires_grad_(True)
        b = b0.detach().clone().float().requires_grad_(True)
        opt = torch.optim.Adam([w, b], lr=float(cfg.lr), weight_decay=float(cfg.weight_decay))
        y = torch.as_tensor(y)
        known = (y != 0).float()
        per_class_known = known.sum(0).clamp(min=1)
        for _ in range(int(cfg.steps)):
            opt.zero_grad()
            s = _per_class_logits(x, w, b, offset)
            # per-class mean over known entries, summed over classes: the classes do not interact
            loss_el = asymmetric_loss_elements(s, y.clamp(min=0), float(cfg.gamma_pos),
                                               float(cfg.gamma_neg), float(cfg.clip)) * known
            loss = (loss_el.sum(0) / per_class_known).sum()
            loss.backward()
            opt.step()
        return w.detach(), b.detach()

    def run(self, train_batches, model, partial, select_batches=None, select_labels=None,
            select_from: str | None = None) -> dict:
        """Re-fit on ``train_batches`` (the images the model trained on, their known labels in
        ``partial``), select on ``select_batches`` (labels ``select_labels``: the held-out images'
        known labels, or the evaluation split's for ``select=eval_split``). ``model`` is the
        MLRModel (its ``method`` and ``prior``) or a bare method."""
        cfg = self.cfg
        if select_batches is None or select_labels is None:
            raise MlrplError(NO_HELD_OUT if cfg.select == "train_holdout" else
                             "cft: select=eval_split needs the evaluation split")
        method = getattr(model, "method", model)
        prior = getattr(model, "prior", None)
        layer, kind, x, off, index = self.collect(train_batches, method, self.num_classes, prior)
        y = torch.as_tensor(np.asarray(partial)[index.numpy()]).to(torch.int8)
        w0 = layer.weight.detach().float().cpu()
        b0 = layer.bias.detach().float().cpu()
        w, b = self.fit(x, y, w0, b0, off if prior is not None else None)
        _, _, xs, off_s, _ = self.collect(select_batches, method, self.num_classes, prior)
        ys = np.asarray(select_labels)
        with torch.no_grad():
            before = per_class_ap(_per_class_logits(xs, w0, b0, off_s).numpy(), ys)
            after = per_class_ap(_per_class_logits(xs, w, b, off_s).numpy(), ys)
        keep = keep_if_better(before, after, float(cfg.min_gain))
        keep_t = torch.as_tensor(keep)
        with torch.no_grad():
            new_w = torch.where(keep_t[:, None], w, w0).to(layer.weight.dtype)
            new_b = torch.where(keep_t, b, b0).to(layer.bias.dtype)
            layer.weight.copy_(new_w.to(layer.weight.device))
            layer.bias.copy_(new_b.to(layer.bias.device))
        self.kept.copy_(keep_t.to(self.kept.device))
        self.done.fill_(True)
        gain = np.where(keep, after - before, 0.0)
        eligible = np.isfinite(before) & np.isfinite(after)
        where = select_from or (
            "training images held out of training before the run (train.select=train_holdout)"
            if cfg.select == "train_holdout" else
            "images of the evaluation split (an upper bound)")
        stats = {"cft_classes_kept": int(keep.sum()), "cft_classes_eligible": int(eligible.sum()),
                 "cft_selection_gain": round(float(np.nansum(gain)) * 100 / max(len(keep), 1), 4),
                 "cft_fit_images": int(len(y)), "cft_select_images": int(len(ys)),
                 "cft_select_on_eval_split": int(cfg.select == "eval_split")}
        log.info(f"cft: {stats['cft_classes_kept']} of {stats['cft_classes_eligible']} eligible "
                 f"classes re-fitted on the known labels of {len(y)} training images (layer "
                 f"{kind}{', with the class prior as offset' if prior is not None else ''}); "
                 f"selected on the known labels of {len(ys)} {where}")
        return stats

    def on_train_end(self, ctx, model):
        if dist.is_dist():
            raise MlrplError("cft runs in one process: train without it and run `mlrpl cft "
                             "--checkpoint last.pt`")
        train = ctx.train_batches("cft: train features")
        if self.cfg.select == "eval_split":
            return self.run(train, model, ctx.partial_labels,
                            ctx.eval_batches("cft: eval features"), ctx.eval_labels)
        if ctx.select_batches is None:
            raise MlrplError(NO_HELD_OUT)
        return self.run(train, model, ctx.partial_labels,
                        ctx.select_batches("cft: held-out features"), ctx.select_labels)

    def epoch_stats(self):
        return {}
