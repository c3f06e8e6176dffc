"""The class prior inside every method: the scores a method thresholds, ranks or recovers labels
from are the scores the model outputs (prior included), and no gradient flows through the prior."""
import pytest
import torch

from mlrpl.engine.experiment import MLRModel
from mlrpl.methods import create_method, list_methods
from mlrpl.methods.clsl import recovery_scores
from mlrpl.methods.sr import confidence_pseudo_labels
from mlrpl.models.prior import ClassifierPrior
from tests.test_anatomy import SMALL_CONFIGS, context
from tests.test_transfer import batch_of

TARGET = [[1, 0, -1, 0], [1, 1, 0, -1], [0, 1, -1, 1]]
# a strong opinion per entry: class 0 and 3 up, 1 and 2 down, different per image
PRIOR = torch.tensor([[6.0, -5.0, -4.0, 3.0], [5.0, -6.0, -3.0, 4.0], [4.0, -4.0, -6.0, 5.0]])


class FixedPrior(torch.nn.Module):
    """A prior that returns fixed logits (and records whether its input carried a graph)."""

    def __init__(self, logits):
        super().__init__()
        self.logits, self.saw_grad = logits, None

    def forward(self, features):
        self.saw_grad = features.requires_grad
        return self.logits


def _model(name, prior):
    torch.manual_seed(0)
    m = create_method(name, context(), **SMALL_CONFIGS[name])
    if hasattr(m, "prototypes"):
        m.prototypes.centres.normal_()
        m.prototypes.valid.fill_(True)
    return MLRModel(torch.nn.Identity(), m, prior)


def _pseudo(out):
    return {k: v for k, v in out.items() if k.startswith("pl_")}


@pytest.mark.parametrize("name", list_methods())
def test_every_method_outputs_its_logits_plus_the_prior(name):
    """Evaluation and training: the model's ``logits`` are the method's plus the prior's, whether
    the method adds them itself (``reads_prior``) or the model adds them after ``forward``."""
    b = batch_of(TARGET, epoch=1)
    plain, fused = _model(name, None), _model(name, FixedPrior(PRIOR))
    fused.load_state_dict(plain.state_dict())
    for train in (False, True):
        plain.train(train), fused.train(train)
        torch.manual_seed(1)
        a = plain(b)
        torch.manual_seed(1)
        f = fused(b)
        torch.testing.assert_close(f["logits"], a["logits"] + PRIOR)
        torch.testing.assert_close(f["prior_logits"], PRIOR)


@pytest.mark.parametrize("name", list_methods())
def test_pseudo_labels_come_from_the_scores_the_model_outputs(name):
    """A method that derives labels from its class scores derives them from logits + prior (the
    prior changes them here); a method whose labels come from feature similarity (sst, hst, the
    blending methods) keeps the same labels, prior or not."""
    b = batch_of(TARGET, epoch=1)
    plain, fused = _model(name, None), _model(name, FixedPrior(PRIOR))
    fused.load_state_dict(plain.state_dict())
    torch.manual_seed(1)
    a = plain.train()(b)
    torch.manual_seed(1)
    f = fused.train()(b)
    m, cfg = fused.method, fused.method.cfg
    if name == "satl":
        torch.testing.assert_close(f["prob"], torch.sigmoid(f["logits"]))
        assert not torch.allclose(f["prob"], a["prob"])
    elif name == "sr":
        pos, neg = confidence_pseudo_labels(torch.sigmoid(f["logits"]), b["target"],
                                            cfg.tau_pos, cfg.tau_neg, cfg.negatives)
        assert torch.equal(f["pl_pos"], pos) and torch.equal(f["pl_neg"], neg)
        assert not (torch.equal(a["pl_pos"], pos) and torch.equal(a["pl_neg"], neg))
    elif name == "clsl":
        r = recovery_scores(f["logits"], float(cfg.temperature), bool(cfg.reference_quirks))
        torch.testing.assert_close(f["recovery"], r)
        assert not torch.allclose(a["recovery"], r)
    else:
        assert not m.reads_prior
        assert _pseudo(a).keys() == _pseudo(f).keys()
        for k in _pseudo(a):
            assert torch.equal(a[k], f[k]), f"{name}: {k} changed with the prior"
    assert m.reads_prior == (name in ("satl", "sr", "clsl"))


@pytest.mark.parametrize("name", ["pbce", "satl"])
def test_no_gradient_flows_through_the_prior(name):
    """Backbone features with a graph (model.freeze: none or hcp): the prior's input is detached,
    so the features' gradient is the method's alone."""
    w = torch.randn(7, 6)
    prior = ClassifierPrior(w, torch.zeros(7), torch.softmax(torch.randn(4, 7), 1))
    feats = torch.randn(3, 6, 4, 4)
    grads = []
    for p in (None, prior):
        model = _model(name, p).eval()
        f = feats.clone().requires_grad_(True)
        model.head(f, None)["logits"].sum().backward()
        grads.append(f.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_checkpoints_with_the_old_buffer_names_still_load():
    """Checkpoints written when the classifier's buffers were called ``weight``/``bias`` (and
    before per-class trust and windows) load into today's prior, with full trust, on the whole
    image."""
    new = ClassifierPrior(torch.randn(5, 3), torch.randn(5), torch.softmax(torch.randn(2, 5), 1))
    old = {"weight": new.classifier_weight.clone(), "bias": new.classifier_bias.clone(),
           "mix": new.mix.clone()}
    fresh = ClassifierPrior(torch.zeros(5, 3), torch.zeros(5), torch.zeros(2, 5))
    fresh.trust.fill_(0.5)
    fresh.load_state_dict(old)
    x = torch.randn(4, 3)
    torch.testing.assert_close(fresh(x), new(x))
    assert set(fresh.state_dict()) == {"classifier_weight", "classifier_bias", "mix", "trust",
                                       "regions"}
    assert fresh.regions.tolist() == [1.0]
