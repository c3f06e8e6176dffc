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
