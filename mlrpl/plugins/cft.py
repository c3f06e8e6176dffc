"""``cft``: category-wise fine-tuning of the final linear layer after training (also
``mlrpl cft --checkpoint C``).

The model's final layer is found by what it computes: the module whose output is the method's
logits, either a ``Linear`` (s_c = <w_c, x> + b_c) or a per-class classifier (s_c = <w_c, x_c> +
b_c, the SARL trunk's). Its inputs over the training set (evaluation mode) are collected once;
then every class's (w_c, b_c) is re-fitted, independently of the others, on the known labels only
with the asymmetric loss (ASL; ``steps`` full-batch Adam steps from the trained values), and a
class keeps its new weights only where that improves its AP on the selection set
(:func:`keep_if_better`).

Selection set (``select``): ``train_holdout`` (default) holds out a seeded share ``holdout`` of the
training images, fits on the known labels of the rest and compares AP on the held-out images'
known labels; the evaluation split is never looked at. ``eval_split`` fits on every training image
and selects on the evaluation split's labels: that tunes on the split the run reports, so its
numbers are an upper bound, labelled as such (docs/decisions.md). The evolutionary variant of the
paper is not implemented.
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


@dataclass
class CFTConfig(PluginConfig):
    name: str = "cft"
    variant: str = "gradient"     # gradient (the evolutionary variant is not implemented)
    select: str = "train_holdout"  # train_holdout | eval_split (tunes on the reported split)
    holdout: float = 0.2
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


def _per_class_logits(x, w, b):
    """x (N, C, D) or (N, 1, D), w (C, D), b (C,) -> (N, C)."""
    return (x * w[None]).sum(-1) + b[None]


@register_plugin("cft")
class CFT(Plugin):
    Config = CFTConfig

    def __init__(self, cfg, ctx, model):
        super().__init__(cfg, ctx, model)
        if getattr(model, "prior", None) is not None:
            raise ConfigError("plugins: cft re-fits the final linear layer alone, and "
                              "model.prior adds the class prior to its logits: use one of them "
                              "(model.prior.name=none, or leave cft out)")
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
        if not 0.0 < float(cfg.holdout) < 1.0:
            raise ConfigError(f"bad value for 'plugins.cft.holdout': {cfg.holdout}; expected a "
                              f"fraction in (0, 1)")
        if int(cfg.steps) < 1 or float(cfg.lr) <= 0:
            raise ConfigError("bad value for 'plugins.cft.steps' / 'lr': expected positive values")

    # ---- collecting the final layer's inputs -----------------------------------------------------
    @staticmethod
    def collect(batches, method: nn.Module, num_classes: int):
        """Run the passes with a hook on every candidate layer (a weight (C, D) and a bias (C,));
        -> (layer, kind, X, index) with X (N, C or 1, D) the inputs of the layer whose outputs
        are the logits (float32, CPU)."""
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
        idx_all, logits_all = [], []
        try:
            for batch, outputs in batches:
                idx_all.append(batch["index"].cpu())
                logits_all.append(outputs["logits"].detach().float().cpu())
        finally:
            for h in hooks:
                h.remove()
        logits = torch.cat(logits_all)
        for i, m in enumerate(cands):
            got = store[i]
            if len(got) != len(logits_all):
                continue
            x = torch.cat([g[0] for g in got])
            out = torch.cat([g[1] for g in got])
            if out.shape == logits.shape and torch.allclose(out, logits, atol=1e-4, rtol=1e-4):
                kind = "per_class" if x.dim() == 3 else "linear"
                return m, kind, (x if x.dim() == 3 else x[:, None, :]), torch.cat(idx_all)
        raise MlrplError("cft: no layer of the method outputs its logits directly (a final "
                         "Linear or per-class classifier is needed)")

    # ---- the fit ---------------------------------------------------------------------------------
    def fit(self, x, y, w0, b0):
        """Every class's (w_c, b_c) re-fitted on the known labels of (x, y) with ASL."""
        cfg = self.cfg
        w = w0.detach().clone().float().requires_grad_(True)
        b = b0.detach().clone().float().requires_grad_(True)
        opt = torch.optim.Adam([w, b], lr=float(cfg.lr), weight_decay=float(cfg.weight_decay))
        y = torch.as_tensor(y)
        known = (y != 0).float()
        per_class_known = known.sum(0).clamp(min=1)
        for _ in range(int(cfg.steps)):
            opt.zero_grad()
            s = _per_class_logits(x, w, b)
            # per-class mean over known entries, summed over classes: the classes do not interact
            loss_el = asymmetric_loss_elements(s, y.clamp(min=0), float(cfg.gamma_pos),
                                               float(cfg.gamma_neg), float(cfg.clip)) * known
            loss = (loss_el.sum(0) / per_class_known).sum()
            loss.backward()
            opt.step()
        return w.detach(), b.detach()

    def run(self, train_batches, method, partial, eval_batches=None, eval_labels=None) -> dict:
        cfg = self.cfg
        layer, kind, x, index = self.collect(train_batches, method, self.num_classes)
        y = torch.as_tensor(np.asarray(partial)[index.numpy()]).to(torch.int8)
        w0 = layer.weight.detach().float().cpu()
        b0 = layer.bias.detach().float().cpu()
        if cfg.select == "train_holdout":
            rng = np.random.default_rng(self.seed)
            perm = rng.permutation(len(y))
            n_hold = max(int(round(float(cfg.holdout) * len(y))), 1)
            hold = np.zeros(len(y), bool)
            hold[perm[:n_hold]] = True
            hold_t = torch.as_tensor(hold)
            w, b = self.fit(x[~hold_t], y[~hold_t], w0, b0)
            xs, ys = x[hold_t], y[hold_t].numpy()
        else:
            _, _, xs, _ = self.collect(eval_batches, method, self.num_classes)
            w, b = self.fit(x, y, w0, b0)
            ys = np.asarray(eval_labels)
        with torch.no_grad():
            before = per_class_ap(_per_class_logits(xs, w0, b0).numpy(), ys)
            after = per_class_ap(_per_class_logits(xs, w, b).numpy(), ys)
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
        stats = {"cft_classes_kept": int(keep.sum()), "cft_classes_eligible": int(eligible.sum()),
                 "cft_selection_gain": round(float(np.nansum(gain)) * 100 / max(len(keep), 1), 4)}
        log.info(f"cft: {stats['cft_classes_kept']} of {stats['cft_classes_eligible']} eligible "
                 f"classes re-fitted (selection on {cfg.select}; layer {kind})")
        return stats

    def on_train_end(self, ctx, model):
        if dist.is_dist():
            raise MlrplError("cft runs in one process: train without it and run `mlrpl cft "
                             "--checkpoint last.pt`")
        method = getattr(model, "method", model)
        return self.run(ctx.train_batches("cft: train features"), method, ctx.partial_labels,
                        (ctx.eval_batches("cft: eval features")
                         if self.cfg.select == "eval_split" else None), ctx.eval_labels)

    def epoch_stats(self):
        return {}
