"""clsl (docs/methods/clsl.md): the SRFL / SGFE equations against hand loops on a small case, the
ASL values (soft targets, the released focal form, the x1000 scaling), the label-recovery rule, EMA
and exact resume, and short training runs on the generated shapes set."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlrpl.losses import asymmetric_loss, asymmetric_loss_elements, soft_asymmetric_loss
from mlrpl.methods import create_method, recipe
from mlrpl.methods.base import MethodContext
from mlrpl.methods.clsl import (LowRankBilinearAttention, recovered_targets, recovery_scores,
                                sgfe_pool, sine_position_encoding)
from tests.test_engine import rows, tiny
from tests.test_transfer import _embeddings, batch_of

SMALL = {"dim": 8, "heads": 2, "ffn_dim": 12, "attention_dim": 4, "hidden_dim": 10}


def small(num_classes=3, channels=6, words=5, **cfg):
    rng = np.random.default_rng(0)
    ctx = MethodContext(num_classes=num_classes, feature_channels=channels,
                        class_names=[f"c{i}" for i in range(num_classes)],
                        embeddings=rng.normal(size=(num_classes, words)).astype(np.float32))
    torch.manual_seed(0)
    return create_method("clsl", ctx, **{**SMALL, **cfg})


# ---- the model's equations ----------------------------------------------------------------------
def test_sine_position_encoding_hand_values():
    h, w, dim = 2, 3, 8
    pe = sine_position_encoding(h, w, dim)
    npf, eps = dim // 2, 1e-6
    for i in range(h):
        for j in range(w):
            y = (i + 1) / (h + eps) * 2 * math.pi
            x = (j + 1) / (w + eps) * 2 * math.pi
            want = []
            for v in (y, x):
                for k in range(npf):
                    d = 10000 ** (2 * (k // 2) / npf)
                    want.append(math.sin(v / d) if k % 2 == 0 else math.cos(v / d))
            assert pe[i * w + j].tolist() == pytest.approx(want, abs=1e-5)


def test_low_rank_attention_equals_the_literal_form_and_a_hand_loop():
    torch.manual_seed(0)
    att = LowRankBilinearAttention(6, 5, 4)
    x, v = torch.randn(2, 3, 6), torch.randn(2, 4, 5)     # B = 2, P = 3 tokens, C = 4 classes
    got = att(x, v)
    assert got.shape == (2, 3, 4)
    torch.testing.assert_close(got, att.reference(x, v), rtol=1e-5, atol=1e-6)
    wx, wv = att.tokens.weight, att.classes.weight
    wh, bh, w2, b2 = att.hidden.weight, att.hidden.bias, att.out.weight[0], att.out.bias[0]
    for b in range(2):
        for p in range(3):
            for c in range(4):
                e = w2 @ (wh @ torch.tanh((wx @ x[b, p]) * (wv @ v[b, c])) + bh) + b2
                assert got[b, p, c].item() == pytest.approx(e.item(), abs=1e-5)
    # the same gradients as the literal form
    g1 = torch.autograd.grad(att(x, v).square().sum(), list(att.parameters()))
    g2 = torch.autograd.grad(att.reference(x, v).square().sum(), list(att.parameters()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_srfl_sgfe_and_global_branch_equal_a_hand_loop():
    m = small().eval()
    b, c, d = 2, 3, 8
    features = torch.randn(b, 6, 2, 3)                      # P = 6 tokens
    out = m(features)
    x = m.tokens(features)                                  # (B, P, D)
    assert x.shape == (b, 6, d)
    v = m.srfl_features(x)
    assert v.shape == (b, c, d)
    conv1, bn, _, conv2 = m.srfl
    a1 = m.head(torch.cat([torch.softmax(m.attention(x, v), -1) @ v, x], -1))
    assert a1.shape == (b, 6, c)
    for i in range(b):
        xg = x[i].mean(0)
        for k in range(c):
            # SRFL: Conv1x1 -> BN (evaluation: running statistics) -> GELU -> Conv1x1
            h = conv1.weight[:, :, 0] @ torch.cat([m.words[k], xg]) + conv1.bias
            h = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
            vk = conv2.weight[:, :, 0] @ F.gelu(h) + conv2.bias
            torch.testing.assert_close(v[i, k], vk, rtol=1e-4, atol=1e-5)
            # global branch: 1x1 conv over tokens, max over tokens
            a0 = [m.global_head.weight[k, :, 0] @ x[i, p] + m.global_head.bias[k]
                  for p in range(6)]
            assert out["logits_global"][i, k].item() == pytest.approx(max(a0).item(), abs=1e-5)
        # SGFE: softmax over classes per token, z_p = sum_c beta v_c, MLP, pooling over tokens
        a1_hand = []
        for p in range(6):
            e = torch.stack([m.attention.reference(x[i:i + 1, p:p + 1],
                                                   v[i:i + 1, k:k + 1])[0, 0, 0]
                             for k in range(c)])
            beta = e.exp() / e.exp().sum()
            z = sum(beta[k] * v[i, k] for k in range(c))
            a1_hand.append(m.head(torch.cat([z, x[i, p]])))
        a1_hand = torch.stack(a1_hand)                      # (P, C)
        torch.testing.assert_close(a1[i], a1_hand, rtol=1e-4, atol=1e-5)
        for k in range(c):
            col = a1_hand[:, k]
            want = (col.exp() / col.exp().sum() * col).sum()
            assert out["logits"][i, k].item() == pytest.approx(want.item(), abs=1e-5)


def test_sgfe_pool_is_softmax_attention_over_tokens():
    a = torch.tensor([[[1.0, 0.0], [3.0, -2.0]]])           # (B=1, P=2, C=2)
    w = math.exp(1) / (math.exp(1) + math.exp(3))
    want0 = w * 1 + (1 - w) * 3
    w1 = 1 / (1 + math.exp(-2))
    want1 = w1 * 0 + (1 - w1) * -2
    assert sgfe_pool(a)[0].tolist() == pytest.approx([want0, want1], abs=1e-6)


def test_width_projection_and_pooling():
    m = small(channels=12, dim=8, pool=True)
    assert m.proj.weight.shape == (8, 12)
    assert m.tokens(torch.randn(2, 12, 4, 4)).shape == (2, 4, 8)   # 4x4 -> 2x2 tokens
    same = small(channels=8, dim=None)
    assert same.proj is None and same.dim == 8                     # the backbone's width
    assert small().tokens(torch.randn(2, 6)).shape == (2, 1, 8)    # pooled features: one token
    from mlrpl.errors import ConfigError
    with pytest.raises(ConfigError, match="multiple of the number of heads"):
        small(dim=9, heads=2)
    with pytest.raises(ConfigError, match="temperature"):
        small(temperature=0.0)


# ---- ASL ---------------------------------------------------------------------------------------
def test_asl_joint_focal_form_soft_targets_hand_values():
    s = torch.tensor([0.0, 0.0, math.log(3.0)])             # p = .5, .5, .75
    t = torch.tensor([0.3, 1.0, 0.0])
    got = asymmetric_loss_elements(s, t, gamma_pos=0.0, gamma_neg=2.0, clip=0.0, eps=1e-5,
                                   focal="joint")
    # p_t = t p + (1 - t)(1 - p); weight (1 - p_t)^(gamma+ t + gamma- (1 - t))
    w0 = (1 - (0.3 * 0.5 + 0.7 * 0.5)) ** (2 * 0.7)
    want = [math.log(2) * w0, math.log(2), -math.log(0.25) * 0.75 ** 2]
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    parts = asymmetric_loss_elements(s, t, 0.0, 2.0, 0.0, 1e-5, focal="parts")
    assert parts[0].item() == pytest.approx(0.3 * math.log(2) + 0.7 * 0.25 * math.log(2), abs=1e-6)
    # hard targets: the two forms agree (also with clip and gamma+)
    hard = torch.tensor([1.0, 0.0, 0.0])
    torch.testing.assert_close(
        asymmetric_loss_elements(s, hard, 1.0, 4.0, 0.05, focal="joint"),
        asymmetric_loss_elements(s, hard, 1.0, 4.0, 0.05, focal="parts"))


def test_asl_focal_weights_without_gradient():
    s = torch.zeros(1, requires_grad=True)                  # p = 0.5, a negative, gamma- = 2
    for detach, want in ((True, 0.5 ** 3), (False, 0.5 ** 3 + 2 * 0.5 * 0.25 * math.log(2))):
        loss = asymmetric_loss_elements(s, torch.zeros(1), 0.0, 2.0, 0.0, focal="joint",
                                        detach_focal=detach).sum()
        g, = torch.autograd.grad(loss, s)
        assert g.item() == pytest.approx(want, abs=1e-6), detach


def test_asl_known_masking_and_soft_reductions():
    logits = torch.tensor([[0.0, 0.0, 0.0, 2.0]])
    target = torch.tensor([[1, -1, 0, 0]])
    neg = math.log(2) * 0.5 ** 2
    kw = dict(gamma_pos=0.0, gamma_neg=2.0, clip=0.0, eps=1e-5, focal="joint")
    assert asymmetric_loss(logits, target, **kw).item() == pytest.approx((math.log(2) + neg) / 2)
    assert asymmetric_loss(logits, target, reduction="sum", **kw).item() == \
        pytest.approx(math.log(2) + neg)
    # soft targets: a 0 is a negative here, every entry counts, mean over B·C
    soft = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    terms = [math.log(2), neg, neg, -math.log(torch.sigmoid(torch.tensor(2.0)).item())]
    assert soft_asymmetric_loss(logits, soft, **kw).item() == pytest.approx(sum(terms) / 4)
    assert soft_asymmetric_loss(logits, soft, reduction="sum", **kw).item() == \
        pytest.approx(sum(terms))
    sel = torch.tensor([[True, False, False, True]])
    assert soft_asymmetric_loss(logits, soft, sel, **kw).item() == \
        pytest.approx((terms[0] + terms[3]) / 2)


def test_method_loss_default_means_and_released_x1000_scaling():
    logits1 = torch.tensor([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    logits0 = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    target = torch.tensor([[1, -1, 0], [0, 0, 1]], dtype=torch.int8)
    recovered = torch.tensor([[1.0, 0.0, 0.6], [0.2, 0.4, 1.0]])
    outputs = {"logits": logits1, "logits_global": logits0, "recovered": recovered}
    p = torch.sigmoid

    def neg(s):      # -p^2 log(1 - p)
        return -(p(torch.tensor(s)) ** 2 * torch.log(1 - p(torch.tensor(s)))).item()

    def soft(s, t):  # the joint form with gamma+ = 0, gamma- = 2, clip 0
        q = p(torch.tensor(s)).item()
        pt = t * q + (1 - t) * (1 - q)
        return -(t * math.log(q) + (1 - t) * math.log(1 - q)) * (1 - pt) ** (2 * (1 - t))

    known_terms = [math.log(2), neg(0.0), -math.log(p(torch.tensor(0.0)).item())]
    rec_terms = [soft(s, t) for s, t in zip(logits0.flatten().tolist(),
                                            recovered.flatten().tolist())]
    m = small()
    got = m.loss(outputs, {"target": target}, 0)
    assert got["asl_known"].item() == pytest.approx(sum(known_terms) / 3, rel=1e-5)
    assert got["asl_recovered"].item() == pytest.approx(0.8 * sum(rec_terms) / 6, rel=1e-5)
    q = small(reference_quirks=True)
    got = q.loss(outputs, {"target": target}, 0)
    assert got["asl_known"].item() == pytest.approx(1000 * sum(known_terms), rel=1e-5)
    assert got["asl_recovered"].item() == pytest.approx(0.8 * 1000 * sum(rec_terms) / 6, rel=1e-5)


# ---- label recovery ----------------------------------------------------------------------------
def test_sharpening_is_monotone_by_default_and_released_behind_the_quirk():
    s = torch.tensor([[2.0, -1.0, 0.5], [-0.5, -3.0, -1.0]])  # row 2: its largest logit < 0
    r = recovery_scores(s)
    torch.testing.assert_close(r, torch.sigmoid(s))
    torch.testing.assert_close(recovery_scores(s, temperature=2.0), torch.sigmoid(s / 2))
    for row_s, row_r in zip(s, r):
        assert torch.equal(row_s.argsort(), row_r.argsort())          # order kept
    q = recovery_scores(s, released=True)
    torch.testing.assert_close(q, torch.sigmoid(s * s.max(1, keepdim=True).values))
    assert torch.equal(q[0].argsort(), s[0].argsort())                # max > 0: order kept
    assert torch.equal(q[1].argsort(), s[1].argsort().flip(0))        # max < 0: inverted
    assert not recovery_scores(s.requires_grad_()).requires_grad


def test_recovered_targets_equal_known_labels_on_known_entries():
    m = small().train()
    target = [[1, 0, -1], [0, 1, 0], [-1, -1, 0]]
    b = batch_of(target, channels=6)
    out = m(b["features"], b)
    t = b["target"]
    known = t != 0
    rec = out["recovered"]
    assert not rec.requires_grad
    assert torch.equal(rec[known], (t[known] > 0).float())
    torch.testing.assert_close(rec[~known], out["recovery"][~known])
    torch.testing.assert_close(out["recovery"], torch.sigmoid(out["logits"].detach()))
    assert torch.equal(recovered_targets(torch.tensor([[1, -1, 0]]),
                                         torch.tensor([[0.1, 0.9, 0.3]])),
                       torch.tensor([[1.0, 0.0, 0.3]]))


def _state(m):
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return {k: v.detach().clone() for k, v in m.state_dict().items() if not k.endswith(skip)}


def test_forward_twice_in_train_mode_changes_no_state_and_update_state_counts():
    m = small().train()
    target = [[1, 0, -1], [0, 1, 0], [-1, 0, 0]]
    full = [[1, 1, -1], [-1, 1, 1], [-1, -1, -1]]
    b = batch_of(target, full=full, channels=6)
    before = _state(m)
    outs = [m(b["features"], b) for _ in range(2)]
    for k, v in _state(m).items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(outs[0]["logits"], outs[1]["logits"])     # dropout is on
    m.update_state(outs[0], b)
    stats = m.epoch_stats()
    r = outs[0]["recovery"]
    unknown = b["target"] == 0
    pos = unknown & (r >= 0.5)
    assert stats["pl_pos_n"] == int(pos.sum()) and stats["pl_neg_n"] == int((unknown & ~pos).sum())
    truth = torch.tensor(full)
    tp = int((pos & (truth > 0)).sum())
    if int(pos.sum()):
        assert stats["pl_pos_precision"] == pytest.approx(100 * tp / int(pos.sum()))
    assert stats["pl_pos_recall"] == pytest.approx(100 * tp / int((unknown & (truth > 0)).sum()))
    assert m.epoch_stats()["pl_pos_n"] == 0                           # reset after an epoch


# ---- EMA, exact resume, training ---------------------------------------------------------------
def test_ema_averages_the_methods_weights_and_evaluates_them():
    from omegaconf import OmegaConf

    from mlrpl.plugins.base import PluginContext
    from mlrpl.plugins.ema import EMA, EMAConfig
    m = small()
    ema = EMA(OmegaConf.structured(EMAConfig(decay=0.75, warmup=False)),
              PluginContext(3, ["c0", "c1", "c2"]), m)
    start = {k: v.detach().clone() for k, v in m.named_parameters()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    ema.update_state(m, {}, {})
    x = torch.randn(2, 6, 2, 2)
    m.eval()
    online = m(x)["logits"]
    with ema.evaluation(m):
        for k, p in m.named_parameters():                    # 0.75 w + 0.25 (w + 1)
            torch.testing.assert_close(p, start[k] + 0.25)
        averaged = m(x)["logits"]
    assert not torch.allclose(online, averaged)
    for k, p in m.named_parameters():
        torch.testing.assert_close(p, start[k] + 1.0)        # the online weights are back
    assert "words" not in dict(m.named_parameters())          # the embeddings stay frozen


CLSL_TINY = ["method.name=clsl", "method.dim=16", "method.heads=2", "method.ffn_dim=16",
             "method.attention_dim=8", "method.hidden_dim=16", "method.head_dropout=0.1"]


def test_trains_learns_and_resumes_exactly_with_ema(shapes, cache_dir, tmp_path):
    """3 epochs in one go (a) and 1 + resume + 2 (b) with the ema plug-in: every saved tensor of
    the model and the plug-in equal; the loss falls and the model ranks better than chance; the
    checkpoint holds the EMA weights (evaluating it gives the reported mAP)."""
    from mlrpl.cli import main
    from mlrpl.config import load_config
    from mlrpl.engine.checkpoint import load_checkpoint
    from mlrpl.engine.evaluate import evaluate_checkpoint
    from mlrpl.engine.trainer import Trainer
    args = [*CLSL_TINY, f"data.embeddings={_embeddings(tmp_path)}", "train.epochs=3",
            "optim.name=adamw", "sched.name=onecycle", "optim.lr=0.003",
            "plugins=[{name: ema, decay: 0.9}]"]
    a, b = tmp_path / "a", tmp_path / "b"
    Trainer(load_config(None, tiny(shapes, cache_dir, a, *args))).fit()
    Trainer(load_config(None, tiny(shapes, cache_dir, b, *args, "train.stop_after_epochs=1"))).fit()
    assert main(["train", "--resume", "--run-dir", str(b)]) == 0
    ka, kb = (load_checkpoint(p / "last.pt") for p in (a, b))
    for part in ("model", "plugins"):
        assert ka[part].keys() == kb[part].keys()
        for k in ka[part]:
            torch.testing.assert_close(ka[part][k], kb[part][k], rtol=0, atol=0, equal_nan=True)
    ra, rb = rows(a), rows(b)
    for key in ("loss_asl_known", "loss_asl_recovered", "mAP", "pl_pos_n", "pl_neg_precision",
                "ema_decay"):
        assert [x[key] for x in ra] == [x[key] for x in rb], key
    # it learns: both terms fall, and the ranking beats chance by far (random scores: the mean
    # class prevalence of the evaluation split, 28%)
    assert float(ra[-1]["loss_asl_known"]) < float(ra[0]["loss_asl_known"])
    assert float(ra[-1]["loss_asl_recovered"]) < float(ra[0]["loss_asl_recovered"])
    assert float(ra[-1]["mAP"]) > 45
    # recovery quality columns, as the other pseudo-labelling methods have
    assert int(ra[-1]["pl_pos_n"]) + int(ra[-1]["pl_neg_n"]) > 0
    assert 0 <= float(ra[-1]["pl_neg_precision"]) <= 100
    # the checkpoint's model is the average: it scores what the run reported
    shadows = [v for k, v in ka["plugins"].items() if k.startswith("items.0.shadow_")]
    weights = [v for k, v in ka["model"].items() if k.startswith("method.")]
    assert shadows and not all(any(s.shape == w.shape and torch.equal(s, w) for w in weights)
                               for s in shadows)
    again = evaluate_checkpoint(a / "last.pt")
    assert again["metrics"]["mAP"] == pytest.approx(float(ra[-1]["mAP"]), abs=1e-3)
    record = json.loads((a / "run.json").read_text())
    assert record["word_vectors"]["kind"] == "file" and record["plugins"] == ["ema"]


def test_released_form_trains(shapes, cache_dir, tmp_path):
    from mlrpl.config import load_config
    from mlrpl.engine.trainer import Trainer
    run = tmp_path / "q"
    Trainer(load_config(None, tiny(shapes, cache_dir, run, *CLSL_TINY, "train.epochs=1",
                                   "method.reference_quirks=true", "optim.lr=0.0003",
                                   f"data.embeddings={_embeddings(tmp_path)}"))).fit()
    r = rows(run)[0]
    assert float(r["loss_asl_known"]) > 10 * float(r["loss_asl_recovered"]) > 0   # summed x1000


# ---- presets and recipes -----------------------------------------------------------------------
def test_cpu_presets_are_the_baseline_plus_the_recipe():
    from mlrpl.config import load_config, resolved
    for data in ("voc2007-2k", "coco128"):
        preset = resolved(load_config(f"configs/{data}_clsl_cpu.yaml"))
        built = resolved(load_config(f"configs/{data}_pbce_cpu.yaml",
                                     recipe("clsl", "cpu-cached") + ["method.name=clsl"]))
        preset["run"] = built["run"] = None
        assert preset == built, data
    assert recipe("clsl", "hcp") == []


def test_authors_recipe_presets():
    from mlrpl.config import load_config
    for data, lr, bs, decay in (("voc2007", 9e-5, 64, 0.9983), ("coco2014", 5e-5, 52, 0.9997)):
        cfg = load_config(f"configs/{data}_clsl_resnet101.yaml")
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", lr, 1e-4)
        assert (cfg.sched.name, cfg.sched.pct_start) == ("onecycle", 0.2)
        assert (cfg.train.batch_size, cfg.data.image_size, cfg.model.freeze) == (bs, 448, "none")
        assert [p.name for p in cfg.plugins] == ["randaugment", "ema"]
        assert cfg.plugins[1].decay == decay and not cfg.plugins[1].warmup
        assert cfg.data.val_split is None                   # a held-out validation split
        common = load_config(f"configs/{data}_clsl_hcp_resnet101.yaml")
        base = load_config(f"configs/{data}_pbce_resnet101.yaml")
        assert common.method.name == "clsl" and not common.plugins
        for key in ("data", "model", "optim", "sched", "train"):
            assert common[key] == base[key], key


# ---- the randaugment plug-in (Cutout + RandAugment of the authors' recipe) ---------------------
def _image_batch(n=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    u8 = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    return u8, {"image": (u8.float() / 255 - mean) / std, "target": torch.zeros(n, 2)}, mean, std


def _plugin(**cfg):
    from omegaconf import OmegaConf

    from mlrpl.plugins.base import PluginContext
    from mlrpl.plugins.randaugment import RandAugmentConfig, RandAugmentPlugin
    return RandAugmentPlugin(OmegaConf.structured(RandAugmentConfig(**cfg)),
                             PluginContext(2, ["a", "b"]), torch.nn.Linear(1, 1))


def test_randaugment_plugin_cutout_and_identity():
    u8, batch, mean, std = _image_batch()
    back = lambda b: ((b["image"] * std + mean) * 255).round().to(torch.uint8)  # noqa: E731
    same = _plugin(num_ops=0, cutout=0.0).transform_batch(batch, 0)
    assert torch.equal(back(same), u8)                          # 8-bit round trip is exact
    torch.manual_seed(0)
    cut = back(_plugin(num_ops=0, cutout=0.5).transform_batch(batch, 0))
    for before, after in zip(u8, cut):
        changed = (before != after).any(0)
        ys, xs = changed.nonzero(as_tuple=True)
        assert len(ys) > 0
        box = after[:, ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        assert box.shape[1] <= 8 and box.shape[2] <= 8                 # at most half the side
        assert (box == box[:, :1, :1]).all()                            # one colour
    torch.manual_seed(1)
    a = _plugin().transform_batch(batch, 0)["image"]
    torch.manual_seed(1)
    b = _plugin().transform_batch(batch, 0)["image"]
    assert a.shape == batch["image"].shape and torch.equal(a, b)       # seeded: reproducible
    assert not torch.equal(a, batch["image"])
    assert _plugin(start_epoch=2).transform_batch(batch, 1) is batch
    from mlrpl.errors import MlrplError
    with pytest.raises(MlrplError, match="needs images"):
        _plugin().transform_batch({"features": torch.zeros(1, 2, 2, 2)}, 0)
