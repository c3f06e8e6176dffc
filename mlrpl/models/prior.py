"""A zero-shot class prior from the backbone's own ImageNet classifier (``model.prior``).

The pretrained backbones come with a 1000-way ImageNet classifier that fine-tuning throws away.
Mapped to the dataset's classes by the similarity of the class names (ConSE: Norouzi et al.,
"Zero-Shot Learning by Convex Combination of Semantic Embeddings", ICLR 2014), it scores every
class before a single label is seen, including the classes that have no known positive at all
(most of COCO's at 10% known labels, whose heads otherwise learn from negatives only):

    q(x)     = softmax(W_in · pool(F(x)) + b_in)                 ImageNet probabilities, (K,)
    A[c, k]  = softmax_k(cos(e_c, e_k) / T) over the top_k most similar ImageNet names, else 0
    m(x)     = A · q(x)                                            a probability per class
    prior(x) = weight · logit(m(x))      (log(m + eps) - log(1 - m + eps); sigmoid(prior) = m)

Pooled over the whole image, q(x) describes the object that dominates the photo; the bottle on the
table, the remote beside the sofa barely move it. So the classifier also looks at windows of the
feature map (``model.prior.regions``: window sides as fractions of the map's side, 1 the whole
image; the default [1, 0.5, 0.25] looks at the image, at half-size windows, the size of the
classifier's own 224-pixel training crops when images are 448 pixels, and at quarter-size ones).
The windows of one size overlap by half and tile the map; each window is pooled and classified
like the whole image, a class takes its best window (``m_s(x) = max_w A · q(window w)``, multiple
instance pooling: the object need only be in one), and the sizes are averaged in logit space:

    prior(x) = weight · mean_s logit(m_s(x))

Cost: one 1000-way linear layer per window (46 windows at the default on a 14 x 14 map), about
1% beside a backbone's forward pass (benchmarks/prior_windows_cost.py). On cached feature maps,
which do not change from epoch to epoch, the trainer computes it once per image
(``Trainer._memoise_prior`` keeps it in the dataset) rather than at every step.
``regions: [1.0]`` is the whole-image prior alone.

``A`` comes from sentence embeddings (all-MiniLM-L6-v2, offline) of the class names and the
ImageNet category names, and (``model.prior.match: wordnet``, the default) from WordNet: the
ImageNet categories are WordNet synsets, and a class whose name is a WordNet noun with ImageNet
categories under it gets all of them at weight 1 (:func:`with_wordnet`: "dog" holds ImageNet's
118 breeds, where its ten closest names hold 8), so its ``m`` is the probability of any kind of
it. Sentence similarity cannot do this: a breed's name ("Bouvier des Flandres") is not close to
"dog". ``names`` keeps the name neighbours alone.

``MLRModel`` adds ``prior(x)`` to the method's logits, in training (so the method's loss trains
the head as a correction to the prior: with a zero head the model's probabilities are the
prior's) and at inference; its tensors are buffers of the model, so checkpoints, bundles,
``predict`` and ``export`` carry it. The classifier itself never trains.
"""
from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlrpl.errors import ConfigError

EPS = 1e-8


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k category names in the classifier's index order (torchvision's list,
    shipped with the package: no download)."""
    from torchvision.models import ResNet50_Weights
    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def name_similarity(a: np.ndarray, b: np.ndarray) -> torch.Tensor:
    """(len(a), len(b)) cosine similarities between two sets of name embeddings."""
    a = nn.functional.normalize(torch.as_tensor(a, dtype=torch.float32), dim=1)
    return a @ nn.functional.normalize(torch.as_tensor(b, dtype=torch.float32), dim=1).T


def mixing_matrix(class_emb: np.ndarray, source_emb: np.ndarray, top_k: int,
                  temperature: float) -> torch.Tensor:
    """(C, K): row c mixes the `top_k` source classes whose embeddings are most similar to class
    c's (cosine), with weights softmax(similarity / temperature); every other entry is 0."""
    sim = name_similarity(class_emb, source_emb)
    k = min(int(top_k), sim.shape[1])
    top = sim.topk(k, dim=1)
    return torch.zeros_like(sim).scatter(1, top.indices, torch.softmax(top.values / temperature, 1))


WORDNET_TABLE = Path(__file__).with_name("imagenet_wordnet.tsv")


@lru_cache(maxsize=1)
def _wordnet_lemmas() -> dict:
    """lemma -> [(sense rank, synset offset, ImageNet class indices under the synset)], from the
    table of WordNet 3.0 synsets that are ImageNet classes or their hypernyms
    (``imagenet_wordnet.tsv``, written by benchmarks/make_imagenet_wordnet.py)."""
    lemmas: dict = {}
    plurals = {}
    for line in WORDNET_TABLE.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        offset, names, under = line.split("\t")
        if offset == "=":                     # an irregular plural: "knives" -> "knife"
            plurals[names] = under
            continue
        indices = tuple(int(i) for i in under.split(","))
        for entry in names.split(","):
            lemma, rank = entry.rsplit(":", 1)
            lemmas.setdefault(lemma, []).append((int(rank) or 1000, offset, indices))
    for plural, lemma in plurals.items():
        lemmas.setdefault(plural, lemmas.get(lemma, []))
    return lemmas


def wordnet_categories(name: str) -> tuple[int, ...]:
    """The ImageNet class indices that WordNet places under the class name `name`: the name (lower
    case, spaces and hyphens as underscores; else as a singular) is looked up among the
    lemmas of the synsets that are ImageNet classes or hypernyms of one, and its most frequent
    sense among them is taken ("dog": its 118 breeds in ImageNet-1k; "bus": school bus, trolleybus,
    minibus). Plurals are read as their singular ("buses", "ponies", and WordNet's irregular ones:
    "knives"). Empty when WordNet has no such sense ("diningtable", "c07", "romance").

    >>> len(wordnet_categories("dog")), len(wordnet_categories("Dogs")), wordnet_categories("c07")
    (118, 118, ())
    """
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    table = _wordnet_lemmas()
    singular = [key[:-1]] if key.endswith("s") else []          # cars
    if key.endswith("es"):
        singular.append(key[:-2])                               # buses, boxes
    if key.endswith("ies"):
        singular.append(key[:-3] + "y")                         # ponies
    for candidate in (key, *singular):
        if candidate and candidate in table:
            return min(table[candidate])[2]
    return ()


def with_wordnet(mix: torch.Tensor, class_names: list[str]) -> torch.Tensor:
    """(C, K): `mix` with, in each class's row, weight 1 on every ImageNet category WordNet
    places under the class's name (:func:`wordnet_categories`). ``m = A · q`` then holds the
    probability that the image shows any kind of the class, plus the name neighbours' similarity-
    weighted probabilities for the categories outside it (at most 1: q sums to 1 and A <= 1). A
    class WordNet does not know keeps its name-similarity row."""
    out = mix.clone()
    for c, name in enumerate(class_names):
        under = list(wordnet_categories(name))
        if under:
            out[c, under] = 1.0
    return out


def windows(side: int, fraction: float) -> tuple[int, list[int]]:
    """Along one side of `side` cells: the window size (``fraction · side`` rounded half up, at
    least 1 cell) and the start of each window. Windows overlap by half and are spread evenly from
    the first cell to the last, so together they cover the side.

    >>> windows(14, 1.0), windows(14, 0.5), windows(14, 0.25)
    ((14, [0]), (7, [0, 4, 7]), (4, [0, 2, 4, 6, 8, 10]))
    """
    w = min(side, max(1, math.floor(fraction * side + 0.5)))
    if w == side:
        return w, [0]
    n = math.ceil((side - w) / (w / 2)) + 1
    return w, sorted({int(math.floor(o + 0.5)) for o in np.linspace(0, side - w, n)})


class ClassifierPrior(nn.Module):
    """features (B, F, H, W) -> (B, C) prior logits, ``scale · trust_c · mean_s logit(m_s,c)``.

    Buffers: ``classifier_weight`` (K, F) and ``classifier_bias`` (K,), the ImageNet classifier;
    ``mix`` (C, K), the name mixing; ``trust`` (C,), each class's trust in [0, 1] (ones until
    :func:`mlrpl.models.prior_trust.measure_trust` sets it from the known labels); ``regions``
    (S,), the window sizes, kept with the model so a checkpoint scores as it was trained (one
    written before windows existed loads as ``[1.0]``). Pooled features (B, F) hold no windows:
    every size is then the whole image. The input is detached: no gradient reaches the backbone
    through the prior, whatever ``model.freeze`` says, and the classifier never trains."""

    # buffer names of checkpoints written before the classifier's buffers were renamed
    _OLD_NAMES = {"weight": "classifier_weight", "bias": "classifier_bias"}

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, mix: torch.Tensor,
                 scale: float = 1.0, regions=(1.0,)):
        super().__init__()
        if weight.shape[0] != bias.shape[0] or weight.shape[0] != mix.shape[1]:
            raise ValueError(f"prior: classifier {tuple(weight.shape)} / {tuple(bias.shape)} and "
                             f"mixing matrix {tuple(mix.shape)} do not fit")
        self.register_buffer("classifier_weight", weight.float().clone())
        self.register_buffer("classifier_bias", bias.float().clone())
        self.register_buffer("mix", mix.float().clone())
        self.register_buffer("trust", torch.ones(mix.shape[0]))
        self.register_buffer("regions", torch.tensor([float(r) for r in regions]))
        self.scale = float(scale)
        self.closest: dict | None = None   # set by build_prior: class -> (ImageNet name, cosine)
        self.kinds: dict | None = None     # set by build_prior: class -> WordNet's categories

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for old, new in self._OLD_NAMES.items():
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        if prefix + "trust" not in state_dict:       # written before per-class trust: full trust
            state_dict[prefix + "trust"] = torch.ones_like(self.trust)
        if prefix + "regions" not in state_dict:     # written before windows: the whole image
            state_dict[prefix + "regions"] = torch.ones(1)
        # the checkpoint's window sizes, however many the configuration names
        self.regions = torch.empty_like(state_dict[prefix + "regions"], device=self.regions.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def imagenet_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K) q(x): the ImageNet classifier's probabilities (no gradient)."""
        x = features.detach().float()
        if x.dim() == 4:
            x = x.mean(dim=(2, 3))
        return torch.softmax(nn.functional.linear(x, self.classifier_weight, self.classifier_bias), 1)

    def mixed(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C) m(x): the whole image's ImageNet probabilities mixed into each class (no
        gradient)."""
        return self.imagenet_probabilities(features) @ self.mix.T

    def mixed_in_windows(self, features: torch.Tensor, fraction: float) -> torch.Tensor:
        """(B, C) m_s(x): per class, the best of the windows of size `fraction` (no gradient)."""
        x = features.detach().float()
        if x.dim() == 2 or fraction >= 1.0:
            return self.mixed(x)
        (wh, rows), (ww, cols) = windows(x.shape[2], fraction), windows(x.shape[3], fraction)
        pooled = torch.stack([x[:, :, r:r + wh, c:c + ww].mean(dim=(2, 3))
                              for r in rows for c in cols], 1)                   # (B, R, F)
        q = torch.softmax(nn.functional.linear(pooled, self.classifier_weight,
                                               self.classifier_bias), -1)        # (B, R, K)
        return (q @ self.mix.T).amax(dim=1)

    def untrusted(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C) ``scale · mean_s logit(m_s)``: the prior before per-class trust."""
        total = None
        for fraction in self.regions.tolist():
            m = self.mixed_in_windows(features, fraction)
            # m <= 1 in exact arithmetic, but a row of ones (a WordNet kind) sums a confident
            # image's probabilities to 1 or 1 + round-off, whose logit is inf or NaN: the
            # largest value below 1 instead (every m below it is left as it was)
            m = m.clamp(max=1.0 - torch.finfo(m.dtype).eps / 2)
            part = torch.log(m + EPS) - torch.log1p(EPS - m)
            total = part if total is None else total + part
        return self.scale * (total / len(self.regions))

    def forward(self, features: torch.Tensor, untrusted: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C) prior logits; `untrusted` (B, C), when given, is :meth:`untrusted` already
        computed on these `features` (a cached feature map's, memoised by the trainer)."""
        if untrusted is None:
            untrusted = self.untrusted(features)
        return untrusted.to(self.trust.dtype) * self.trust

    def trust_similarity(self, class_names: list[str]) -> list[float]:
        """Per class, the name similarity the trust rule reads: its closest ImageNet name's cosine,
        1 for a name WordNet places ImageNet categories under (named by ImageNet itself)."""
        return [1.0 if (self.kinds or {}).get(c) else self.closest[c][1] for c in class_names]

    def matches(self, class_names: list[str], source_names: list[str], n: int = 3) -> dict:
        """Per class, its `n` heaviest source classes with their mixing weights."""
        top = self.mix.topk(min(n, self.mix.shape[1]), dim=1)
        return {c: [(source_names[int(i)], round(float(w), 3)) for w, i in zip(vs, ix)]
                for c, vs, ix in zip(class_names, top.values, top.indices)}

    def extra_repr(self) -> str:
        return (f"classes={self.mix.shape[0]}, source={self.mix.shape[1]}, "
                f"features={self.classifier_weight.shape[1]}, scale={self.scale}, "
                f"regions={self.regions.tolist()}")


def build_prior(cfg, backbone, classes: list[str], with_data: bool = True):
    """The ``model.prior`` module for `classes` (None for ``none``). ``with_data=False`` (a model
    rebuilt from a checkpoint) makes zero buffers of the right shapes for the checkpoint to fill,
    so neither the classifier weights nor the sentence encoder are needed then."""
    pc = cfg.model.prior
    if pc.name == "none":
        return None
    c, f = len(classes), int(backbone.out_channels)
    if not with_data:
        return ClassifierPrior(torch.zeros(1000, f), torch.zeros(1000), torch.zeros(c, 1000),
                               pc.weight, pc.regions)
    head = getattr(backbone, "imagenet_head", None)
    if head is None:
        raise ConfigError(f"model.prior=imagenet needs the backbone's pretrained ImageNet "
                          f"classifier, and {cfg.model.backbone!r} was built without one "
                          f"(model.pretrained={cfg.model.pretrained!r}); use the backbone's "
                          f"ImageNet weights (efficientnet_lite0, or a torchvision ResNet with "
                          f"pretrained=true or a weight file holding fc.*), or "
                          f"model.prior.name=none")
    from mlrpl.data.embeddings import sentence_embeddings
    source = imagenet_categories()
    ec, es = sentence_embeddings(list(classes)), sentence_embeddings(source)
    mix = mixing_matrix(ec, es, pc.top_k, pc.temperature)
    if pc.match == "wordnet":
        mix = with_wordnet(mix, list(classes))
    prior = ClassifierPrior(head[0], head[1], mix, pc.weight, pc.regions)
    # per class, how many ImageNet categories WordNet placed under its name (what run.json says)
    prior.kinds = ({c: len(wordnet_categories(c)) for c in classes}
                   if pc.match == "wordnet" else None)
    # Each class's closest ImageNet name (cosine similarity): what the run record reports.
    best = name_similarity(ec, es).max(dim=1)
    prior.closest = {c: (source[int(i)], round(float(v), 3))
                     for c, v, i in zip(classes, best.values, best.indices)}
    return prior
