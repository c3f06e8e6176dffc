"""SST / HST and their shared pieces (mlrpl.methods.components, sst, hst)."""
import csv
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mlrpl.losses import cooccurrence_focal, instance_contrastive
from mlrpl.methods import get_method_class
from mlrpl.methods.base import MethodContext
from mlrpl.methods.components.transfer import IntraImageTransfer, intra_scores, intra_scores_dense
from mlrpl.methods.components.memory_bank import MemoryBank
from mlrpl.methods.components.prototypes import kmeans_prototypes, kmeans_seed
from mlrpl.methods.components.pseudo_labels import PseudoLabelQuality
from mlrpl.methods.components.transfer import TransferConfig
from mlrpl.methods.components.transfer import sst_threshold


def build(name, num_classes=4, feature_channels=6, **overrides):
    cls = get_method_class(name)
    cfg = OmegaConf.merge(OmegaConf.structured(cls.Config),
                          {"name": name, "trunk": {"dim": 8, "attention_dim": 4}, **overrides})
    rng = np.random.default_rng(0)
    ctx = MethodContext(num_classes=num_classes, feature_channels=feature_channels,
                          class_names=[f"c{i}" for i in range(num_classes)],
                          partial_labels=None,
                          embeddings=rng.normal(size=(num_classes, 5)).astype(np.float32))
    return cls(cfg, ctx)


def batch_of(target, full=None, features=None, epoch=0, channels=6, seed=0):
    target = torch.as_tensor(target, dtype=torch.int8)
    g = torch.Generator().manual_seed(seed)
    if features is None:
        features = torch.randn(target.shape[0], channels, 4, 4, generator=g)
    return {"features": features, "target": target,
            "full": target if full is None else torch.as_tensor(full, dtype=torch.int8),
            "index": torch.arange(target.shape[0]), "epoch": epoch, "step": 3,
            "steps_per_epoch": 4}


# ---- co-occurrence loss, q^intra, efficient vs dense IST -----------------------------------------
def test_cooccurrence_focal_hand_case():
    logits = torch.tensor([0.0, 0.0, math.log(3.0), -10.0])   # p = .5, .5, .75, ~0
    t = torch.tensor([1.0, 0.0, 0.0, 0.0])
    got = cooccurrence_focal(logits, t)
    # t=1: -(1-p) log p; t=0: -p_m^2 log(1-p_m), p_m = max(p - 0.05, 0)
    want = [-0.5 * math.log(0.5), -0.45 ** 2 * math.log(0.55), -0.7 ** 2 * math.log(0.3), 0.0]
    assert got.tolist() == pytest.approx(want, abs=1e-6)


def test_cooccurrence_loss_targets_and_mean():
    torch.manual_seed(0)
    ist = IntraImageTransfer(TransferConfig(dense=True), 3, 4)
    sem = torch.randn(2, 3, 4)
    target = torch.tensor([[1, 1, 0], [1, 0, 1]])
    loss, q = ist(sem, target)
    assert q is None
    logits = ist.head.dense_logits(sem)                 # pairs (0,1), (0,2), (1,2)
    t = torch.tensor([[1.0, 0, 0], [0, 1, 0]])          # only both-known-positive pairs
    assert loss.item() == pytest.approx(cooccurrence_focal(logits, t).mean().item(), abs=1e-6)


def test_intra_scores_hand_case():
    P = torch.tensor([[[1.0, 0.8, 0.2], [0.8, 1.0, 0.6], [0.2, 0.6, 1.0]]]).repeat(2, 1, 1)
    target = torch.tensor([[1, 1, 0], [0, -1, 0]])
    q = intra_scores_dense(P, target)
    # image 0, K+ = {0, 1}: q_0 = (1 + .8)/2, q_1 = (.8 + 1)/2, q_2 = (.2 + .6)/2; image 1: none -> 0
    assert q[0].tolist() == pytest.approx([0.9, 0.9, 0.4])
    assert q[1].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("mode", ["all", "sample"])
def test_efficient_ist_equals_dense(mode):
    torch.manual_seed(0)
    C, D, B = 6, 10, 4
    cfg = TransferConfig(cooc_pairs=mode, cooc_sample=100)   # sample >= pairs: every pair
    eff = IntraImageTransfer(cfg, C, D)
    ref = IntraImageTransfer(TransferConfig(dense=True), C, D)
    ref.load_state_dict(eff.state_dict())
    sem = torch.randn(B, C, D)
    target = torch.tensor([[1, 1, 0, -1, 0, 1], [1, 0, 0, 1, 1, 0], [-1, 0, 0, 0, 0, -1],
                           [0, 1, 0, 0, -1, 0]])
    entries = torch.rand(B, C) < 0.6
    results = []
    for m in (eff, ref):
        x = sem.clone().requires_grad_(True)
        loss, q = m(x, target, entries=entries)
        (loss + (q * torch.arange(1.0, C + 1)).sum()).backward()
        results.append((loss, q, x.grad, {k: p.grad for k, p in m.named_parameters()}))
    (l1, q1, gx1, gp1), (l2, q2, gx2, gp2) = results
    assert torch.allclose(l1, l2, atol=1e-6) and torch.allclose(q1, q2, atol=1e-6)
    assert (q1[~entries] == 0).all()
    assert torch.allclose(gx1, gx2, atol=1e-6)
    for k in gp1:
        assert torch.allclose(gp1[k], gp2[k], atol=1e-6), k
    # the pair matrix: P symmetric, unit diagonal, the factorised logits are the literal ones
    head = eff.head
    u, v = head.project(sem)
    assert torch.allclose(head.all_pair_logits(u, v), head.dense_logits(sem), atol=1e-5)
    P = head.matrix(head.dense_logits(sem))
    assert torch.allclose(P, P.transpose(1, 2)) and (P.diagonal(dim1=1, dim2=2) == 1).all()
    assert torch.allclose(intra_scores(head, u, v, target, entries),
                          intra_scores_dense(P, target) * entries, atol=1e-6)


def test_sampled_cooccurrence_loss_is_unbiased_and_keeps_positive_pairs():
    torch.manual_seed(0)
    C, D = 8, 6                                              # 28 pairs
    ist = IntraImageTransfer(TransferConfig(cooc_pairs="sample", cooc_sample=5), C, D)
    full = IntraImageTransfer(TransferConfig(), C, D)
    full.load_state_dict(ist.state_dict())
    sem = torch.randn(3, C, D)
    target = torch.tensor([[1, 1, 1, 0, -1, 0, 0, 0], [0] * 8, [1, -1, 0, 1, 0, 0, 1, 0]])
    exact = full(sem, target)[0].item()
    # Each image draws its own sample: a batch of R copies gives the mean of R estimates.
    R = 3000
    with torch.no_grad():
        mean_of_draws = ist(sem.repeat(R, 1, 1), target.repeat(R, 1))[0].item()
        one_draw = [ist(sem, target)[0].item() for _ in range(5)]
    assert mean_of_draws == pytest.approx(exact, rel=0.01)
    assert len(set(one_draw)) > 1                            # it is a sample
    # positive pairs always in: with every pair known-negative-free and all positive, exact
    allpos = torch.ones(1, C, dtype=torch.long)
    assert ist(sem[:1], allpos)[0].item() == pytest.approx(full(sem[:1], allpos)[0].item(), abs=1e-6)


# ---- instance contrastive loss ----------------------------------------------------------------
def test_instance_contrastive_hand_case():
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    diag = torch.tensor([1.0, 1.0])
    # 3 images x 2 classes x D = 2
    F_ = torch.stack([torch.stack([e0, e0]), torch.stack([e0, e1]), torch.stack([diag, e0])])
    # class 0: y = (+1, +1, -1); class 1: y = (-1, 0, -1)
    y = torch.tensor([[1, -1], [1, 0], [-1, -1]])
    c45 = 1 / math.sqrt(2)
    # pos-pos: (0,1,c0) d=1 -> 0. pos-neg: (0,2,c0) 1+c45, (1,2,c0) 1+c45. neg-neg: (0,2,c1) 1+1.
    # P = 1: pos-neg -> both (2P random covers all n=2) + the largest; neg-neg -> itself + itself.
    want = (0 + 3 * (1 + c45) + 2 * 2) / 6
    assert instance_contrastive(F_, y).item() == pytest.approx(want, abs=1e-6)
    # unknown entries take no part: moving image 1's class-1 feature changes nothing
    F2 = F_.clone()
    F2[1, 1] = torch.tensor([-3.0, 0.5])
    assert instance_contrastive(F2, y).item() == pytest.approx(want, abs=1e-6)
    # without any pos-pos term every term is kept: class 0 of image 1 made unknown
    y0 = torch.tensor([[1, -1], [0, 0], [-1, -1]])
    assert instance_contrastive(F_, y0).item() == pytest.approx(((1 + c45) + 2) / 2, abs=1e-6)
    assert instance_contrastive(F_, torch.zeros(3, 2)).item() == 0.0
    # gradients flow to the features
    x = F_.clone().requires_grad_(True)
    instance_contrastive(x, y).backward()
    assert x.grad.abs().sum() > 0


# ---- SST: bank, threshold ---------------------------------------------------------------------
def test_memory_bank_fifo_order():
    bank = MemoryBank(num_classes=2, size=3, dim=1)
    f = lambda *vals: torch.tensor(vals, dtype=torch.float32).view(-1, 1, 1).repeat(1, 2, 1)
    bank.update(f(1, 2), torch.tensor([[1, 0], [1, 1]]))
    assert bank.ordered(0).flatten().tolist() == [1, 2]      # batch order first, newest first
    assert bank.ordered(1).flatten().tolist() == [2]
    bank.update(f(3, 4), torch.tensor([[1, 0], [1, 0]]))
    assert bank.ordered(0).flatten().tolist() == [3, 4, 1]   # 2 (oldest) evicted
    bank.update(f(5, 6, 7, 8), torch.tensor([[1, 0], [1, 0], [1, 0], [1, 0]]))
    assert bank.ordered(0).flatten().tolist() == [5, 6, 7]   # more than E: the first E kept
    assert bank.ordered(1).flatten().tolist() == [2] and bank.count.tolist() == [3, 1]
    # q^inter: mean over all E slots, empty slots count 0
    q = bank.scores(torch.ones(1, 2, 1))
    assert q.tolist()[0] == pytest.approx([1.0, 1 / 3])


def test_sst_bank_includes_the_current_batch():
    m = build("sst", num_classes=2, start_epoch=0, bank_size=1).train()
    feats = torch.randn(1, 6, 4, 4).repeat(2, 1, 1, 1)       # identical images
    b = batch_of([[1, 0], [0, 0]], features=feats, epoch=0)
    out = m(b["features"], b)
    # the bank was empty: only the current batch's known positive can make q^inter = 1
    assert out["pl_inter"].tolist() == [[False, False], [True, False]]
    assert m.bank.count.sum() == 0                          # forward changed nothing ...
    m.update_state(out, b)                                  # ... the loop's update does
    assert torch.allclose(m.bank.features[0, 0], out["semantic"][0, 0].detach())


def test_sst_bank_buffers_are_left_to_the_bank_under_ddp():
    """The names the trainer gives DDP to leave alone are the bank's buffers, as the model names
    them, and nothing else."""
    from mlrpl.engine.trainer import self_synced_buffers
    m = build("sst", num_classes=3)
    wrapper = torch.nn.Module()
    wrapper.method = m
    names = self_synced_buffers(wrapper)
    assert sorted(names) == ["method.bank.count", "method.bank.features", "method.bank.head"]
    assert set(names) <= dict(wrapper.named_buffers()).keys()
    assert self_synced_buffers(build("ssgrl", num_classes=3)) == []


def test_sst_threshold_schedule():
    assert [round(sst_threshold(e, 5), 4) for e in range(20)] == \
        [0.95] * 6 + [0.925, 0.9, 0.875, 0.85, 0.825, 0.8, 0.775] + [0.75] * 7
    assert sst_threshold(3, 1, 0.9, 0.1, 0.5) == pytest.approx(0.7)


def test_sst_loss_terms_and_schedule():
    m = build("sst", num_classes=4, start_epoch=1).train()
    b = batch_of([[1, 0, -1, 0], [1, 1, 0, -1]], epoch=0)
    out = m(b["features"], b)
    terms = m.loss(out, b, 0)
    assert set(terms) == {"bce", "cooc", "contrast", "bce_intra", "bce_inter"}
    assert terms["bce_intra"].item() == 0 and "pl_intra" not in out
    # epoch-0 ramp: step 3 of 4
    assert terms["cooc"].item() == pytest.approx(10 * 0.75 * out["cooc"].item())
    b1 = batch_of([[1, 0, -1, 0], [1, 1, 0, -1]], epoch=1)
    out1 = m(b1["features"], b1)
    assert out1["pl_intra"].dtype == torch.bool and not (out1["pl_intra"] & (b1["target"] != 0)).any()
    sum(m.loss(out1, b1, 1).values()).backward()


# ---- HST: DTL, prototypes ---------------------------------------------------------------------
def test_dtl_gradient_reaches_thresholds():
    m = build("hst", num_classes=3, start_epoch=0, threshold_init=0.2).train()
    m.prototypes.centres.normal_()
    m.prototypes.valid.fill_(True)
    # image 0: class 0 is its only known positive -> q^intra_0 = P_00 = 1 > θ
    b = batch_of([[1, -1, 0], [1, 1, -1]], epoch=0)
    out = m(b["features"], b)
    assert {"dtl_intra", "dtl_inter", "proto", "pl_intra", "pl_inter"} <= set(out)
    sum(m.loss(out, b, 0).values()).backward()
    assert m.threshold_intra.grad is not None and m.threshold_intra.grad.abs() > 0
    assert m.threshold_inter.grad is not None
    assert m.ist.head.fc2.weight.grad.abs().sum() > 0


def test_thresholds_weight_decay_groups():
    m = build("hst")
    groups = m.param_groups()
    assert len(groups) == 2 and groups[1]["weight_decay"] == 0.0
    assert groups[1]["params"][0] is m.threshold_intra and m.threshold_intra.item() == pytest.approx(0.95)
    assert all(p is not m.threshold_intra for p in groups[0]["params"])
    q = build("hst", reference_quirks=True)
    groups = q.param_groups()
    assert len(groups) == 1 and "weight_decay" not in groups[0]
    assert any(p is q.threshold_inter for p in groups[0]["params"])
    assert q.threshold_intra.item() == 1.0 and q.threshold_inter.item() == 1.0
    n_all = sum(1 for p in m.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in m.param_groups()) == n_all


def test_prototype_loss_sign():
    default, quirk = build("hst", num_classes=2), build("hst", num_classes=2, reference_quirks=True)
    has = torch.tensor([True, True])
    target = torch.tensor([[1, 0]])
    close = torch.tensor([[0.95, 0.3]])        # g: class 0 known positive near its prototypes
    assert default.prototype_loss(close, target, has).item() == pytest.approx(0.05)   # low
    # released: mean over both entries of 1 + y g -> (1.95 + 1) / 2: high, pushes it away
    assert quirk.prototype_loss(close, target, has).item() == pytest.approx(1.475)
    neg = torch.tensor([[-1, 0]])
    assert default.prototype_loss(close, neg, has).item() == pytest.approx(1.95)


def test_kmeans_prototypes_shape_mask_determinism():
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(size=(20, 4)) + 5, rng.normal(size=(2, 4)) - 5])
    classes = np.array([0] * 20 + [2] * 2)
    p1, v1 = kmeans_prototypes(feats, classes, num_classes=3, k=4, random_state=kmeans_seed(0, 5),
                               n_init=2)
    p2, v2 = kmeans_prototypes(feats, classes, num_classes=3, k=4, random_state=kmeans_seed(0, 5),
                               n_init=2)
    assert p1.shape == (3, 4, 4) and v1.dtype == torch.bool
    assert v1.tolist() == [[True] * 4, [False] * 4, [True, True, False, False]]
    assert (p1[1] == 0).all() and (p1[2, 2:] == 0).all()
    assert torch.equal(p1, p2) and torch.equal(v1, v2)
    # 2 points, 2 clusters: the centres are the points
    assert sorted(p1[2, :2, 0].tolist()) == pytest.approx(sorted(feats[20:, 0].tolist()), abs=1e-5)
    assert kmeans_seed(0, 5) != kmeans_seed(0, 10) != kmeans_seed(1, 5)


# ---- pseudo-label quality ---------------------------------------------------------------------
def test_pseudo_label_quality_hand_case():
    q = PseudoLabelQuality(["intra"], ["a", "b"])
    target = torch.tensor([[0, 0], [1, 0], [0, -1]])
    full = torch.tensor([[1, -1], [1, 1], [1, -1]])
    pseudo = torch.tensor([[True, True], [True, False], [False, True]])
    # counted (unknown only): (0,a) right, (0,b) wrong; (1,a) and (2,b) are known: ignored
    q.update("intra", pseudo, target, full)
    s = q.compute()
    assert s["pl_intra_n"] == 2 and s["pl_intra_precision"] == pytest.approx(50.0)
    # hidden positives seen: (0,a), (1,b), (2,a) -> 1 of 3 labelled
    assert s["pl_intra_recall"] == pytest.approx(100 / 3)
    assert s["pl_intra_precision/a"] == 100.0 and s["pl_intra_recall/a"] == 50.0
    assert s["pl_intra_precision/b"] == 0.0 and s["pl_intra_recall/b"] == 0.0
    assert s["pl_intra_n/a"] == 1
    q.reset()
    s = q.compute()
    assert s["pl_intra_n"] == 0 and math.isnan(s["pl_intra_precision"])


# ---- end to end through the Trainer -----------------------------------------------------------
def _rows(run_dir):
    with open(run_dir / "summary.csv") as fh:
        return list(csv.DictReader(fh))


def _embeddings(tmp_path):
    names = ["red_circle", "green_square", "blue_triangle", "yellow_star", "white_ring",
             "purple_cross"]
    emb = tmp_path / "emb.npy"
    np.save(emb, np.random.default_rng(0).normal(size=(6, 7)).astype("f4"))
    (tmp_path / "emb.names.txt").write_text("\n".join(names) + "\n")
    return emb


def train_twice_with_resume(shapes, cache_dir, tmp_path, method, extra):
    """Train a SARL-trunk method for 2 epochs on the tiny shapes set (E0 = 1) in one go (a) and as
    1 + resume + 1 (b); assert every saved tensor is bitwise equal (NaN equal to NaN).
    Returns (run dir a, checkpoint a, summary rows a, summary rows b)."""
    from mlrpl.cli import main
    from mlrpl.config import load_config
    from mlrpl.engine.checkpoint import load_checkpoint
    from mlrpl.engine.trainer import Trainer
    from tests.test_engine import tiny
    args = [f"method.name={method}", "method.trunk.dim=32", "method.trunk.attention_dim=16",
            "method.start_epoch=1", f"data.embeddings={_embeddings(tmp_path)}", *extra]
    a, b = tmp_path / "a", tmp_path / "b"
    Trainer(load_config(None, tiny(shapes, cache_dir, a, *args))).fit()
    Trainer(load_config(None, tiny(shapes, cache_dir, b, *args, "train.stop_after_epochs=1"))).fit()
    assert main(["train", "--resume", "--run-dir", str(b)]) == 0
    ka, kb = (load_checkpoint(p / "last.pt") for p in (a, b))
    assert ka["model"].keys() == kb["model"].keys()
    for k in ka["model"]:
        torch.testing.assert_close(ka["model"][k], kb["model"][k], rtol=0, atol=0, equal_nan=True)
    return a, ka, _rows(a), _rows(b)


@pytest.mark.parametrize("method, extra", [
    ("sst", ["method.bank_size=4", "method.threshold_start=0.3", "method.cooc_pairs=sample",
             "method.cooc_sample=6"]),
    ("hst", ["method.prototype_interval=1", "method.num_prototypes=3", "method.kmeans_n_init=2",
             "method.threshold_init=0.3"]),
])
def test_trains_and_resumes_exactly(shapes, cache_dir, tmp_path, method, extra):
    a, ka, ra, rb = train_twice_with_resume(shapes, cache_dir, tmp_path, method, extra)
    assert len(ra) == 2
    for key in ("loss_bce", "loss_cooc", "loss_contrast", "loss_bce_intra", "mAP", "pl_intra_n",
                "pl_inter_n", "pl_inter_precision", "pl_intra_recall/red_circle"):
        assert [x[key] for x in ra] == [x[key] for x in rb], key
    # pseudo-labelling starts at E0 = 1
    assert ra[0]["pl_intra_n"] == "0" and ra[0]["pl_intra_precision"] == "nan"
    assert float(ra[1]["loss_bce_intra"]) > 0
    assert int(ra[1]["pl_intra_n"]) > 0 and int(ra[1]["pl_inter_n"]) > 0
    assert 0 <= float(ra[1]["pl_inter_precision"]) <= 100
    assert sum(int(ra[1][f"pl_inter_n/{c}"]) for c in ("red_circle", "green_square", "blue_triangle",
               "yellow_star", "white_ring", "purple_cross")) == int(ra[1]["pl_inter_n"])
    # a model rebuilt from the checkpoint alone (no data, no embeddings) predicts the same
    from mlrpl.engine.evaluate import evaluate_checkpoint
    again = evaluate_checkpoint(a / "last.pt")
    assert again["metrics"]["mAP"] == pytest.approx(float(ra[-1]["mAP"]), abs=1e-3)
    state = ka["model"]
    if method == "sst":
        assert state["method.bank.count"].sum() > 0                     # the bank filled up
    else:
        assert state["method.prototypes.epoch"].item() == 1
        assert state["method.prototypes.valid"].any()
        assert float(ra[1]["loss_prototype"]) > 0
        assert "threshold_intra" in ra[1]


_DDP_SCRIPT = r'''
import json, sys
import numpy as np, torch, torch.distributed as td
from mlrpl.config import load_config
from mlrpl.engine.trainer import Trainer
from mlrpl.methods.components.prototypes import collect_positive_features
from tests.test_transfer import state_differs_from_rank0
common, out = json.loads(sys.argv[1]), sys.argv[2]
report = {}
for method, extra in (("sst", ["method.bank_size=4", "method.threshold_start=0.3",
                               "method.cooc_pairs=sample", "method.cooc_sample=5"]),
                      ("hst", ["method.prototype_interval=1", "method.num_prototypes=3",
                               "method.threshold_init=0.3"])):
    t = Trainer(load_config(None, common + [f"run.dir={out}/{method}", f"method.name={method}",
                                            *extra]))
    t.fit()
    differs = state_differs_from_rank0(t.model.method)
    row = t.history[-1]
    report[method] = {"differs": differs, "pl": [row["pl_intra_n"], row["pl_inter_n"]],
                      "not_broadcast": sorted(getattr(t.model, "_ddp_params_and_buffers_to_ignore",
                                                      []))}
    if method == "hst":
        feats, classes = collect_positive_features(t.epoch_context(t.epoch))
        b, c = np.nonzero(t.exp.partial > 0)
        ds = t.train_ds
        t.model.eval()
        with torch.no_grad():
            sem = t.model.method.trunk(torch.stack([ds[i]["features"] for i in range(len(ds))]))["semantic"]
        report["collect"] = {"classes": classes.tolist() == c.tolist(),
                             "features": bool(torch.allclose(feats, sem[b, c], atol=1e-5))}
json.dump(report, open(f"{out}/report{td.get_rank()}.json", "w"))
'''


@pytest.mark.slow
def test_two_gloo_processes_share_bank_prototypes_and_statistics(shapes, cache_dir, tmp_path):
    """Under DDP every process holds the same method state (bank, prototypes, thresholds, pseudo-
    label statistics); the prototype pass sees each known positive once, in dataset order."""
    reports = run_two_gloo_processes(_DDP_SCRIPT, shapes, cache_dir, tmp_path)
    for rep in reports:
        for method in ("sst", "hst"):
            # BatchNorm running statistics are per process in DDP; nothing else may differ
            assert [k for k in rep[method]["differs"] if "running_" not in k] == [], method
        # sst's bank is not broadcast by DDP (each process keeps it equal by itself: above)
        assert rep["sst"]["not_broadcast"] == ["method.bank.count", "method.bank.features",
                                              "method.bank.head"]
        assert rep["hst"]["not_broadcast"] == []
        assert rep["collect"] == {"classes": True, "features": True}
    assert reports[0]["sst"]["pl"] == reports[1]["sst"]["pl"]
    assert reports[0]["hst"]["pl"] == reports[1]["hst"]["pl"]
    assert reports[0]["hst"]["pl"][0] > 0


def run_two_gloo_processes(script_text: str, shapes, cache_dir, tmp_path) -> list[dict]:
    """Run ``script_text`` under torchrun with 2 gloo processes on the tiny shapes set (small
    SARL trunk, E0 = 1) and return each rank's ``report<rank>.json``."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.test_engine import tiny
    script = tmp_path / "ddp_script.py"
    # leave the process group explicitly: gloo's threads torn down at interpreter exit can
    # abort a process ("terminate called without an active exception") after its work is done
    script.write_text(script_text + "\ntd.barrier()\ntd.destroy_process_group()\n")
    common = [a for a in tiny(shapes, cache_dir, tmp_path / "unused") if not a.startswith("run.dir")]
    common += ["method.trunk.dim=32", "method.trunk.attention_dim=16", "method.start_epoch=1",
               f"data.embeddings={_embeddings(tmp_path)}", "train.eval_batch_size=5"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), json.dumps(common), str(tmp_path)]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    reports = [tmp_path / f"report{i}.json" for i in (0, 1)]
    # gloo's threads can still abort a process at teardown, after the barrier that follows the
    # reports ("terminate called without an active exception", seen on a loaded machine): the
    # work is done and checked below; any other failure fails here
    teardown_only = (all(p.is_file() for p in reports)
                     and "terminate called without an active exception" in r.stderr
                     and "Traceback" not in r.stderr.split("terminate called")[0])
    assert r.returncode == 0 or teardown_only, r.stdout[-3000:] + r.stderr[-3000:]
    return [json.loads(p.read_text()) for p in reports]


def state_differs_from_rank0(module) -> list[str]:
    """Inside a process group: the names of ``module``'s tensors that differ from rank 0's."""
    import torch.distributed as td
    differs = []
    for k, v in module.state_dict().items():
        x = v.detach().clone().float()
        y = x.clone()
        td.broadcast(y, 0)
        if not torch.equal(x, y):
            differs.append(k)
    return differs
