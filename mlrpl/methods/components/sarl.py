"""The base of every method built on the SARL trunk (ssgrl, sst, hst, satl, ...)."""
from __future__ import annotations

from dataclasses import dataclass, field

from mlrpl.data.stats import cooccurrence_graph
from mlrpl.methods.base import Method, MethodConfig
from mlrpl.models.sarl import SARLConfig, SARLTrunk


# Recipes of every SARL-trunk method (docs/decisions.md, "CPU presets of the SARL-trunk methods";
# docs/methods/README.md#training-recipe, docs/methods/sarl.md#hyper-parameters): on cached CPU
# features a CPU-sized trunk with Adam 1e-3 for 12 epochs; in the authors' recipe the
# D = 1024 trunk on 2x2-pooled, reduced ResNet-101 maps.
SARL_RECIPES = {
    "cpu-cached": ["method.trunk.dim=256", "method.trunk.attention_dim=128", "optim.lr=0.001",
                   "train.epochs=12"],
    "hcp": ["method.trunk.pool=true", "method.trunk.dim=1024", "method.trunk.reduce=true",
            "method.trunk.attention_dim=512", "method.trunk.ggnn_steps=3"],
}


def sarl_recipes(**extra: list[str]) -> dict[str, list[str]]:
    """The SARL recipes with a method's own overrides added per regime."""
    return {regime: SARL_RECIPES[regime] + list(extra.get(regime.replace("-", "_"), []))
            for regime in SARL_RECIPES}


@dataclass
class SARLMethodConfig(MethodConfig):
    trunk: SARLConfig = field(default_factory=SARLConfig)


class SARLMethod(Method):
    """A method whose model is the SARL trunk. The label graph comes from the *partial* training
    labels (docs/methods/sarl.md#equations; a class without a known positive:
    docs/methods/sarl.md D1); the word vectors from the label embeddings."""

    needs_embeddings = True
    recipes = sarl_recipes()

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        graph = None if ctx.partial_labels is None else cooccurrence_graph(ctx.partial_labels)
        self.trunk = SARLTrunk(cfg.trunk, ctx.feature_channels, ctx.num_classes, graph,
                               ctx.embeddings, ctx.embedding_dim("trunk.words"))

    def forward(self, features, batch=None):
        return self.trunk(features)
