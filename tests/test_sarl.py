"""The SARL trunk: semantic decoupling, gated graph network, element-wise classifier; ssgrl."""
import numpy as np
import pytest
import torch

from mlrpl.models.sarl import (ElementWiseClassifier, GatedGraph, SARLConfig, SARLTrunk,
                               SemanticDecoupling)


def test_semantic_decoupling_is_attention_over_positions():
    torch.manual_seed(0)
    sd = SemanticDecoupling(dim=6, embed_dim=4, attention_dim=5)
    f = torch.randn(2, 9, 6)
    words = torch.randn(3, 4)
    sem, att = sd(f, words)
    assert sem.shape == (2, 3, 6) and att.shape == (2, 3, 9)
    assert torch.allclose(att.sum(-1), torch.ones(2, 3))
    # F_c = sum_h a_ch f_h, and a_c = softmax_h(w_a . W3 tanh(W1 f_h * W2 x_c) + b)
    e = sd.wa(sd.w3(torch.tanh(sd.w1(f)[:, None] * sd.w2(words)[None, :, None]))).squeeze(-1)
    assert torch.allclose(att, torch.softmax(e, -1), atol=1e-6)
    assert torch.allclose(sem[1, 2], (att[1, 2, :, None] * f[1]).sum(0), atol=1e-6)
    # one position only: the feature is that position's, whatever the word vector
    sem1, _ = sd(f[:, :1], words)
    assert torch.allclose(sem1, f[:, :1].expand(2, 3, 6), atol=1e-6)


def test_gated_graph_step_by_hand():
    torch.manual_seed(0)
    g = GatedGraph(dim=3, steps=1)
    h = torch.randn(1, 2, 3)
    A = torch.tensor([[1.0, 0.5], [0.0, 1.0]])
    out = g(h, A)
    msg = torch.cat([A @ h[0], A.t() @ h[0]], -1)
    z = torch.sigmoid(g.wz(msg) + g.uz(h[0]))
    r = torch.sigmoid(g.wr(msg) + g.ur(h[0]))
    cand = torch.tanh(g.wh(msg) + g.uh(r * h[0]))
    assert torch.allclose(out[0], (1 - z) * h[0] + z * cand, atol=1e-6)


def test_elementwise_classifier():
    clf = ElementWiseClassifier(3, 4)
    assert clf.weight.abs().max() <= 0.5 and clf.bias.abs().max() <= 0.5  # U(+-1/sqrt(4))
    o = torch.randn(2, 3, 4)
    assert torch.allclose(clf(o), torch.einsum("bcd,cd->bc", o, clf.weight) + clf.bias)


def test_trunk_shapes_graph_and_gradients():
    partial = np.array([[1, 1, 0], [1, -1, 0], [-1, 0, 0]])
    from mlrpl.data.stats import cooccurrence_graph
    cfg = SARLConfig(dim=8, attention_dim=4)
    trunk = SARLTrunk(cfg, in_channels=12, num_classes=3, graph=cooccurrence_graph(partial),
                      words=np.random.default_rng(0).normal(size=(3, 5)), embed_dim=5)
    assert torch.allclose(trunk.graph[0], torch.tensor([1.0, 0.5, 0.0]))
    assert torch.allclose(trunk.graph[2], torch.tensor([0.0, 0.0, 1.0]))  # no known positive
    maps = torch.randn(2, 12, 6, 6, requires_grad=True)
    out = trunk(maps)
    assert out["logits"].shape == (2, 3) and out["semantic"].shape == (2, 3, 8)
    assert out["nodes"].shape == (2, 3, 8) and SARLTrunk.attention_maps(out).shape == (2, 3, 3, 3)
    out["logits"].sum().backward()
    assert maps.grad.abs().sum() > 0 and trunk.decouple.w2.weight.grad.abs().sum() > 0
    # no pooling, no reduction: node size is the backbone's channel count
    t2 = SARLTrunk(SARLConfig(pool=False, reduce=False, attention_dim=4), 12, 3, None, None, 5)
    assert t2(torch.randn(1, 12, 4, 4))["semantic"].shape == (1, 3, 12)


def test_ssgrl_trains_and_rebuilds_from_checkpoint(shapes, cache_dir, tmp_path):
    from mlrpl.config import load_config
    from mlrpl.engine.evaluate import evaluate_checkpoint
    from mlrpl.engine.trainer import Trainer
    from tests.test_engine import tiny
    emb = tmp_path / "emb"
    names = [n for n in ("red_circle", "green_square", "blue_triangle", "yellow_star",
                         "white_ring", "purple_cross")]
    np.save(emb.with_suffix(".npy"), np.random.default_rng(0).normal(size=(6, 7)).astype("f4"))
    (tmp_path / "emb.names.txt").write_text("\n".join(reversed(names)) + "\n")
    run = tmp_path / "r"
    cfg = load_config(None, tiny(shapes, cache_dir, run, "method.name=ssgrl",
                                 "method.trunk.dim=16", "method.trunk.attention_dim=8",
                                 f"data.embeddings={emb}.npy", "train.epochs=2"))
    t = Trainer(cfg)
    assert t.model.method.trunk.words.shape == (6, 7)
    result = t.fit()
    assert np.isfinite(result["last"]["mAP"])
    again = evaluate_checkpoint(run / "last.pt")
    assert again["metrics"]["mAP"] == pytest.approx(result["last"]["mAP"], abs=1e-3)


# ---- many classes: streamed attention scores, top-k graph, refined classes -------------------
def test_semantic_decoupling_equals_the_released_two_layer_form(monkeypatch):
    from mlrpl.models import bilinear
    torch.manual_seed(0)
    monkeypatch.setattr(bilinear, "ATTENTION_CHUNK_ELEMENTS_CPU", 500)   # several blocks
    sd = SemanticDecoupling(dim=16, embed_dim=7, attention_dim=8).double()
    f = torch.randn(3, 9, 16, dtype=torch.float64)
    words = torch.randn(11, 7, dtype=torch.float64)
    ours, ref = sd.scores(f, words), sd.reference(f, words)
    assert torch.allclose(ours, ref, atol=1e-12)
    g = torch.randn_like(ours)
    got = torch.autograd.grad((ours * g).sum(), list(sd.parameters()))
    want = torch.autograd.grad((ref * g).sum(), list(sd.parameters()))
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-10)


def test_top_k_graph_keeps_each_rows_largest_entries_and_k_equal_c_is_the_graph():
    from mlrpl.data.stats import cooccurrence_graph, sparse_graph, top_k_neighbours
    rng = np.random.default_rng(0)
    full = np.where(rng.random((300, 80)) < 0.1, 1, -1)
    partial = np.where(rng.random((300, 80)) < 0.5, full, 0)
    g = cooccurrence_graph(partial)
    for k in (None, 79, 80, 500):
        assert np.array_equal(sparse_graph(g, k), g)
    s = sparse_graph(g, 5)
    assert np.array_equal(np.diag(s), np.diag(g))
    mask = top_k_neighbours(g, 5)
    assert (mask.sum(1) == 5).all() and not mask.diagonal().any()
    off = np.where(np.eye(80, dtype=bool), -np.inf, g)
    for i in range(80):   # every kept entry >= every dropped one in its row
        kept, dropped = off[i][mask[i]], off[i][~mask[i] & ~np.eye(80, dtype=bool)[i]]
        assert kept.min() >= dropped.max()
    with pytest.raises(ValueError, match="k >= 1"):
        top_k_neighbours(g, 0)


def _trunk(num_classes, graph, **cfg):
    torch.manual_seed(0)
    words = np.random.default_rng(1).normal(size=(num_classes, 5))
    return SARLTrunk(SARLConfig(dim=8, attention_dim=4, **cfg), 12, num_classes, graph, words, 5)


def test_trunk_with_k_equal_c_gives_the_dense_graphs_outputs_at_80_classes():
    from mlrpl.data.stats import cooccurrence_graph, sparse_graph
    rng = np.random.default_rng(0)
    full = np.where(rng.random((200, 80)) < 0.15, 1, -1)
    g = cooccurrence_graph(np.where(rng.random((200, 80)) < 0.5, full, 0))
    maps = torch.randn(2, 12, 6, 6)
    dense = _trunk(80, g, refine_classes=None)(maps)["logits"]
    for k in (80, 79):
        out = _trunk(80, sparse_graph(g, k), graph_k=k, refine_classes=None)(maps)["logits"]
        assert torch.equal(out, dense)
    sparse = _trunk(80, sparse_graph(g, 4), graph_k=4, refine_classes=None)(maps)["logits"]
    assert not torch.allclose(sparse, dense)


def test_refining_every_class_is_the_graph_network_and_fewer_keep_the_others_plain():
    torch.manual_seed(0)
    g = torch.rand(10, 10)
    ggnn = GatedGraph(dim=6, steps=2)
    h = torch.randn(3, 10, 6)
    perm = torch.stack([torch.randperm(10) for _ in range(3)])
    refined = ggnn.refine(h, g, perm)
    assert torch.allclose(refined, ggnn(h, g).gather(1, perm[..., None].expand(-1, -1, 6)),
                          atol=1e-6)
    # the trunk: R >= C is today's head; R < C refines each image's R best pre-graph scores
    graph = np.random.default_rng(0).random((10, 10)).astype(np.float32)
    maps = torch.randn(3, 12, 6, 6)
    whole = _trunk(10, graph, refine_classes=None)
    for kw in ({"refine_classes": 10, "refine_all_up_to": 2}, {"refine_classes": 3}):   # R >= C, C <= the bound
        assert torch.equal(_trunk(10, graph, **kw)(maps)["logits"], whole(maps)["logits"])
    part = _trunk(10, graph, refine_classes=3, refine_all_up_to=2)
    out = part(maps)
    sem = out["semantic"]
    w, d = part.fc_o.weight, sem.shape[-1]
    plain = part.classifier(torch.tanh(sem @ (w[:, :d] + w[:, d:]).t() + part.fc_o.bias))
    idx = plain.topk(3, dim=1).indices
    chosen = torch.zeros(3, 10, dtype=torch.bool).scatter(1, idx, True)
    assert torch.allclose(out["logits"][~chosen], plain[~chosen], atol=1e-6)
    assert torch.equal(out["nodes"][~chosen], sem[~chosen])
    # a refined class's logit is the head on its refined node and its semantic feature
    nodes = part.ggnn.refine(sem, part.graph, idx)
    o = torch.tanh(part.fc_o(torch.cat([nodes, sem.gather(1, idx[..., None].expand(-1, -1, d))], -1)))
    want = (o * part.classifier.weight[idx]).sum(-1) + part.classifier.bias[idx]
    assert torch.allclose(out["logits"].gather(1, idx), want, atol=1e-6)
    out["logits"].sum().backward()
    assert part.ggnn.wz.weight.grad.abs().sum() > 0 and part.classifier.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["ssgrl", "satl", "sarb", "dsrb", "sst", "hst"])
def test_every_trunk_method_with_k_equal_c_gives_the_dense_outputs_at_80_classes(name):
    """graph_k = C (and C - 1) is the dense graph and every pair: outputs and loss terms equal."""
    from mlrpl.methods import create_method, get_method_class
    from mlrpl.methods.base import MethodContext
    rng = np.random.default_rng(0)
    full = np.where(rng.random((300, 80)) < 0.1, 1, -1)
    partial = np.where(rng.random((300, 80)) < 0.5, full, 0).astype(np.int8)
    ctx = MethodContext(num_classes=80, feature_channels=12,
                        class_names=[f"c{i}" for i in range(80)], partial_labels=partial,
                        embeddings=rng.normal(size=(80, 5)).astype(np.float32))
    fields = get_method_class(name).Config.__dataclass_fields__
    extra = {"start_epoch": 0} if "start_epoch" in fields else {}
    torch.manual_seed(1)
    maps = torch.randn(4, 12, 6, 6)
    target = torch.as_tensor(partial[:4])
    results = []
    for k in (None, 80, 79):
        torch.manual_seed(0)
        m = create_method(name, ctx, trunk={"dim": 8, "attention_dim": 4, "graph_k": k}, **extra)
        if hasattr(m, "prototypes"):
            m.prototypes.centres.normal_(generator=torch.Generator().manual_seed(2))
            m.prototypes.valid.fill_(True)
        m.train()
        batch = {"target": target, "epoch": 1, "step": 0, "steps_per_epoch": 10,
                 "index": torch.arange(4)}
        torch.manual_seed(3)
        out = m(maps, batch)
        terms = m.loss(out, batch, 1)
        results.append((out["logits"].detach(), {t: float(v.detach()) for t, v in terms.items()}))
    for logits, terms in results[1:]:
        assert torch.equal(logits, results[0][0])
        assert terms == results[0][1]


@pytest.mark.parametrize("key,value", [("graph_k", 0), ("refine_classes", 0),
                                       ("refine_all_up_to", -1)])
def test_many_class_keys_refuse_bad_values_in_one_line(key, value):
    from mlrpl.config import load_config
    from mlrpl.errors import ConfigError
    with pytest.raises(ConfigError, match=f"'method.trunk.{key}': {value}; expected an integer"):
        load_config(None, ["method.name=ssgrl", f"method.trunk.{key}={value}"])
    cfg = load_config(None, ["method.name=ssgrl", f"method.trunk.{key}=null"]
                      if key != "refine_all_up_to" else ["method.name=ssgrl"])
    assert cfg.method.trunk.graph_k == (None if key == "graph_k" else 32)
