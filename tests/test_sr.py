"""sr (issue 15): the saliency boost and the confidence pseudo-label rule on small tensors, and a
short training run."""
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


def test_strong_view_changes_maps_but_not_shape():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5)
    y = strong_map_view(x, 0.3, 0.1, True)
    assert y.shape == x.shape and not torch.equal(x, y)
    assert torch.equal(strong_map_view(x, 0.0, 0.0, False), x)


def test_sr_trains(shapes, cache_dir, tmp_path):
    run = tmp_path / "sr"
    r = Trainer(load_config(None, tiny(shapes, cache_dir, run, "method.name=sr",
                                       "method.start_epoch=1"))).fit()
    assert r["epochs"] == 2
    import csv
    rows = list(csv.DictReader(open(run / "summary.csv")))
    assert float(rows[0]["loss_consistency"]) == 0 and "pl_pos_n" in rows[1]
