"""The co-occurrence loss's unknown pairs (docs/methods/sst.md D3): ``cooc_unknown: negative``
(released: a pair with an unknown label is "never co-occur") or ``ignore`` (only pairs of two
known labels)."""
import pytest
import torch

from mlrpl.errors import ConfigError
from mlrpl.losses import cooccurrence_focal
from mlrpl.methods.components.transfer import IntraImageTransfer
from mlrpl.methods.components.transfer import TransferConfig


def test_ignore_supervises_only_known_pairs_and_negative_is_released():
    torch.manual_seed(0)
    sem = torch.randn(2, 3, 4)
    target = torch.tensor([[1, 1, 0], [1, -1, -1]])   # pairs (0,1), (0,2), (1,2)
    neg = IntraImageTransfer(TransferConfig(dense=True), 3, 4)
    ign = IntraImageTransfer(TransferConfig(dense=True, cooc_unknown="ignore"), 3, 4)
    ign.load_state_dict(neg.state_dict())
    logits = neg.head.dense_logits(sem)
    t = torch.tensor([[1.0, 0, 0], [0, 0, 0]])
    terms = cooccurrence_focal(logits, t)
    assert neg(sem, target)[0].item() == pytest.approx(terms.mean().item(), abs=1e-6)
    keep = torch.tensor([[True, False, False], [True, True, True]])   # image 0: 2 unknown pairs
    assert ign(sem, target)[0].item() == pytest.approx(terms[keep].mean().item(), abs=1e-6)


@pytest.mark.parametrize("mode", ["all", "sample"])
def test_ignore_efficient_paths_equal_dense(mode):
    torch.manual_seed(0)
    C, D = 6, 5
    eff = IntraImageTransfer(TransferConfig(cooc_pairs=mode, cooc_sample=100,
                                            cooc_unknown="ignore"), C, D)
    ref = IntraImageTransfer(TransferConfig(dense=True, cooc_unknown="ignore"), C, D)
    ref.load_state_dict(eff.state_dict())
    sem = torch.randn(3, C, D)
    target = torch.tensor([[1, 1, 0, -1, 0, 1], [1, 0, 0, 1, 1, 0], [-1, 0, 0, 0, 0, -1]])
    assert eff(sem, target)[0].item() == pytest.approx(ref(sem, target)[0].item(), abs=1e-6)


def test_sampled_ignore_is_unbiased():
    torch.manual_seed(0)
    C, D = 8, 6
    ist = IntraImageTransfer(TransferConfig(cooc_sample=4, cooc_unknown="ignore"), C, D)
    full = IntraImageTransfer(TransferConfig(cooc_pairs="all", cooc_unknown="ignore"), C, D)
    full.load_state_dict(ist.state_dict())
    sem = torch.randn(2, C, D)
    target = torch.tensor([[1, 1, -1, 0, -1, -1, 0, -1], [1, -1, -1, 1, 0, -1, -1, 0]])
    R = 3000
    with torch.no_grad():
        est = ist(sem.repeat(R, 1, 1), target.repeat(R, 1))[0].item()
    assert est == pytest.approx(full(sem, target)[0].item(), rel=0.01)


def test_bad_value_is_an_error():
    with pytest.raises(ConfigError, match="cooc_unknown"):
        IntraImageTransfer(TransferConfig(cooc_unknown="maybe"), 3, 4)
