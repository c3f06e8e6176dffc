"""``logicmix``: mix 2-3 training samples with the partial-label OR rule.

A sample of the batch is replaced, with probability ``prob``, by the mean of itself and k - 1
other samples of the batch (k drawn uniformly in [min_k, max_k]); the input mixed is the image or,
with cached features, the backbone's feature map. Its label, per class, follows the logical OR
on partial labels (:func:`logic_or`): a known positive in any mixed sample -> positive; known
negative in all -> negative; otherwise unknown. The hidden full labels (used only to measure
pseudo-labels) are mixed by the same rule; the mixed sample keeps its anchor's dataset index.
Randomness: torch's global generator, which the loop seeds per epoch (exact resume).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mlrpl.errors import ConfigError
from mlrpl.plugins.base import Plugin, PluginConfig
from mlrpl.plugins.registry import register_plugin


@dataclass
class LogicMixConfig(PluginConfig):
    name: str = "logicmix"
    prob: float = 0.5          # share of the batch's samples replaced by a mixture
    min_k: int = 2             # samples per mixture
    max_k: int = 3
    start_epoch: int = 0


def logic_or(labels: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(..., K, C) partial labels (+1 / -1 / 0) of K mixed samples -> (..., C).

    ``valid`` (..., K) bool marks the samples that take part (default: all). Positive when any
    taking part is a known positive; negative when all are known negatives; unknown otherwise.

    >>> logic_or(torch.tensor([[1, -1, -1, 0, 0], [-1, -1, 0, 0, 1]]))
    tensor([ 1, -1,  0,  0,  1])
    """
    y = labels
    if valid is None:
        valid = torch.ones(y.shape[:-1], dtype=torch.bool, device=y.device)
    v = valid[..., None]
    pos = ((y > 0) & v).any(-2)
    neg = ((y < 0) | ~v).all(-2)
    out = torch.zeros(y.shape[:-2] + y.shape[-1:], dtype=y.dtype, device=y.device)
    out = torch.where(neg, torch.full_like(out, -1), out)
    return torch.where(pos, torch.ones_like(out), out)


def mix_indices(batch_size: int, prob: float, min_k: int, max_k: int,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx (B, K_max) long, valid (B, K_max) bool): row i mixes the samples idx[i][valid[i]];
    column 0 is i itself; a row that is not mixed has only column 0 valid."""
    b, kmax = batch_size, max(int(max_k), 1)
    idx = torch.arange(b)[:, None].repeat(1, kmax)
    valid = torch.zeros(b, kmax, dtype=torch.bool)
    valid[:, 0] = True
    if b < 2:
        return idx, valid
    mixed = torch.rand(b, generator=generator) < prob
    k = torch.randint(int(min_k), int(max_k) + 1, (b,), generator=generator).clamp(max=b)
    # partners: a random permutation of the other samples per row
    order = torch.rand(b, b, generator=generator)
    order[torch.arange(b), torch.arange(b)] = 2.0  # itself last
    n = min(kmax - 1, b - 1)
    idx[:, 1:1 + n] = order.argsort(1)[:, :n]
    cols = torch.arange(1, kmax)[None]
    valid[:, 1:] = mixed[:, None] & (cols < k[:, None])
    return idx, valid


@register_plugin("logicmix")
class LogicMix(Plugin):
    Config = LogicMixConfig

    def __init__(self, cfg, ctx, model):
        super().__init__(cfg, ctx, model)
        self._mixed = 0
        self._seen = 0

    @classmethod
    def check(cls, cfg):
        if not 0.0 <= float(cfg.prob) <= 1.0:
            raise ConfigError(f"bad value for 'plugins.logicmix.prob': {cfg.prob}; expected a "
                              f"probability in [0, 1]")
        if not 2 <= int(cfg.min_k) <= int(cfg.max_k):
            raise ConfigError(f"bad values for 'plugins.logicmix.min_k/max_k': {cfg.min_k}, "
                              f"{cfg.max_k}; expected 2 <= min_k <= max_k")

    def transform_batch(self, batch, epoch):
        if epoch < int(self.cfg.start_epoch) or float(self.cfg.prob) <= 0:
            return batch
        key = next(k for k in ("features", "prefix", "image") if k in batch)
        x = batch[key]
        idx, valid = mix_indices(x.shape[0], float(self.cfg.prob), int(self.cfg.min_k),
                                 int(self.cfg.max_k))
        idx, valid = idx.to(x.device), valid.to(x.device)
        w = valid.to(x.dtype) / valid.sum(1, keepdim=True).to(x.dtype)        # (B, K)
        xs = x[idx]                                                          # (B, K, ...)
        mixed = (xs * w.view(w.shape + (1,) * (x.dim() - 1))).sum(1)
        out = dict(batch)
        out[key] = mixed
        out["target"] = logic_or(batch["target"][idx], valid)
        if "full" in batch:
            out["full"] = logic_or(batch["full"][idx], valid)
        self._mixed += int((valid.sum(1) > 1).sum())
        self._seen += int(x.shape[0])
        return out

    def epoch_stats(self):
        share = self._mixed / self._seen if self._seen else float("nan")
        self._mixed = self._seen = 0
        return {"logicmix_share": round(share, 4)}
