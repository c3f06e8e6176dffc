"""sr (docs/methods/baselines.md#sr): the saliency boost and the confidence pseudo-label rule on
small tensors, the loss terms and pseudo-label counts on a hand case, and a short training run."""
import math

import pytest
import torch

from mlrpl.config import load_config
from mlrpl.engine.trainer import Trainer
from mlrpl.methods.sr import confidence_pseudo_labels, saliency_logits, strong_map_view

from tests.test_engine import tiny


def test_saliency_boost_hand_case():
    cam = torch.tensor([[[[0.0, 1.0], [2.0, 5.0]],          # class 0: mean 2, top-2 mean 3.5
                         [[-1.0, -1.0], [-1.0, 3.0]]]])     # class 1: mean 0, top-2 mean 1
    assert saliency_logits(cam, 0.5, 1.0).tolist() == [[5.5, 1.0]]
    assert saliency_logits(cam, 0.5, 0.0).tolist() == [[2.0, 0.0]]       # no boost: GAP
    assert saliency_logits(cam, 0.25, 2.0).tolist() == [[12.0, 6.0]]     # top-1, doubled
    assert saliency_logits(cam, 0.01, 1.0).tolist() == [[7.0, 3.0]]      # k is at least 1


def test_confidence_pseudo_label_rule():
    p = torch.tensor([[0.95, 0.95, 0.50, 0.01, 0.01, 0.90, 0.05]])
    t = torch.tensor([[0, 1, 0, 0, -1, 0, 0]])
    pos, neg = confidence_pseudo_labels(p, t, 0.9, 0.05)
    assert pos.tolist() == [[True, False, False, False, False, True, False]]   # >= tau_pos
    assert neg.tolist() == [[False, False, False, True, False, False, True]]   # <= tau_neg
    _, neg = confidence_pseudo_labels(p, t, 0.9, 0.05, negatives=False)
    assert not neg.any()


def test_strong_view_flips_drops_whole_locations_and_adds_scaled_noise():
    x = torch.arange(2 * 2 * 2 * 3, dtype=torch.float32).view(2, 2, 2, 3)
    assert torch.equal(strong_map_view(x, 0.0, 0.0, False), x)              # nothing asked
    # flip only: each sample is itself or its horizontal mirror, drawn from torch's generator
    torch.manual_seed(0)                   # torch.rand(2) = [0.4963, 0.7682]: flip sample 0 only
    y = strong_map_view(x, 0.0, 0.0, True)
    assert torch.equal(y[0], x[0].flip(-1)) and torch.equal(y[1], x[1])
    assert y[0, 0].tolist() == [[2.0, 1.0, 0.0], [5.0, 4.0, 3.0]]
    # drop only: whole locations (every channel) zeroed, the others scaled by 1 / (1 - drop)
    torch.manual_seed(0)
    y = strong_map_view(x, 0.5, 0.0, False)
    torch.manual_seed(0)
    keep = (torch.rand(2, 1, 2, 3) >= 0.5).float()
    assert torch.equal(y, x * keep * 2.0)
    assert 0 < int(keep.sum()) < keep.numel()          # this draw both keeps and drops
    # noise only: x + noise * std(x) * N(0, 1), the same draw as torch.randn_like
    torch.manual_seed(0)
    y = strong_map_view(x, 0.0, 0.1, False)
    torch.manual_seed(0)
    torch.testing.assert_close(y, x + 0.1 * x.std() * torch.randn_like(x), rtol=0, atol=1e-6)


def _sr_hand_case(**cfg):
    """An sr whose CAM is the identity on a 3-channel map (class c = channel c), top-1 boost."""
    from mlrpl.methods import create_method
    from mlrpl.methods.base import MethodContext
    ctx = MethodContext(num_classes=3, feature_channels=3, class_names=["a", "b", "c"])
    m = create_method("sr", ctx, **{"topk": 0.25, "boost": 1.0, "tau_pos": 0.9, "tau_neg": 0.05,
                                    "start_epoch": 1, "map_drop": 0.0, "map_noise": 0.0,
                                    "map_flip": False, **cfg}).train()
    with torch.no_grad():
        m.cam.weight.copy_(torch.eye(3)[:, :, None, None])
        m.cam.bias.zero_()
    maps = torch.zeros(2, 3, 2, 2)
    maps[0, 0] = torch.tensor([[0.0, 1.0], [2.0, 5.0]])        # mean 2 + top-1 5 = 7
    maps[0, 1] = torch.tensor([[-1.0, -1.0], [-1.0, -5.0]])    # mean -2 + top-1 -1 = -3
    maps[1, 1] = 1.0                                            # 1 + 1 = 2; zeros: 0
    batch = {"target": torch.tensor([[0, 0, 0], [1, -1, 0]], dtype=torch.int8),
             "full": torch.tensor([[1, -1, 1], [1, -1, -1]], dtype=torch.int8), "epoch": 1}
    return m, maps, batch


def test_sr_pseudo_labels_and_loss_terms_hand_case():
    """Saliency logits [[7, -3, 0], [0, 2, 0]]: p(7) = 0.9991 >= 0.9 -> pseudo-positive,
    p(-3) = 0.0474 <= 0.05 -> pseudo-negative, p(0) = 0.5 neither; row 1's confident entries are
    known and never pseudo-labelled. No augmentation: the strong view's logits are the same."""
    m, maps, batch = _sr_hand_case(known_strong_weight=0.5, consistency_weight=2.0)
    out = m(maps, batch)
    assert out["logits"].tolist() == [[7.0, -3.0, 0.0], [0.0, 2.0, 0.0]]
    assert torch.equal(out["logits_strong"], out["logits"])
    assert out["pl_pos"].tolist() == [[True, False, False], [False, False, False]]
    assert out["pl_neg"].tolist() == [[False, True, False], [False, False, False]]

    def sp(z):                                       # softplus: -log sigmoid(-z)
        return math.log1p(math.exp(z))
    known = (sp(-0.0) + sp(2.0)) / 2                 # row 1: positive at 0, negative at 2
    pseudo = (sp(-7.0) + sp(-3.0)) / 2               # row 0: positive at 7, negative at -3
    terms = m.loss(out, batch, epoch=1)
    assert terms["bce"].item() == pytest.approx(known, abs=1e-6)
    assert terms["known_strong"].item() == pytest.approx(0.5 * known, abs=1e-6)
    # the consistency term scores the pseudo-labelled entries only (known ones are in the two
    # terms above)
    assert terms["consistency"].item() == pytest.approx(2.0 * pseudo, abs=1e-6)
    assert m.loss(out, batch, epoch=0)["consistency"].item() == 0            # before E0
    # update_state counts against the hidden labels: both pseudo-labels right; of the hidden
    # positives among unknown entries (row 0: classes 0 and 2) one found, of the hidden
    # negatives (row 0 class 1, row 1 class 2) one found
    m.update_state(out, batch)
    stats = m.epoch_stats()
    assert (stats["pl_pos_n"], stats["pl_pos_precision"], stats["pl_pos_recall"]) == (1, 100, 50)
    assert (stats["pl_neg_n"], stats["pl_neg_precision"], stats["pl_neg_recall"]) == (1, 100, 50)
    m.update_state(out, {**batch, "epoch": 0})                                # before E0: no count
    assert m.epoch_stats()["pl_pos_n"] == 0


def test_sr_thresholds_boost_and_negatives_switch():
    m, maps, batch = _sr_hand_case(tau_pos=0.5, tau_neg=0.3, negatives=False)
    out = m(maps, batch)
    assert out["pl_pos"].tolist() == [[True, False, True], [False, False, True]]  # p >= 0.5
    assert not out["pl_neg"].any()
    m, maps, batch = _sr_hand_case(boost=0.0, tau_pos=0.85, tau_neg=0.15)  # GAP: [2, -2, 0]
    out = m(maps, batch)
    assert out["logits"][0].tolist() == [2.0, -2.0, 0.0]
    assert out["pl_pos"][0].tolist() == [True, False, False]                 # p(2) = 0.881
    assert out["pl_neg"][0].tolist() == [False, True, False]                 # p(-2) = 0.119
    m.eval()
    assert set(m(maps, batch)) == {"logits"}                # evaluation: no view, no pseudo-labels


def test_sr_trains(shapes, cache_dir, tmp_path):
    run = tmp_path / "sr"
    r = Trainer(load_config(None, tiny(shapes, cache_dir, run, "method.name=sr",
                                       "method.start_epoch=1"))).fit()
    assert r["epochs"] == 2
    import csv
    rows = list(csv.DictReader(open(run / "summary.csv")))
    assert float(rows[0]["loss_consistency"]) == 0 and rows[0]["pl_pos_n"] == "0"   # before E0
    # from E0 on: pseudo-labels are made and counted, and the consistency term is on
    assert int(rows[1]["pl_pos_n"]) + int(rows[1]["pl_neg_n"]) > 0
    assert float(rows[1]["loss_consistency"]) > 0
    # the three terms are the total (the loop optimises their sum)
    for row in rows:
        parts = sum(float(row[k]) for k in ("loss_bce", "loss_known_strong", "loss_consistency"))
        assert float(row["loss_total"]) == pytest.approx(parts, rel=1e-4)
