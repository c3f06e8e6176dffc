"""The SARL trunk: semantic decoupling + gated graph network + per-class classifier
(docs/methods/sarl.md#equations).

Shared by ``ssgrl``, ``sst``, ``hst`` and the methods built on them. From a backbone feature map it
computes one feature per class (attention guided by the class's word vector), propagates the
class features over the label co-occurrence graph, and scores each class with its own classifier.

Shapes (B images, C classes, D = ``dim``, HW positions):

===================  ====================================================================
``maps``             (B, C_f, H, W) backbone feature map
``f``                (B, HW, D) after the optional 2x2 pooling and the 1x1 reduction
``attention``        (B, C, HW) softmax over positions, one map per class
``semantic``         (B, C, D) F_c = sum_h a_{c,h} f_h (the features the transfer methods use)
``nodes``            (B, C, D) h^T after T steps of the gated graph network
``logits``           (B, C) s_c = <w_c, tanh(W_o [h_c ; F_c] + b_o)> + b_c
===================  ====================================================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlrpl.data.stats import cooccurrence_graph, sparse_graph
from mlrpl.models.bilinear import bilinear_tanh_scores


@dataclass
class SARLConfig:
    pool: bool = True                 # 2x2 average pooling, stride 2 (14x14 -> 7x7 at 448 px)
    dim: int = 1024                   # D: node / semantic feature size (1x1 reduction target)
    reduce: bool = True               # 1x1 conv C_f -> D + BatchNorm (False: D = C_f)
    attention_dim: int = 512          # the semantic-decoupling intermediate size
    ggnn_steps: int = 3               # T
    # k: neighbours each class keeps in the label graph, its top-k co-occurring classes (null:
    # every class, the dense graph); sst's and hst's pair head scores the same pairs
    graph_k: Optional[int] = 32
    # R: per image, the graph network refines the R classes with the highest pre-graph score;
    # the others keep their semantic features as nodes (null: every class) ...
    refine_classes: Optional[int] = 32
    # ... in vocabularies of more than this many classes (up to it: every class, as released)
    refine_all_up_to: int = 128


class SemanticDecoupling(nn.Module):
    """Class-specific attention guided by word vectors (SSGRL's semantic decoupling).

    e_{c,h} = w_a^T (W_3 tanh(W_1 f_h ⊙ W_2 x_c) + b_3) + b_a. The last two layers are linear
    with nothing between them, so they are applied as the one vector W_3^T w_a and the constant
    w_a^T b_3 + b_a: the same function and the same gradients for every parameter, without the
    (B·C·HW) x A x A matrix product (A = ``attention_dim``) that made the step grow with C·A²;
    the remaining (B, C, HW, A) tanh is streamed over blocks of classes
    (:func:`~mlrpl.models.bilinear.bilinear_tanh_scores`). :meth:`reference` is the literal form.
    """

    def __init__(self, dim: int, embed_dim: int, attention_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, attention_dim, bias=False)
        self.w2 = nn.Linear(embed_dim, attention_dim, bias=False)
        self.w3 = nn.Linear(attention_dim, attention_dim)
        self.wa = nn.Linear(attention_dim, 1)

    def scores(self, f: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """f (B, HW, D), words (C, E) -> e (B, C, HW), before the softmax over positions."""
        a = self.w1(f)                                   # (B, HW, A)
        b = self.w2(words)                               # (C, A)
        u = (self.wa.weight @ self.w3.weight)[0]         # (A,)
        const = (self.wa.weight @ self.w3.bias + self.wa.bias)[0]
        e = bilinear_tanh_scores(a, b[None].expand(a.shape[0], -1, -1), u)   # (B, HW, C)
        return e.transpose(1, 2) + const

    def reference(self, f: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """:meth:`scores` as released: W_3 and w_a applied one after the other."""
        u = self.w3(torch.tanh(self.w1(f)[:, None, :, :] * self.w2(words)[None, :, None, :]))
        return self.wa(u).squeeze(-1)

    def forward(self, f: torch.Tensor, words: torch.Tensor):
        """f (B, HW, D), words (C, E) -> semantic (B, C, D), attention (B, C, HW)."""
        att = torch.softmax(self.scores(f, words), dim=-1)
        return att @ f, att                              # (B, C, D)


class GatedGraph(nn.Module):
    """Gated graph network over the label graph A (C x C), T steps with shared weights."""

    def __init__(self, dim: int, steps: int):
        super().__init__()
        self.steps = steps
        self.wz, self.wr, self.wh = (nn.Linear(2 * dim, dim) for _ in range(3))
        self.uz, self.ur, self.uh = (nn.Linear(dim, dim) for _ in range(3))

    def update(self, h: torch.Tensor, msg: torch.Tensor) -> torch.Tensor:
        """One gated step of the nodes ``h`` (..., D) given their messages ``msg`` (..., 2D)."""
        z = torch.sigmoid(self.wz(msg) + self.uz(h))
        r = torch.sigmoid(self.wr(msg) + self.ur(h))
        cand = torch.tanh(self.wh(msg) + self.uh(r * h))
        return (1 - z) * h + z * cand

    def forward(self, h: torch.Tensor, graph: torch.Tensor) -> torch.Tensor:
        """h (B, C, D), graph (C, C) -> (B, C, D)."""
        a_in, a_out = graph, graph.t()
        for _ in range(self.steps):
            h = self.update(h, torch.cat([a_in @ h, a_out @ h], dim=-1))   # messages (B, C, 2D)
        return h

    def refine(self, h: torch.Tensor, graph: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The same T steps for the listed nodes only: h (B, C, D), idx (B, R) long -> their
        states (B, R, D). Every other node keeps its input state and still sends it as a
        message; a listed node's message sums over all its neighbours, listed or not. Cost
        B·R·(C + D)·D per step instead of B·C·(C + D)·D. With every node listed it is
        :meth:`forward` (rows in the order of ``idx``)."""
        d = h.shape[-1]
        rows = idx[..., None].expand(-1, -1, d)
        a_in, a_out = graph[idx], graph.t()[idx]                     # (B, R, C) rows of A, A^T
        sel = h.gather(1, rows)
        for _ in range(self.steps):
            full = h.scatter(1, rows, sel)
            sel = self.update(sel, torch.cat([a_in @ full, a_out @ full], dim=-1))
        return sel


class ElementWiseClassifier(nn.Module):
    """One weight vector and bias per class: s_c = <w_c, o_c> + b_c."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(dim)
        self.weight = nn.Parameter(torch.empty(num_classes, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound))

    def forward(self, o: torch.Tensor, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """o (..., C, D) -> (..., C); or, with ``classes`` (long, o's shape without D), each
        row's score by the classifier of its class."""
        if classes is None:
            return (o * self.weight).sum(-1) + self.bias
        return (o * self.weight[classes]).sum(-1) + self.bias[classes]


class SARLTrunk(nn.Module):
    """The whole trunk. ``graph`` and ``words`` are buffers: saved with the model."""

    def __init__(self, cfg: SARLConfig, in_channels: int, num_classes: int,
                 graph: Optional[np.ndarray], words: Optional[np.ndarray], embed_dim: int):
        super().__init__()
        self.cfg = cfg
        dim = cfg.dim if cfg.reduce else in_channels
        self.dim = dim
        self.pool = nn.AvgPool2d(2, 2) if cfg.pool else nn.Identity()
        self.reduce = (nn.Sequential(nn.Conv2d(in_channels, dim, 1, bias=False), nn.BatchNorm2d(dim))
                       if cfg.reduce else nn.Identity())
        self.decouple = SemanticDecoupling(dim, embed_dim, cfg.attention_dim)
        self.ggnn = GatedGraph(dim, cfg.ggnn_steps)
        self.fc_o = nn.Linear(2 * dim, dim)
        self.classifier = ElementWiseClassifier(num_classes, dim)
        g = torch.eye(num_classes) if graph is None else torch.as_tensor(graph, dtype=torch.float32)
        w = torch.zeros(num_classes, embed_dim) if words is None else torch.as_tensor(words, dtype=torch.float32)
        self.register_buffer("graph", g)
        self.register_buffer("words", w)

    def encode(self, maps: torch.Tensor) -> dict:
        """Backbone maps -> semantic features and attention (no graph, no classifier)."""
        maps = maps.float()
        if self.cfg.pool and min(maps.shape[-2:]) >= 2:
            maps = self.pool(maps)
        f = self.reduce(maps)                            # (B, D, h, w)
        spatial = tuple(f.shape[-2:])
        f = f.flatten(2).transpose(1, 2)                 # (B, HW, D)
        semantic, att = self.decouple(f, self.words)
        return {"semantic": semantic, "attention": att, "spatial": spatial, "positions": f}

    def refines_all(self, num_classes: int) -> bool:
        """Whether every class goes through the graph network at ``num_classes`` classes (else
        each image's ``refine_classes`` best, by pre-graph score)."""
        r = self.cfg.refine_classes
        return r is None or int(r) >= num_classes or num_classes <= int(self.cfg.refine_all_up_to)

    def pre_graph_scores(self, semantic: torch.Tensor,
                         classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The head on [F_c ; F_c], what it gives a node the graph leaves as it was: (B, C, D)
        semantic features -> (B, C); or (n, D) features of the classes ``classes`` (n,) -> (n,)."""
        d = semantic.shape[-1]
        w = self.fc_o.weight
        o = torch.tanh(F.linear(semantic, w[:, :d] + w[:, d:], self.fc_o.bias))
        return self.classifier(o, classes)

    def classify(self, semantic: torch.Tensor, plain: Optional[torch.Tensor] = None,
                 changed: Optional[tuple[torch.Tensor, torch.Tensor]] = None):
        """Semantic features (B, C, D) -> (logits (B, C), nodes (B, C, D), pre-graph scores
        (B, C) or None).

        With ``refine_classes`` R below C and C above ``refine_all_up_to``, each image's R
        classes with the highest pre-graph score go through the graph network; the others keep
        their semantic feature as node (h^T = h^0 = F_c) and their pre-graph score as logit. The
        pre-graph score of a class is the head on [F_c ; F_c] (:meth:`pre_graph_scores`), what
        it gives a node the graph leaves as it was; it is returned (None when every class is
        refined). Blending methods call this on modified semantic features: ``plain`` (B, C),
        the pre-graph scores of the unmodified features (from an earlier call), and ``changed``
        (images (n,), classes (n,)), the entries whose feature differs, make only those entries'
        scores computed again (the others are the same numbers, with the same graph)."""
        c = semantic.shape[1]
        if self.refines_all(c):
            nodes = self.ggnn(semantic, self.graph)
            o = torch.tanh(self.fc_o(torch.cat([nodes, semantic], dim=-1)))
            return self.classifier(o), nodes, None
        d = semantic.shape[-1]
        r = int(self.cfg.refine_classes)
        if plain is None or changed is None:
            plain = self.pre_graph_scores(semantic)
        else:
            n, k = changed
            plain = plain.index_put((n, k), self.pre_graph_scores(semantic[n, k], k))
        idx = plain.detach().topk(r, dim=1).indices                          # (B, R)
        rows = idx[..., None].expand(-1, -1, d)
        refined = self.ggnn.refine(semantic, self.graph, idx)                # (B, R, D)
        o = torch.tanh(self.fc_o(torch.cat([refined, semantic.gather(1, rows)], dim=-1)))
        return plain.scatter(1, idx, self.classifier(o, idx)), semantic.scatter(1, rows, refined), plain

    def forward(self, maps: torch.Tensor) -> dict:
        out = self.encode(maps)
        out["logits"], out["nodes"], plain = self.classify(out["semantic"])
        if plain is not None:
            out["pre_graph_logits"] = plain
        return out

    @staticmethod
    def attention_maps(out: dict) -> torch.Tensor:
        """(B, C, h, w) attention maps, for visualisation."""
        b, c, _ = out["attention"].shape
        return out["attention"].reshape(b, c, *out["spatial"])


# ---- building the trunk for a method -------------------------------------------------------------
# Recipes of every SARL-trunk method (docs/decisions.md, "CPU presets of the SARL-trunk methods";
# docs/methods/README.md#training-recipe, docs/methods/sarl.md#hyper-parameters): on cached CPU
# features a CPU-sized trunk with Adam 1e-3 for 12 epochs; in the authors' recipe the
# D = 1024 trunk on 2x2-pooled, reduced ResNet-101 maps with the released head (dense graph,
# every class refined).
SARL_RECIPES = {
    "cpu-cached": ["method.trunk.dim=256", "method.trunk.attention_dim=128", "optim.lr=0.001",
                   "train.epochs=12"],
    "hcp": ["method.trunk.pool=true", "method.trunk.dim=1024", "method.trunk.reduce=true",
            "method.trunk.attention_dim=512", "method.trunk.ggnn_steps=3",
            "method.trunk.graph_k=null", "method.trunk.refine_classes=null"],
}


def sarl_recipes(**extra: list[str]) -> dict[str, list[str]]:
    """The SARL recipes with a method's own overrides added per regime."""
    return {regime: SARL_RECIPES[regime] + list(extra.get(regime.replace("-", "_"), []))
            for regime in SARL_RECIPES}


def trunk_for(cfg: SARLConfig, ctx) -> "SARLTrunk":
    """The trunk of a method built with context ``ctx`` (a :class:`mlrpl.methods.base.MethodContext`):
    the label graph from the *partial* training labels (docs/methods/sarl.md#equations; a class
    without a known positive: docs/methods/sarl.md D1), the word vectors from the label
    embeddings."""
    graph = (None if ctx.partial_labels is None
             else sparse_graph(cooccurrence_graph(ctx.partial_labels), cfg.graph_k))
    return SARLTrunk(cfg, ctx.feature_channels, ctx.num_classes, graph, ctx.embeddings,
                     ctx.embedding_dim("trunk.words"))
