"""Shared base of the methods built on the SARL trunk (ssgrl, sst, hst, ...)."""
from __future__ import annotations

from dataclasses import dataclass, field

from mlrpl.data.stats import cooccurrence_graph
from mlrpl.methods.base import Method, MethodConfig
from mlrpl.models.sarl import SARLConfig, SARLTrunk


@dataclass
class SARLMethodConfig(MethodConfig):
    trunk: SARLConfig = field(default_factory=SARLConfig)


class SARLMethod(Method):
    """A method whose model is the SARL trunk. The label graph comes from the *partial* training
    labels (SPEC §1, §11.5); the word vectors from the label embeddings."""

    needs_embeddings = True

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        graph = None if ctx.partial_labels is None else cooccurrence_graph(ctx.partial_labels)
        self.trunk = SARLTrunk(cfg.trunk, ctx.feature_channels, ctx.num_classes, graph,
                               ctx.embeddings, ctx.embedding_dim("trunk.words"))

    def forward(self, features, batch=None):
        return self.trunk(features)
