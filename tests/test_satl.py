"""SATL: thresholds from score distributions, the ranking loss, the method and its state."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlrpl.errors import ConfigError
from mlrpl.losses import ranking_loss
from mlrpl.methods.components.pseudo_labels import (SATLThresholdConfig, ScoreDistributions,
                                                    check_threshold_config,
                                                    distribution_thresholds)
from mlrpl.methods.components.transfer import CooccurrenceHead, intra_scores, leave_one_out_intra
from tests.test_transfer import batch_of, build, train_twice_with_resume


def hist(values, bins=10, lo=0.0, hi=1.0):
    h = torch.zeros(bins, dtype=torch.float64)
    for v in values:
        h[min(int((v - lo) / (hi - lo) * bins), bins - 1)] += 1
    return h


# ---- thresholds from distributions ---------------------------------------------------------------
def test_separated_class_gets_thresholds_between_the_distributions():
    pos = hist([0.81, 0.83, 0.85, 0.88, 0.72, 0.91])
    neg = hist([0.05, 0.12, 0.15, 0.18, 0.22, 0.08, 0.11, 0.3])
    tp, tn, dec = distribution_thresholds(pos[None], neg[None], torch.tensor([0.5]), 0.95, 0.95)
    # every positive >= 0.7, every negative < 0.4: both thresholds lie in the gap [0.4, 0.7]
    assert 0.4 <= float(tp) <= 0.7
    assert 0.4 <= float(tn) <= 0.7
    assert float(tn) <= float(tp)
    assert 0.4 <= float(dec) <= 0.7
    # the lowest edge from which precision holds: 0.4 (bins 0.4-0.7 are empty); the highest edge
    # up to which NPV holds: 0.7 (the first positive bin starts there)
    assert float(tp) == pytest.approx(0.4) and float(tn) == pytest.approx(0.4)


def test_quantile_bounds_keep_thresholds_next_to_the_known_scores():
    # far apart: positives at 0.9-1.0, negatives at 0-0.1; the targets hold anywhere in between
    pos = hist([0.91, 0.93, 0.95, 0.97, 0.99] * 4)
    neg = hist([0.01, 0.03, 0.05, 0.07, 0.09] * 10)
    tp, tn, _ = distribution_thresholds(pos[None], neg[None], torch.tensor([0.3]))
    assert float(tp) == pytest.approx(0.1) and float(tn) == pytest.approx(0.1)
    tp, tn, _ = distribution_thresholds(pos[None], neg[None], torch.tensor([0.3]),
                                        positive_quantile=0.1, negative_quantile=0.9)
    assert float(tp) == pytest.approx(0.9)    # at most 10% of the known positives below it
    assert float(tn) == pytest.approx(0.1)    # at least 90% of the known negatives below it
    pos2 = hist([0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95, 0.96, 0.97, 0.98])
    neg2 = hist([0.02, 0.04, 0.06, 0.08, 0.11, 0.13, 0.15, 0.17, 0.19, 0.25])
    tp, tn, _ = distribution_thresholds(pos2[None], neg2[None], torch.tensor([0.5]),
                                        positive_quantile=0.1, negative_quantile=0.9)
    assert float(tp) == pytest.approx(0.4)    # 1 of 10 positives (10%) below 0.4
    assert float(tn) == pytest.approx(0.2)    # 9 of 10 negatives below 0.2


def test_hand_case_precision_and_npv_edges():
    # 4 bins on [0, 1]; prior 0.5. positives: bins [0, 1, 1, 8]/10; negatives: [6, 2, 1, 1]/10
    pos = torch.tensor([[0.0, 1.0, 1.0, 8.0]], dtype=torch.float64)
    neg = torch.tensor([[6.0, 2.0, 1.0, 1.0]], dtype=torch.float64)
    # precision at edge 0.75: 0.8 / (0.8 + 0.1) = 0.889; at 0.5: 0.9 / 1.1; never 0.95 -> none
    tp, tn, dec = distribution_thresholds(pos, neg, torch.tensor([0.5]), 0.95, 0.95)
    assert math.isinf(float(tp)) and float(tp) > 0
    # NPV below 0.25: 0.6 / 0.6 = 1 >= 0.95; below 0.5: 0.8 / 0.9 < 0.95 -> tau_neg = 0.25
    assert float(tn) == pytest.approx(0.25)
    # target 0.85: precision 0.889 at 0.75 and 0.818 at 0.5 -> tau_pos = 0.75
    tp, tn, _ = distribution_thresholds(pos, neg, torch.tensor([0.5]), 0.85, 0.85)
    assert float(tp) == pytest.approx(0.75)
    # NPV below 0.5 = 0.889 >= 0.85, below 0.75 = 0.9 / 1.1 = 0.818 -> 0.5
    assert float(tn) == pytest.approx(0.5)
    # F1 at edges 0, .25, .5, .75: 2TP / (2TP + FP + FN) -> best at 0.25 (TP .5, FP .2, FN 0)
    f1 = [2 * 0.5 / (1 + 0.5), 2 * 0.5 / (1 + 0.2), 2 * 0.45 / (0.9 + 0.1 + 0.05),
          2 * 0.4 / (0.8 + 0.05 + 0.1)]
    assert float(dec) == pytest.approx(0.25 * int(np.argmax(f1)))


def test_inseparable_class_makes_no_pseudo_labels():
    same = torch.tensor([[3.0, 5.0, 5.0, 3.0]], dtype=torch.float64)
    tp, tn, _ = distribution_thresholds(same, same.clone(), torch.tensor([0.5]), 0.95, 0.95)
    assert math.isinf(float(tp)) and float(tp) > 0
    assert math.isinf(float(tn)) and float(tn) < 0


def test_prior_moves_the_thresholds():
    pos = hist([0.55, 0.65, 0.75, 0.85, 0.95])
    neg = hist([0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65])
    rare, _, _ = distribution_thresholds(pos[None], neg[None], torch.tensor([0.05]), 0.9, 0.9)
    common, _, _ = distribution_thresholds(pos[None], neg[None], torch.tensor([0.5]), 0.9, 0.9)
    assert float(rare) >= float(common)   # a rare class needs a higher score for the same precision


def _dists(known_pos=(10, 10), known_neg=(10, 10), **cfg):
    c = len(known_pos)
    labels = np.zeros((max(known_pos) + max(known_neg), c), dtype=np.int8)
    for j in range(c):
        labels[:known_pos[j], j] = 1
        labels[known_pos[j]:known_pos[j] + known_neg[j], j] = -1
    return ScoreDistributions(SATLThresholdConfig(bins=10, **cfg), ["cls"], c, labels)


def test_update_bins_decay_and_pseudo_labels():
    d = _dists(momentum=0.5)
    scores = torch.tensor([[0.95, 0.91], [0.05, 0.5], [0.5, 0.5]])
    target = torch.tensor([[1, 0], [-1, -1], [0, 1]], dtype=torch.int8)
    d.update("cls", scores, target)
    assert d.pos[0, 0, 9] == 1 and d.neg[0, 0, 0] == 1 and d.pos[0, 1, 5] == 1 and d.neg[0, 1, 5] == 1
    assert d.pos[0].sum() == 2 and d.neg[0].sum() == 2           # the unknown entries not counted
    d.update("cls", scores, torch.zeros_like(target))
    assert d.pos[0, 0, 9] == 0.5                                 # decayed, nothing added
    # class 0 separates (pos 0.9-1, neg 0-0.1); class 1 does not (both at 0.5)
    assert 0.1 <= float(d.tau_pos[0, 0]) <= 0.9 and math.isinf(float(d.tau_pos[0, 1]))
    probe = torch.tensor([[0.97, 0.99], [0.02, 0.01], [0.97, 0.5]])
    known = torch.tensor([[0, 0], [0, 0], [1, 0]], dtype=torch.int8)
    pos, neg = d.pseudo_labels("cls", probe, known)
    assert pos.tolist() == [[True, False], [False, False], [False, False]]   # known entry skipped
    assert neg.tolist() == [[False, False], [True, False], [False, False]]


def test_classes_with_too_few_known_positives_make_none():
    d = _dists(known_pos=(4, 10), min_positives=5)
    scores = torch.tensor([[0.95, 0.95], [0.05, 0.05]])
    target = torch.tensor([[1, 1], [-1, -1]], dtype=torch.int8)
    for _ in range(3):
        d.update("cls", scores, target)
    assert math.isinf(float(d.tau_pos[0, 0])) and math.isinf(float(d.tau_neg[0, 0]))
    assert math.isfinite(float(d.tau_pos[0, 1])) and math.isfinite(float(d.tau_neg[0, 1]))
    pos, neg = d.pseudo_labels("cls", torch.tensor([[0.99, 0.99], [0.0, 0.0]]),
                               torch.zeros(2, 2, dtype=torch.int8))
    assert not pos[:, 0].any() and not neg[:, 0].any()
    assert pos[0, 1] and neg[1, 1]
    assert d.stats()["satl_cls_pos_classes"] == 1


def test_config_checks():
    with pytest.raises(ConfigError, match="method.satl.target_precision"):
        check_threshold_config(SATLThresholdConfig(target_precision=1.5))
    with pytest.raises(ConfigError, match="method.satl.momentum"):
        check_threshold_config(SATLThresholdConfig(momentum=1.0))


# ---- ranking loss ----------------------------------------------------------------------------------
def test_ranking_loss_value_and_gradient():
    s = torch.tensor([[2.0, 0.5], [0.0, 1.0], [1.0, -1.0]], requires_grad=True)
    y = torch.tensor([[1, -1], [-1, 1], [0, -1]], dtype=torch.int8)
    loss = ranking_loss(s, y, margin=0.5, temperature=2.0)
    # class 0: pos {0}, neg {1} -> softplus((0 - 2 + .5) / 2); class 1: pos {1}, neg {0, 2}
    sp = F.softplus
    c0 = sp(torch.tensor((0.0 - 2.0 + 0.5) / 2))
    c1 = (sp(torch.tensor((0.5 - 1.0 + 0.5) / 2)) + sp(torch.tensor((-1.0 - 1.0 + 0.5) / 2))) / 2
    assert float(loss.detach()) == pytest.approx(float((c0 + c1) / 2), rel=1e-6)
    loss.backward()
    sig = torch.sigmoid
    # d/ds_00 = -sig(-0.75) / 2 (T) / 2 (classes); d/ds_10 = +sig(-0.75) / 4; unknown row 2: 0
    assert float(s.grad[0, 0]) == pytest.approx(-float(sig(torch.tensor(-0.75))) / 4, rel=1e-5)
    assert float(s.grad[1, 0]) == pytest.approx(float(sig(torch.tensor(-0.75))) / 4, rel=1e-5)
    assert float(s.grad[2, 0]) == 0.0
    # class 1: the positive (row 1) gets -(sig(0) + sig(-0.75)) / 2 / 2 / 2
    expect = -(float(sig(torch.tensor(0.0))) + float(sig(torch.tensor(-0.75)))) / 8
    assert float(s.grad[1, 1]) == pytest.approx(expect, rel=1e-5)
    # a batch without a (positive, negative) pair: 0 with a graph
    z = ranking_loss(s, torch.tensor([[1, 0], [1, 0], [0, 0]], dtype=torch.int8))
    assert float(z.detach()) == 0.0 and z.requires_grad


def test_leave_one_out_intra_scores():
    torch.manual_seed(0)
    head = CooccurrenceHead(4, 6)
    sem = torch.randn(2, 4, 6)
    target = torch.tensor([[1, 1, 0, -1], [1, 0, -1, 0]], dtype=torch.int8)
    u, v = head.project(sem)
    q = intra_scores(head, u, v, target, torch.ones(2, 4, dtype=torch.bool)).detach()
    loo, valid = leave_one_out_intra(q, target)
    P = head.matrix(head.dense_logits(sem)).detach()
    assert float(loo[0, 0]) == pytest.approx(float(P[0, 0, 1]), abs=1e-6)   # the other positive
    assert float(loo[0, 2]) == pytest.approx(float(q[0, 2]), abs=1e-6)
    assert valid[0].all()
    assert not valid[1, 0] and valid[1, 1:].all()   # a lone positive has no other to score it


# ---- the method: training, pseudo-labels, exact resume, thresholds at evaluation ----------------
def test_satl_forward_makes_pseudo_labels_after_e0():
    m = build("satl", start_epoch=1, satl={"min_positives": 1, "bins": 10})
    m.train()
    target = torch.tensor([[1, -1, 0, 0], [-1, 1, 0, 0], [0, 0, 1, -1]], dtype=torch.int8)
    b0 = batch_of(target, epoch=0)
    out = m(b0["features"], b0)
    assert "pl_pos" not in out and m.distributions.updates[0] == 0   # forward is pure
    m.update_state(out, b0)
    assert m.distributions.updates[0] == 1
    out = m(batch_of(target)["features"], batch_of(target, epoch=1))
    assert out["pl_pos"].shape == target.shape
    assert not (out["pl_pos"] & (target != 0)).any() and not (out["pl_neg"] & (target != 0)).any()
    terms = m.loss(out, batch_of(target, epoch=1), 1)
    assert set(terms) == {"bce", "bce_pseudo", "rank"} and float(terms["rank"].detach()) > 0


@pytest.mark.parametrize("method, extra", [
    ("satl", ["method.satl.min_positives=1", "method.satl.target_precision=0.6",
              "method.satl.target_npv=0.6", "method.satl.bins=10"]),
    ("hst", ["method.thresholds=satl", "method.satl.min_positives=1",
             "method.satl.target_precision=0.5", "method.prototype_interval=1",
             "method.num_prototypes=2", "method.kmeans_n_init=1"]),
])
def test_trains_and_resumes_exactly(shapes, cache_dir, tmp_path, method, extra):
    from mlrpl.cli import main
    from mlrpl.engine.evaluate import evaluate_checkpoint
    a, ka, ra, rb = train_twice_with_resume(shapes, cache_dir, tmp_path, method, extra)
    state = ka["model"]
    hist_keys = [k for k in state if k.startswith("method.distributions.")]
    assert "method.distributions.pos" in hist_keys and state["method.distributions.pos"].sum() > 0
    assert int(state["method.distributions.start_epoch"]) == 1      # snapshot at E0
    if method == "satl":
        for key in ("loss_rank", "loss_bce_pseudo", "pl_pos_n", "pl_neg_precision", "mAP",
                    "satl_cls_pos_classes"):
            assert [x[key] for x in ra] == [x[key] for x in rb], key
        assert ra[0]["pl_pos_n"] == "0"
        assert int(ra[1]["pl_neg_n"]) > 0 and float(ra[1]["loss_bce_pseudo"]) > 0
        assert 0 <= float(ra[1]["pl_neg_precision"]) <= 100
        # the saved thresholds serve the thresholded metrics of `mlrpl eval --model-thresholds`
        plain = evaluate_checkpoint(a / "last.pt")
        thr = evaluate_checkpoint(a / "last.pt", model_thresholds=True)
        assert thr["metrics"]["mAP"] == pytest.approx(plain["metrics"]["mAP"])
        assert thr["thresholds"].shape == (6,)
        # ... and export as per-class JSON, loadable by --thresholds
        out = tmp_path / "thr.json"
        assert main(["thresholds", "--checkpoint", str(a / "last.pt"), "--out", str(out),
                     "--plot", str(tmp_path / "hist.png")]) == 0
        table = json.loads(out.read_text())
        assert set(table["thresholds"]) == {"red_circle", "green_square", "blue_triangle",
                                             "yellow_star", "white_ring", "purple_cross"}
        assert table["sources"]["cls"]["classes"]["red_circle"]["known_positives"] > 0
        assert (tmp_path / "hist.png").stat().st_size > 1000
        again = evaluate_checkpoint(a / "last.pt", thresholds_file=out)
        assert again["metrics"]["CF1"] == pytest.approx(thr["metrics"]["CF1"])
    else:
        for key in ("pl_intra_n", "pl_inter_n", "satl_intra_pos_classes", "loss_prototype"):
            assert [x[key] for x in ra] == [x[key] for x in rb], key
        assert "threshold_intra" not in ra[1]
        assert float(ra[1]["loss_dtl_intra"]) == 0.0
        assert int(ra[1]["satl_intra_pos_classes"]) >= 0
        with pytest.raises(Exception, match="no thresholds"):
            evaluate_checkpoint(a / "last.pt", model_thresholds=True)


_DDP = r"""
import sys, torch, torch.distributed as td
from mlrpl.methods.components.pseudo_labels import SATLThresholdConfig, ScoreDistributions
rank, world, path = int(sys.argv[1]), 2, sys.argv[2]
td.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
g = torch.Generator().manual_seed(0)
scores = torch.rand(8, 3, generator=g)
target = torch.randint(-1, 2, (8, 3), generator=g).to(torch.int8)
d = ScoreDistributions(SATLThresholdConfig(bins=8, min_positives=1), ["cls"], 3,
                       torch.ones(10, 3, dtype=torch.int8))
mine = slice(0, 4) if rank == 0 else slice(4, 8)
for _ in range(3):
    d.update("cls", scores[mine], target[mine])
one = ScoreDistributions(SATLThresholdConfig(bins=8, min_positives=1), ["cls"], 3,
                         torch.ones(10, 3, dtype=torch.int8))
# the single-process reference on the whole batch (computed without the process group)
import mlrpl.utils.dist as D
D_is = D.is_dist
D.is_dist = lambda: False
for _ in range(3):
    one.update("cls", scores, target)
D.is_dist = D_is
for k, v in d.state_dict().items():
    torch.testing.assert_close(v, one.state_dict()[k], rtol=0, atol=0, equal_nan=True), k
print("ok", rank)
td.barrier()
td.destroy_process_group()
"""


@pytest.mark.slow
def test_distributions_all_reduced_over_two_processes(tmp_path):
    import subprocess
    import sys
    script = tmp_path / "ddp.py"
    script.write_text(_DDP)
    store = tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(store)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert "ok 0" in outs[0] and "ok 1" in outs[1]
