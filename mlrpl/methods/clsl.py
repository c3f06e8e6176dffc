"""``clsl``: co-learning semantic-aware features and label recovery (He et al., arXiv 2510.10055).

Described in docs/methods/clsl.md. Follows the released ``models/sarlp.py``
(github.com/Qingdandian/CLSL) except for the label recovery (docs/methods/clsl.md D1) and the
loss scaling (docs/methods/clsl.md D2). Not on the SARL trunk: the backbone's map is a sequence
of P = H·W tokens.

* Encoder: tokens X (B, P, C_f) (``pool``: of the 2x2-average-pooled map, a CPU choice; released:
  none) -> (a linear projection to D when ``dim`` differs from the
  backbone's width) -> one post-norm transformer encoder layer (``heads`` heads, FFN ``ffn_dim``,
  ReLU, dropout 0.1) with a fixed 2-D sine positional encoding (DETR, normalised) added to the
  queries and keys only (:func:`sine_position_encoding`, :class:`EncoderLayer`).
* SRFL (:meth:`CLSL.srfl_features`): x_g = mean over tokens; for every class
  v_c = Conv1x1 -> BN -> GELU -> Conv1x1 of [E_c ; x_g] (E: frozen label embeddings, a buffer),
  V (B, C, D).
* Global branch: A⁰ = 1x1 conv of the tokens to C channels, logits0_c = max_p A⁰_{c,p}.
* SGFE (:class:`LowRankBilinearAttention`, :func:`sgfe_pool`): e_{p,c} = w₂ᵀ(W_h tanh((W_x x_p) ⊙
  (W_v v_c)) + b_h) + b₂, β = softmax over classes per token, z_p = Σ_c β_{p,c} v_c,
  A¹ = MLP([z_p ; x_p]) (B, P, C), logits1_c = Σ_p softmax_p(A¹_{·,c}) A¹_{p,c}. Inference: logits1.
  e is computed over blocks of classes, recomputed in backward (:func:`bilinear_tanh_scores`), never
  as the (B, P, C, A) tensor (docs/methods/clsl.md#computation).
* Label recovery (training): r = σ(logits1 / T) (monotone, docs/methods/clsl.md D1); with
  ``reference_quirks`` the released σ(logits1 · max_c' logits1_c'). ŷ = known ⊙ y + (1 − known) ⊙ r,
  detached (:func:`recovered_targets`).
* Loss: w₁ ASL(logits1, y) on the known entries + w₀ ASL(logits0, ŷ) on every entry (soft targets),
  γ⁺ = 0, γ⁻ = 2, clip 0, eps 1e-5, focal weights without gradient, w₁ = 1, w₀ = 0.8. Both terms
  are means (over known entries, over B·C); ``reference_quirks`` restores the released scaling,
  L₁ summed ×1000 and L₀ averaged ×1000 (docs/decisions.md).

Labels: the library's +1 / −1 / 0 (unknown) encoding throughout; the released code's 1 / 0 / −1 is
never needed. Recovery quality per epoch (``pl_pos_*``, ``pl_neg_*``): unknown entries with
r ≥ 0.5 count as recovered positives, the others as recovered negatives.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mlrpl.errors import ConfigError
from mlrpl.losses import asymmetric_loss, soft_asymmetric_loss
from mlrpl.methods.base import Method, MethodConfig
from mlrpl.methods.components.pseudo_labels import PseudoLabelQuality
from mlrpl.models.bilinear import bilinear_tanh_scores, is_traced
from mlrpl.methods.base import register_method


@dataclass
class CLSLConfig(MethodConfig):
    name: str = "clsl"
    pool: bool = False               # 2x2 average pooling of the map first (14x14 -> 7x7 tokens)
    dim: Optional[int] = None        # D; null: the backbone's width, no projection (as released)
    heads: int = 8
    ffn_dim: int = 2048              # the encoder's feed-forward width (released: 2048)
    encoder_dropout: float = 0.1
    position_encoding: bool = True   # the released `--pos`
    attention_dim: int = 1024        # SGFE's low-rank width (W_x, W_v, W_h)
    hidden_dim: Optional[int] = None  # SGFE's MLP width; null: 2·D (as released)
    head_dropout: float = 0.5
    temperature: float = 1.0         # T of the monotone recovery r = σ(s / T)
    known_weight: float = 1.0        # w₁ (L₁, known labels, semantic branch)
    recovered_weight: float = 0.8    # w₀ (L₀, recovered labels, global branch)
    gamma_pos: float = 0.0
    gamma_neg: float = 2.0
    clip: float = 0.0
    eps: float = 1e-5
    recovery_threshold: float = 0.5  # only for the recovery statistics
    # The released sharpening σ(s · max s) and loss scaling (L₁ summed x1000, L₀ mean x1000).
    reference_quirks: bool = False
    pl_stats_per_class: bool = False


# ---- pieces -------------------------------------------------------------------------------------
def sine_position_encoding(h: int, w: int, dim: int, temperature: float = 10000.0,
                           device=None) -> torch.Tensor:
    """(H·W, dim) fixed 2-D sine encoding (DETR's ``PositionEmbeddingSine``, normalised, scale 2π),
    rows in the order of ``features.flatten(2)``: the first dim/2 features encode the row, the
    others the column, alternating sin and cos.

    >>> sine_position_encoding(2, 3, 8).shape
    torch.Size([6, 8])
    """
    if dim % 4:
        raise ConfigError(f"the sine position encoding needs a width divisible by 4, got {dim}")
    npf = dim // 2
    ones = torch.ones(1, h, w, device=device)
    y = ones.cumsum(1)
    x = ones.cumsum(2)
    eps, scale = 1e-6, 2 * math.pi
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    i = torch.arange(npf, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / npf)
    px = x[..., None] / dim_t
    py = y[..., None] / dim_t
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((py, px), dim=3)[0].reshape(h * w, dim)


class EncoderLayer(nn.Module):
    """One post-norm transformer encoder layer; the position encoding is added to the queries
    and keys only (DETR; the released ``TransformerEncoderLayer.forward_post``)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        qk = x if pos is None else x + pos
        att = self.self_attn(qk, qk, value=x, need_weights=False)[0]
        x = self.norm1(x + self.dropout1(att))
        ff = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout2(ff))


#: Problems at most this many elements wide keep the literal layouts: SGFE's whole (B, P, C, A)
#: tensor through autograd, SRFL's concatenated (B·C) x (d_t + D) input through the convolutions.
#: At that size they cost nothing, and they give the exact numbers of the released layout (the
#: small pinned runs were recorded with them); above it the streamed / factored forms (equal up to
#: float round-off) are used, except under tracing, torch.compile and export
#: (:func:`~mlrpl.models.bilinear.is_traced`).
LITERAL_MAX_ELEMENTS = 1 << 16


def _literal(elements: int) -> bool:
    return is_traced() or elements <= LITERAL_MAX_ELEMENTS


class LowRankBilinearAttention(nn.Module):
    """e_{p,c} = w₂ᵀ(W_h tanh((W_x x_p) ⊙ (W_v v_c)) + b_h) + b₂ -> (B, P, C).

    The two last layers are linear with nothing between them, so they are applied as the one
    vector W_hᵀw₂ (and the constant w₂ᵀb_h + b₂): the same function and gradients, without the
    (B·C·P) x A x A matrix product (A = ``attention_dim``). What remains, tanh(a_p ⊙ b_c) · u with
    a = W_x x, b = W_v v, is streamed (:func:`bilinear_tanh_scores`) over blocks of classes (and
    tokens) of at most ``chunk_elements`` elements, recomputed in backward, so that memory does not
    grow with B·P·C·A; problems of at most :data:`LITERAL_MAX_ELEMENTS` elements use the whole
    tensor (:meth:`unchunked`). :meth:`reference` is the literal two-layer form.
    """

    def __init__(self, dim_tokens: int, dim_classes: int, attention_dim: int,
                 chunk_elements: Optional[int] = None):
        super().__init__()
        self.tokens = nn.Linear(dim_tokens, attention_dim, bias=False)    # W_x
        self.classes = nn.Linear(dim_classes, attention_dim, bias=False)  # W_v
        self.hidden = nn.Linear(attention_dim, attention_dim)             # W_h, b_h
        self.out = nn.Linear(attention_dim, 1)                            # w₂, b₂
        self.chunk_elements = chunk_elements   # None: the device's default

    def _collapsed(self) -> tuple[torch.Tensor, torch.Tensor]:
        u = (self.out.weight @ self.hidden.weight)[0]              # (A,)
        const = (self.out.weight @ self.hidden.bias + self.out.bias)[0]
        return u, const

    def forward(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x (B, P, D), v (B, C, D') -> e (B, P, C)."""
        a = self.tokens(x)                                         # (B, P, A)
        b = self.classes(v)                                        # (B, C, A)
        u, const = self._collapsed()
        if _literal(a.shape[0] * a.shape[1] * b.shape[1] * a.shape[2]):
            return torch.tanh(a[:, :, None, :] * b[:, None, :, :]) @ u + const
        return bilinear_tanh_scores(a, b, u, self.chunk_elements) + const

    def unchunked(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The collapsed form on the whole (B, P, C, A) tensor at any size (tests)."""
        u, const = self._collapsed()
        t = torch.tanh(self.tokens(x)[:, :, None, :] * self.classes(v)[:, None, :, :])
        return t @ u + const

    def reference(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(self.tokens(x)[:, :, None, :] * self.classes(v)[:, None, :, :])
        return self.out(self.hidden(t)).squeeze(-1)


def sgfe_pool(scores: torch.Tensor) -> torch.Tensor:
    """Class-wise softmax-attention pooling over tokens: A¹ (B, P, C) ->
    logits_c = Σ_p softmax_p(A¹_{·,c})_p A¹_{p,c} (B, C).

    >>> sgfe_pool(torch.tensor([[[0.0], [0.0]]]))
    tensor([[0.]])
    """
    return (torch.softmax(scores, dim=1) * scores).sum(dim=1)


def recovery_scores(logits: torch.Tensor, temperature: float = 1.0,
                    released: bool = False) -> torch.Tensor:
    """r (B, C) from the semantic branch's logits, detached: σ(s / T) (monotone in s), or with
    ``released`` σ(s · max_c' s_c'), which inverts the order in an image whose largest logit is
    negative.

    >>> recovery_scores(torch.tensor([[-1.0, -2.0]]), released=True)   # -2 < -1, yet r is larger
    tensor([[0.7311, 0.8808]])
    """
    s = logits.detach().float()
    if released:
        return torch.sigmoid(s * s.max(dim=1, keepdim=True).values)
    return torch.sigmoid(s / float(temperature))


def recovered_targets(target: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """ŷ = known ⊙ y + (1 − known) ⊙ r in [0, 1]: known labels as 1 / 0, recovered scores on
    the unknown entries. ``target`` +1 / −1 / 0 (unknown).

    >>> recovered_targets(torch.tensor([[1, -1, 0]]), torch.tensor([[0.2, 0.9, 0.3]]))
    tensor([[1.0000, 0.0000, 0.3000]])
    """
    known = target != 0
    return torch.where(known, (target > 0).to(r.dtype), r).detach()


# ---- the method ---------------------------------------------------------------------------------
@register_method("clsl")
class CLSL(Method):
    reads_prior = True                # pseudo-labels from the scores with the prior
    Config = CLSLConfig
    needs_embeddings = True
    # cpu-cached: D = 256 on the 2x2-pooled cached Lite0 maps (1280 x 7 x 7 tokens, as the SARL
    # trunk's CPU recipe), a narrower FFN, SGFE and MLP; the SARL methods' CPU schedule (Adam
    # 1e-3, cosine, 12 epochs). hcp: the released widths on the backbone's 2048 channels, in the
    # common HCP schedule of the base preset (the authors' own recipe: *_clsl_resnet101.yaml).
    recipes = {
        "cpu-cached": ["method.pool=true", "method.dim=256", "method.ffn_dim=512",
                       "method.attention_dim=128", "method.hidden_dim=512", "optim.lr=0.001",
                       "train.epochs=12"],
        "hcp": [],
    }

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        c_f, n_cls = int(ctx.feature_channels), int(ctx.num_classes)
        dim = c_f if cfg.dim is None else int(cfg.dim)
        heads = int(cfg.heads)
        if dim < 1 or heads < 1 or dim % heads:
            raise ConfigError(f"bad values for 'method.dim' ({dim}) / 'method.heads' ({heads}): "
                              f"the width must be a positive multiple of the number of heads")
        if cfg.position_encoding and dim % 4:
            raise ConfigError(f"bad value for 'method.dim': {dim}; the sine position encoding "
                              f"needs a multiple of 4 (or method.position_encoding=false)")
        if float(cfg.temperature) <= 0:
            raise ConfigError(f"bad value for 'method.temperature': {cfg.temperature}; expected "
                              f"a positive number")
        for key in ("ffn_dim", "attention_dim"):
            if int(cfg[key]) < 1:
                raise ConfigError(f"bad value for 'method.{key}': {cfg[key]}; expected >= 1")
        self.dim = dim
        self.proj = nn.Linear(c_f, dim) if dim != c_f else None
        self.encoder = EncoderLayer(dim, heads, int(cfg.ffn_dim), float(cfg.encoder_dropout))
        # SRFL: label embeddings (frozen buffer, saved with the model) conditioned on the image.
        d_t = ctx.embedding_dim("words")
        words = (torch.zeros(n_cls, d_t) if ctx.embeddings is None
                 else torch.as_tensor(ctx.embeddings, dtype=torch.float32))
        self.register_buffer("words", words)
        self.srfl = nn.Sequential(nn.Conv1d(d_t + dim, d_t + dim, 1), nn.BatchNorm1d(d_t + dim),
                                  nn.GELU(), nn.Conv1d(d_t + dim, dim, 1))
        # global branch
        self.global_head = nn.Conv1d(dim, n_cls, 1)
        # SGFE
        self.attention = LowRankBilinearAttention(dim, dim, int(cfg.attention_dim))
        hidden = 2 * dim if cfg.hidden_dim is None else int(cfg.hidden_dim)
        self.head = nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(),
                                  nn.Dropout(float(cfg.head_dropout)), nn.Linear(hidden, n_cls))
        self.quality = PseudoLabelQuality(("pos", "neg"), ctx.class_names,
                                          bool(cfg.pl_stats_per_class))

    # -- the model ----------------------------------------------------------------------------
    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Backbone maps (B, C_f, H, W) (or pooled (B, C_f)) -> encoded tokens (B, P, D)."""
        f = features.float()
        if f.dim() == 2:
            f = f[:, :, None, None]
        if self.cfg.pool and min(f.shape[-2:]) >= 2:
            f = F.avg_pool2d(f, 2, 2)
        h, w = f.shape[2], f.shape[3]
        x = f.flatten(2).transpose(1, 2)                            # (B, P, C_f)
        if self.proj is not None:
            x = self.proj(x)
        pos = (sine_position_encoding(h, w, self.dim, device=x.device)[None]
               if self.cfg.position_encoding else None)
        return self.encoder(x, pos)

    def srfl_features(self, x: torch.Tensor) -> torch.Tensor:
        """Encoded tokens (B, P, D) -> image-conditioned class vectors V (B, C, D).

        Beyond :data:`LITERAL_MAX_ELEMENTS`, the first 1x1 convolution of [E_c ; x_g] is applied
        as W_E E_c + W_g x_g + bias (the embeddings' part once for all images, the image's part once
        per image, never the (B·C) x (d_t + D) concatenation) and both 1x1 convolutions as matrix
        products over the B·C rows; BatchNorm over those rows is the (B, channels, C) form's.
        """
        conv1, bn, act, conv2 = self.srfl
        xg = x.mean(dim=1)                                          # (B, D)
        n, c, d_t = x.shape[0], self.words.shape[0], self.words.shape[1]
        words = self.words.to(x.dtype)
        if _literal(n * c * (d_t + x.shape[-1])):
            vx = torch.cat([words[None].expand(n, c, -1), xg[:, None, :].expand(n, c, -1)],
                           dim=-1)                                  # (B, C, d_t + D)
            return self.srfl(vx.transpose(1, 2)).transpose(1, 2)
        w1 = conv1.weight[:, :, 0]                                  # (d_t + D, d_t + D)
        h = F.linear(words, w1[:, :d_t])[None] + F.linear(xg, w1[:, d_t:], conv1.bias)[:, None]
        h = act(bn(h.reshape(n * c, -1)))                           # (B·C, d_t + D)
        return F.linear(h, conv2.weight[:, :, 0], conv2.bias).view(n, c, -1)

    def forward(self, features, batch=None):
        x = self.tokens(features)                                   # (B, P, D)
        v = self.srfl_features(x)                                   # (B, C, D)
        logits0 = self.global_head(x.transpose(1, 2)).amax(dim=-1)  # (B, C)
        beta = torch.softmax(self.attention(x, v), dim=-1)          # (B, P, C), over classes
        z = beta @ v                                                # (B, P, D)
        a1 = self.head(torch.cat([z, x], dim=-1))                   # (B, P, C)
        # recovery reads the scores the model outputs: both branches carry the class prior
        logits1 = self.with_prior(sgfe_pool(a1), batch)
        out = {"logits": logits1, "logits_global": self.with_prior(logits0, batch)}
        if not self.training or batch is None or "target" not in batch:
            return out
        cfg = self.cfg
        r = recovery_scores(logits1, float(cfg.temperature), bool(cfg.reference_quirks))
        out["recovery"] = r
        out["recovered"] = recovered_targets(batch["target"], r)
        return out

    def loss(self, outputs, batch, epoch):
        cfg, target = self.cfg, batch["target"]
        kw = dict(gamma_pos=float(cfg.gamma_pos), gamma_neg=float(cfg.gamma_neg),
                  clip=float(cfg.clip), eps=float(cfg.eps), focal="joint", detach_focal=True)
        if cfg.reference_quirks:   # released: L₁ summed x1000, L₀ mean over B·C x1000
            l1 = 1000.0 * asymmetric_loss(outputs["logits"], target, reduction="sum", **kw)
            l0 = 1000.0 * soft_asymmetric_loss(outputs["logits_global"], outputs["recovered"],
                                               reduction="mean", **kw)
        else:
            l1 = asymmetric_loss(outputs["logits"], target, reduction="mean", **kw)
            l0 = soft_asymmetric_loss(outputs["logits_global"], outputs["recovered"],
                                      reduction="mean", **kw)
        return {"asl_known": float(cfg.known_weight) * l1,
                "asl_recovered": float(cfg.recovered_weight) * l0}

    # -- label-recovery quality ---------------------------------------------------------------
    def update_state(self, outputs, batch):
        if "recovery" not in outputs:
            return
        r = outputs["recovery"]
        pos = r >= float(self.cfg.recovery_threshold)
        self.quality.update_pos_neg("pos", "neg", pos, ~pos, batch["target"], batch.get("full"))

    def epoch_stats(self):
        stats = self.quality.compute(self.words.device)
        self.quality.reset()
        return stats
