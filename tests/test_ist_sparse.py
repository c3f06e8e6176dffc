"""The IST head's sparse pair set (docs/methods/sst.md D7) and the memory bank's per-step cost:
every pair when ``trunk.graph_k`` >= C - 1 (the released head, unchanged), else the symmetrised
top-k pairs of the training labels' co-occurrence graph, P_ij = 0 off the set; the set travels with
checkpoints."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mlrpl.data.stats import cooccurrence_graph, top_k_neighbours
from mlrpl.engine.checkpoint import load_model_state
from mlrpl.losses import cooccurrence_focal
from mlrpl.methods import get_method_class
from mlrpl.methods.base import MethodContext
from mlrpl.methods.components.memory_bank import MemoryBank, class_means
from mlrpl.methods.components.prototypes import cosine_to_mean
from mlrpl.methods.components.transfer import (IntraImageTransfer, TransferConfig, intra_scores,
                                               intra_scores_dense, ist_pairs)

CHANNELS = 6


def partial_labels(num_classes, n=200, seed=0):
    """(n, C) int8 partial labels, about 30% known, a tenth of them positive."""
    rng = np.random.default_rng(seed)
    known = rng.random((n, num_classes)) < 0.3
    return np.where(known, np.where(rng.random((n, num_classes)) < 0.1, 1, -1), 0).astype(np.int8)


def targets(batch, num_classes, seed=0, known=0.5, positive=0.3):
    g = torch.Generator().manual_seed(seed)
    sign = torch.where(torch.rand(batch, num_classes, generator=g) < positive, 1, -1)
    return torch.where(torch.rand(batch, num_classes, generator=g) < known, sign, 0)


def build(name, num_classes, partial=None, graph_k=32, state_shapes=None, seed=0, **overrides):
    cls = get_method_class(name)
    trunk = {"dim": 8, "attention_dim": 4, "graph_k": graph_k}
    cfg = OmegaConf.merge(OmegaConf.structured(cls.Config),
                          {"name": name, "trunk": trunk, **overrides})
    words = np.random.default_rng(0).normal(size=(num_classes, 5)).astype("f4")
    ctx = MethodContext(num_classes=num_classes, feature_channels=CHANNELS,
                        class_names=[f"c{i}" for i in range(num_classes)], partial_labels=partial,
                        embeddings=words, state_shapes=state_shapes)
    torch.manual_seed(seed)
    return cls(cfg, ctx)


def sparse_ist(num_classes, k, cfg=None, dim=6, seed=0):
    pairs = ist_pairs(partial_labels(num_classes), k)
    torch.manual_seed(seed)
    return IntraImageTransfer(cfg or TransferConfig(), num_classes, dim, pairs)


def ist_outputs(ist, sem, target, entries, seed=0):
    """(loss, q, gradient of the semantic features) of one call, its sampling seeded."""
    x = sem.clone().requires_grad_(True)
    torch.manual_seed(seed)
    loss, q = ist(x, target, entries=entries)
    (loss + (q * torch.arange(1.0, q.shape[1] + 1)).sum()).backward()
    return loss.detach(), q.detach(), x.grad


# ---- k >= C - 1: every pair, the released head --------------------------------------------------
def test_k_at_least_c_minus_1_is_every_pair_and_changes_nothing():
    C, B = 80, 3
    partial = partial_labels(C)
    assert ist_pairs(partial, None) is None and ist_pairs(partial, C - 1) is None
    every = build("sst", C, partial, graph_k=None, cooc_pairs="all")
    k79 = build("sst", C, partial, graph_k=C - 1, cooc_pairs="all")
    no_labels = build("sst", C, None, cooc_pairs="all")
    head = every.ist.head
    assert head.num_pairs == C * (C - 1) // 2 == head.pairs.weight.shape[0]
    assert "ist.head.pair_ij" not in every.state_dict()                  # nothing new is saved
    for other in (k79, no_labels):   # the same parameter draws (no labels: an identity graph)
        assert other.state_dict().keys() == every.state_dict().keys()
        for key, value in every.state_dict().items():
            assert key == "trunk.graph" and other is no_labels or torch.equal(
                value, other.state_dict()[key]), key
    dense = IntraImageTransfer(TransferConfig(dense=True), C, every.trunk.dim)
    dense.load_state_dict(every.ist.state_dict())
    sem, target = torch.randn(B, C, every.trunk.dim), targets(B, C)
    entries = torch.rand(B, C) < 0.5
    l1, q1, g1 = ist_outputs(every.ist, sem, target, entries)
    l2, q2, g2 = ist_outputs(k79.ist, sem, target, entries)
    assert torch.equal(l1, l2) and torch.equal(q1, q2) and torch.equal(g1, g2)
    l3, q3, g3 = ist_outputs(dense, sem, target, entries)
    torch.testing.assert_close((l1, q1, g1), (l3, q3, g3), rtol=0, atol=1e-6)


# ---- small k: the pair set ----------------------------------------------------------------------
def test_kept_pairs_are_the_symmetrised_top_k_mask():
    C, k = 30, 3
    partial = partial_labels(C)
    ist = sparse_ist(C, k)
    head = ist.head
    near = top_k_neighbours(cooccurrence_graph(partial), k)
    want = (near | near.T) & ~np.eye(C, dtype=bool)
    assert head.num_pairs == int(np.triu(want).sum()) < C * (C - 1) // 2
    assert head.pairs.weight.shape == (head.num_pairs, head.hidden_dim)
    assert head.pairs.bias.shape == (head.num_pairs,)
    assert np.array_equal((head.pair_lookup >= 0).numpy(), want)
    i, j = head.pair_i, head.pair_j
    assert (i < j).all() and ((i[1:] > i[:-1]) | ((i[1:] == i[:-1]) & (j[1:] > j[:-1]))).all()
    assert torch.equal(head.pair_lookup[i, j], torch.arange(head.num_pairs))
    assert torch.equal(head.pair_lookup[j, i], torch.arange(head.num_pairs))
    assert (head.pair_lookup.diagonal() == -1).all()


def test_pairs_outside_the_set_have_zero_probability_and_no_loss():
    C, k, B = 20, 2, 4
    torch.manual_seed(0)
    ist = sparse_ist(C, k, TransferConfig(cooc_pairs="all"))
    head = ist.head
    outside = (head.pair_lookup < 0) & ~torch.eye(C, dtype=torch.bool)
    a, b = [int(x) for x in outside.nonzero()[0]]
    sem = torch.randn(B, C, 6)
    target = targets(B, C)
    target[:, [a, b]] = 1                                       # a known-positive pair off the set
    P = head.matrix(head.dense_logits(sem))
    assert (P[:, outside] == 0).all() and (P.diagonal(dim1=1, dim2=2) == 1).all()
    # the loss: the mean over the kept pairs only
    pos = target > 0
    t = pos[:, head.pair_i] & pos[:, head.pair_j]
    want = cooccurrence_focal(head.dense_logits(sem), t).mean()
    assert ist(sem, target)[0].item() == pytest.approx(want.item(), abs=1e-6)
    # q^intra: P_ab = 0 adds nothing; by hand over the kept pairs
    entries = torch.ones(B, C, dtype=torch.bool)
    u, v = head.project(sem)
    q = intra_scores(head, u, v, target, entries)
    by_hand = torch.stack([(P[n] * pos[n].float()).sum(-1) / pos[n].sum().clamp(min=1)
                           for n in range(B)])
    torch.testing.assert_close(q, by_hand, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode, unknown", [("all", "negative"), ("sample", "negative"),
                                           ("all", "ignore"), ("sample", "ignore")])
def test_sparse_efficient_paths_equal_the_dense_reference(mode, unknown):
    C, k, B = 24, 3, 4
    eff = sparse_ist(C, k, TransferConfig(cooc_pairs=mode, cooc_sample=10_000,
                                          cooc_unknown=unknown))
    ref = sparse_ist(C, k, TransferConfig(dense=True, cooc_unknown=unknown), seed=1)
    ref.load_state_dict(eff.state_dict())
    sem, target = torch.randn(B, C, 6), targets(B, C, seed=1)
    entries = torch.rand(B, C) < 0.6
    got, want = ist_outputs(eff, sem, target, entries), ist_outputs(ref, sem, target, entries)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (got[1][~entries] == 0).all()
    head = eff.head
    u, v = head.project(sem)
    torch.testing.assert_close(head.all_pair_logits(u, v), head.dense_logits(sem),
                               rtol=0, atol=1e-5)
    P = head.matrix(head.dense_logits(sem))
    torch.testing.assert_close(intra_scores(head, u, v, target, entries),
                               intra_scores_dense(P, target) * entries, rtol=0, atol=1e-6)


def test_sampled_loss_is_unbiased_for_the_kept_pairs_mean():
    C, k = 16, 2
    ist = sparse_ist(C, k, TransferConfig(cooc_sample=4))
    full = sparse_ist(C, k, TransferConfig(cooc_pairs="all"), seed=1)
    full.load_state_dict(ist.state_dict())
    assert ist.head.num_pairs > 4
    sem, target = torch.randn(2, C, 6), targets(2, C, seed=2)
    R = 3000                                 # each image of R copies draws its own sample
    with torch.no_grad():
        estimate = ist(sem.repeat(R, 1, 1), target.repeat(R, 1))[0].item()
    assert estimate == pytest.approx(full(sem, target)[0].item(), rel=0.01)


# ---- checkpoints --------------------------------------------------------------------------------
def test_sparse_checkpoint_loads_into_a_model_built_without_labels():
    C, B = 30, 3
    trained = build("sst", C, partial_labels(C), graph_k=3, cooc_pairs="all")
    state = trained.state_dict()
    pairs = state["ist.head.pair_ij"]
    assert pairs.shape[1] == trained.ist.head.num_pairs < C * (C - 1) // 2
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    # as predict / eval rebuild it: no labels, the checkpoint's shapes, then the engine's loader
    rebuilt = build("sst", C, None, state_shapes=shapes, seed=1, cooc_pairs="all")
    load_model_state(rebuilt, {"model": state})
    # and a model built without anything: the checkpoint's set replaces every pair on loading
    bare = build("sst", C, None, seed=2, cooc_pairs="all")
    assert bare.ist.head.num_pairs == C * (C - 1) // 2
    bare.load_state_dict(state)
    sem, target = torch.randn(B, C, 8), targets(B, C)
    entries = torch.rand(B, C) < 0.5
    want = ist_outputs(trained.ist, sem, target, entries)
    for model in (rebuilt, bare):
        assert torch.equal(model.ist.head.pair_ij, pairs)
        assert torch.equal(model.ist.head.pair_lookup, trained.ist.head.pair_lookup)
        assert model.state_dict().keys() == state.keys()
        torch.testing.assert_close(ist_outputs(model.ist, sem, target, entries), want,
                                   rtol=0, atol=0)


def test_every_pair_checkpoint_loads_whatever_the_model_was_built_with():
    C = 30
    old = build("sst", C, None)                      # every pair, no pair_ij: as saved before
    state = old.state_dict()
    assert "ist.head.pair_ij" not in state
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    rebuilt = build("sst", C, None, state_shapes=shapes, seed=1)
    load_model_state(rebuilt, {"model": state})
    sparse = build("sst", C, partial_labels(C), graph_k=3, seed=1)
    assert sparse.ist.head.num_pairs < C * (C - 1) // 2
    sparse.load_state_dict(state)
    for model in (rebuilt, sparse):
        head = model.ist.head
        assert head.num_pairs == C * (C - 1) // 2 and (head.pair_lookup >= 0).sum() == C * (C - 1)
        assert "ist.head.pair_ij" not in model.state_dict()
        for key, value in state.items():
            assert torch.equal(model.state_dict()[key], value), key


# ---- the memory bank ----------------------------------------------------------------------------
def test_bank_scores_patch_only_the_pushed_classes_and_equal_a_full_recompute():
    torch.manual_seed(0)
    C, E, D, B = 40, 5, 8, 6
    bank = MemoryBank(C, E, D)

    def full(sem, features):             # the mean cosine over all E slots, recomputed from scratch
        return cosine_to_mean(sem, features, torch.ones(C, E), torch.full((C,), float(E)))

    for step in range(12):
        sem, target = torch.randn(B, C, D), targets(B, C, seed=step)
        target[:, 0] = 1                          # more than E pushes to class 0 in a batch
        before = full(sem, bank.features)
        assert torch.equal(bank.scores(sem), before)
        preview = bank.scores(sem, target)
        unchanged = ~(target > 0).any(0)
        assert torch.equal(preview[:, unchanged], before[:, unchanged])
        bank.update(sem, target)
        assert torch.equal(preview, full(sem, bank.features))
        assert torch.equal(bank.scores(sem), preview)
    assert torch.equal(class_means(bank.features, chunk=3 * E * D), bank.means())  # 3 rows a time
    bank.features[3].zero_()                             # any change in place is seen
    assert torch.equal(bank.scores(sem), full(sem, bank.features))
    other = MemoryBank(C, E, D)
    other.scores(sem)
    other.load_state_dict(bank.state_dict())             # so is loading
    assert torch.equal(other.scores(sem), full(sem, bank.features))


# ---- the methods at C = 300, k = 8 --------------------------------------------------------------
@pytest.mark.parametrize("name", ["sst", "hst"])
def test_methods_train_with_sparse_pairs(name):
    C, B = 300, 4
    m = build(name, C, partial_labels(C, n=300), graph_k=8, start_epoch=0).train()
    head = m.ist.head
    assert C * 8 // 2 <= head.num_pairs <= C * 8 < C * (C - 1) // 2
    if name == "hst":
        m.prototypes.centres.normal_()
        m.prototypes.valid.fill_(True)
    opt = torch.optim.Adam(m.param_groups(), lr=1e-3)
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        target = targets(B, C, seed=step, known=0.3, positive=0.1)
        batch = {"features": torch.randn(B, CHANNELS, 4, 4, generator=g), "target": target,
                 "full": target, "index": torch.arange(B), "epoch": 1, "step": 0,
                 "steps_per_epoch": 10}
        out = m(batch["features"], batch)
        terms = m.loss(out, batch, 1)
        assert all(torch.isfinite(v) for v in terms.values())
        opt.zero_grad()
        sum(terms.values()).backward()
        opt.step()
        m.update_state(out, batch)
    assert head.pairs.weight.grad is not None and head.pairs.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_sparse_run_evaluates_from_its_checkpoint(shapes, cache_dir, tmp_path):
    """End to end: a run whose head keeps some pairs (6 classes, k = 2) is evaluated from
    ``last.pt`` by a model rebuilt without its data, as predict / eval do."""
    from mlrpl.config import load_config
    from mlrpl.engine.checkpoint import load_checkpoint
    from mlrpl.engine.evaluate import evaluate_checkpoint
    from mlrpl.engine.trainer import Trainer
    from tests.test_engine import tiny
    from tests.test_transfer import _embeddings, _rows
    run = tmp_path / "run"
    Trainer(load_config(None, tiny(shapes, cache_dir, run, "method.name=sst", "train.epochs=1",
                                   "method.trunk.dim=16", "method.trunk.attention_dim=8",
                                   "method.trunk.graph_k=2", "method.start_epoch=0",
                                   f"data.embeddings={_embeddings(tmp_path)}"))).fit()
    pairs = load_checkpoint(run / "last.pt")["model"]["method.ist.head.pair_ij"]
    assert 0 < pairs.shape[1] < 15
    again = evaluate_checkpoint(run / "last.pt")["metrics"]["mAP"]
    assert again == pytest.approx(float(_rows(run)[-1]["mAP"]), abs=1e-3)
