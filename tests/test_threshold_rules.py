"""The threshold rules of sst and hst (mlrpl/methods/components/transfer.py), through their one
interface, on hand-made scores; and which rule each method holds."""
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from mlrpl.losses import partial_bce
from mlrpl.methods.components.pseudo_labels import SATLThresholdConfig, ScoreDistributions
from mlrpl.methods.components.transfer import (DistributionThresholds, LearnedThresholds,
                                               ScheduledThreshold, leave_one_out_intra,
                                               sst_threshold)
from mlrpl.methods.sst import SSTConfig
from tests.test_transfer import batch_of, build

TARGET = torch.tensor([[1, 0, -1, 0], [0, 1, 0, -1]], dtype=torch.int8)
SCORES = torch.tensor([[0.95, 0.90, 0.99, 0.40], [0.80, 0.30, 0.97, 0.92]])


def test_scheduled_rule_labels_unknown_entries_at_the_epoch_threshold():
    cfg = OmegaConf.structured(SSTConfig(start_epoch=1, threshold_start=0.95,
                                         threshold_step=0.1, threshold_min=0.75))
    rule = ScheduledThreshold(cfg)
    unknown = TARGET == 0
    assert not rule.grad
    assert rule.entries(unknown, active=False) is None
    assert torch.equal(rule.entries(unknown, active=True), unknown)   # unknown entries only
    out = {}
    rule.observe(out, "intra", SCORES, TARGET)                         # observes nothing
    assert out == {}
    # epoch 1 (E0): θ = 0.95; epoch 2: θ = 0.85 (q >= θ, unknown entries only: 0.99 is known)
    assert rule.threshold(2) == sst_threshold(2, 1, 0.95, 0.1, 0.75) == pytest.approx(0.85)
    assert rule.positives(out, "intra", SCORES, TARGET, 1).tolist() == \
        [[False, False, False, False], [False, False, True, False]]
    assert rule.positives(out, "inter", SCORES, TARGET, 2).tolist() == \
        [[False, True, False, False], [False, False, True, False]]
    assert out == {}                                                   # no loss
    assert rule.stats() == {}                                          # no step seen yet
    rule.update({}, {"epoch": 2})
    assert rule.stats() == {"pl_threshold": pytest.approx(0.85)}
    rule.update({}, {"epoch": 0})
    assert math.isnan(rule.stats()["pl_threshold"])                    # before E0


@pytest.mark.parametrize("quirks", [False, True])
def test_learned_rule_scores_clipped_differences_and_trains_theta(quirks):
    holder = nn.Module()
    rule = LearnedThresholds(holder, 0.9 if not quirks else None, quirks)
    assert set(dict(holder.named_parameters())) == {"threshold_intra", "threshold_inter"}
    assert holder.threshold_intra.item() == pytest.approx(0.9 if not quirks else 1.0)
    holder.threshold_inter.data.fill_(0.85)
    assert rule.grad and rule.entries(TARGET == 0, True).all()        # every entry, with grad
    assert rule.entries(TARGET == 0, False) is None
    q = SCORES.clone().requires_grad_(True)
    out = {}
    valid = torch.tensor([[True, True, True, True], [True, True, False, True]])
    pl = rule.positives(out, "inter", q, TARGET, 3, valid)
    s = (SCORES - 0.85).clamp(0, 1)
    assert torch.allclose(out["dtl_inter"], partial_bce(s, TARGET * valid))
    # positive: unknown, valid and q > θ (0.90 and 0.97 are above θ; (1, 2) has no score)
    assert pl.tolist() == [[False, True, False, False], [False, False, False, False]]
    out["dtl_inter"].backward()
    assert holder.threshold_inter.grad is not None and holder.threshold_inter.grad.abs() > 0
    assert holder.threshold_intra.grad is None
    assert rule.stats() == {"threshold_intra": pytest.approx(0.9 if not quirks else 1.0),
                            "threshold_inter": pytest.approx(0.85)}
    other = nn.Linear(2, 2)
    params = list(other.parameters()) + list(holder.parameters())
    groups = rule.param_groups(params)
    thetas = [holder.threshold_intra, holder.threshold_inter]
    if quirks:   # one group, θ last, decayed like every weight
        assert len(groups) == 1 and groups[0]["params"][-2:] == thetas
    else:
        assert len(groups) == 2 and groups[1]["params"] == thetas
        assert groups[1]["weight_decay"] == 0.0 and groups[0]["params"] == list(other.parameters())


def test_distribution_rule_gives_the_distributions_positives():
    cfg = SATLThresholdConfig(bins=10, min_positives=1)
    torch.manual_seed(0)
    d = ScoreDistributions(cfg, ["intra", "inter"], 4, torch.ones(5, 4, dtype=torch.int8))
    rule = DistributionThresholds(d, start_epoch=1)
    # some history, so that some classes have thresholds
    for _ in range(3):
        scores = torch.rand(6, 4)
        target = torch.randint(-1, 2, (6, 4), dtype=torch.int8)
        scores = torch.where(target > 0, 0.7 + 0.3 * scores, 0.5 * scores)
        d.update("inter", scores, target)
        d.update("intra", scores, target)
    assert not rule.grad and rule.entries(TARGET == 0, False).all()
    out = {}
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    rule.observe(out, "intra", SCORES, TARGET)
    rule.observe(out, "inter", lambda: SCORES * 0.9, TARGET, valid)    # computed when observed
    assert list(out["observed"]) == ["intra", "inter"]
    loo, loo_valid = leave_one_out_intra(SCORES, TARGET)                 # intra: leave-one-out
    assert torch.equal(out["observed"]["intra"][0], loo)
    assert torch.equal(out["observed"]["intra"][1], loo_valid)
    assert torch.equal(out["observed"]["inter"][0], SCORES * 0.9)
    for source, seen, seen_valid in (("intra", loo, loo_valid), ("inter", SCORES * 0.9, valid)):
        taus = d.preview(source, seen, TARGET, seen_valid)
        want = d.pseudo_labels(source, SCORES, TARGET, taus)[0]
        assert torch.equal(rule.positives(out, source, SCORES, TARGET, 2), want)
        mask = torch.tensor([[True, False, True, True], [True, True, True, False]])
        assert torch.equal(rule.positives(out, source, SCORES, TARGET, 2, mask), want & mask)
    assert rule.positives(out, "intra", SCORES, TARGET, 2).any()         # the case is not empty
    before = d.updates.clone()
    rule.update(out, {"target": TARGET})
    assert (d.updates == before + 1).all()
    assert rule.stats() == pytest.approx(d.stats(), nan_ok=True)


def test_sst_and_hst_hold_their_own_rule_or_the_distribution_rule():
    sst, hst = build("sst"), build("hst")
    assert type(sst.rule) is ScheduledThreshold and sst.distributions is None
    assert type(hst.rule) is LearnedThresholds and hst.rule.holder is hst
    for name in ("sst", "hst"):
        m = build(name, thresholds="satl")
        assert type(m.rule) is DistributionThresholds and m.rule.distributions is m.distributions
    # hst keeps θ (checkpoint names) and its optimiser groups with either rule
    h = build("hst", thresholds="satl")
    assert {"threshold_intra", "threshold_inter"} <= set(h.state_dict())
    assert any(k.startswith("distributions.") for k in h.state_dict())
    sizes = [[len(g["params"]) for g in m.param_groups()] for m in (h, hst)]
    assert sizes[0] == sizes[1] and len(sizes[0]) == 2


@pytest.mark.parametrize("name", ["sst", "hst"])
@pytest.mark.parametrize("thresholds", ["own", "satl"])
def test_the_methods_call_the_rule_the_same_way(name, thresholds):
    """One training step of either method with either rule: the pseudo-labels are the rule's, on
    unknown entries only, and the stats end with the rule's."""
    m = build(name, start_epoch=0, thresholds=thresholds, satl={"min_positives": 1},
              **({"threshold_start": 0.1} if name == "sst" else {"threshold_init": 0.1})).train()
    if name == "hst":
        m.prototypes.centres.normal_()
        m.prototypes.valid.fill_(True)
    b = batch_of([[1, 0, -1, 0], [1, 1, 0, -1], [0, 1, -1, 1]], epoch=1)
    out = m(b["features"], b)
    assert {"pl_intra", "pl_inter"} <= set(out)
    assert not ((out["pl_intra"] | out["pl_inter"]) & (b["target"] != 0)).any()
    assert ("observed" in out) == (thresholds == "satl")
    assert ("dtl_intra" in out) == (name == "hst" and thresholds == "own")
    m.update_state(out, b)
    stats = m.epoch_stats()
    assert set(m.rule.stats()) <= set(stats)
    assert ("pl_threshold" in stats) == (name == "sst" and thresholds == "own")
    assert ("threshold_intra" in stats) == (name == "hst" and thresholds == "own")
