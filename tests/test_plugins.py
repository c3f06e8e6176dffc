"""Plug-ins (docs/methods/baselines.md#plug-ins): LogicMix's label rule, CFT's keep-if-better rule,
the ranking plug-in on any method, distribution pseudo-labels, EMA, exact resume with plug-ins,
config checks."""
import csv

import numpy as np
import pytest
import torch

from mlrpl.cli import main
from mlrpl.config import load_config
from mlrpl.engine.checkpoint import load_checkpoint
from mlrpl.engine.trainer import Trainer
from mlrpl.errors import ConfigError
from mlrpl.losses import ranking_loss
from mlrpl.plugins import check_plugins, list_plugins
from mlrpl.plugins.cft import CFT, keep_if_better
from mlrpl.plugins.dist_pseudo import pseudo_target
from mlrpl.plugins.logicmix import logic_or, mix_indices

from tests.test_engine import tiny


def rows(run_dir):
    with open(run_dir / "summary.csv") as fh:
        return list(csv.DictReader(fh))


# ---- LogicMix's rule ---------------------------------------------------------------------------
def test_logic_or_hand_cases():
    # columns: pos|pos, pos|neg, pos|unk, neg|neg, neg|unk, unk|unk, unk|pos
    a = torch.tensor([1, 1, 1, -1, -1, 0, 0], dtype=torch.int8)
    b = torch.tensor([1, -1, 0, -1, 0, 0, 1], dtype=torch.int8)
    out = logic_or(torch.stack([a, b]))
    assert out.tolist() == [1, 1, 1, -1, 0, 0, 1]
    assert out.dtype == torch.int8
    # three samples: negative only when known negative in all three
    c = torch.tensor([-1, -1, -1], dtype=torch.int8)
    y = torch.stack([torch.tensor([-1, -1, 0]), torch.tensor([-1, -1, -1]), c.long()])
    assert logic_or(y).tolist() == [-1, -1, 0]
    # samples that do not take part are ignored (an unmixed row keeps its own labels)
    y = torch.tensor([[[0, -1, 1], [1, 1, -1]]])
    assert logic_or(y, torch.tensor([[True, False]])).tolist() == [[0, -1, 1]]
    assert logic_or(y, torch.tensor([[True, True]])).tolist() == [[1, 1, 1]]


def test_mix_indices_shapes_and_probability():
    torch.manual_seed(0)
    idx, valid = mix_indices(8, 1.0, 2, 3)
    assert idx.shape == valid.shape == (8, 3)
    assert torch.equal(idx[:, 0], torch.arange(8)) and bool(valid[:, 0].all())
    k = valid.sum(1)
    assert bool(((k >= 2) & (k <= 3)).all())
    for i in range(8):  # partners are other samples, never repeated
        used = idx[i][valid[i]].tolist()
        assert len(set(used)) == len(used) and used[0] == i
    _, valid = mix_indices(8, 0.0, 2, 3)
    assert int(valid.sum()) == 8
    idx, valid = mix_indices(2, 1.0, 3, 4)   # a tiny batch: at most the other sample
    assert valid.sum(1).tolist() == [2, 2]


# ---- CFT's rule ---------------------------------------------------------------------------------
def test_cft_keeps_only_classes_that_improve():
    before = np.array([0.50, 0.50, np.nan, 0.70, 0.30, 0.40])
    after = np.array([0.60, 0.50, 0.90, 0.65, np.nan, 0.405])
    assert keep_if_better(before, after).tolist() == [True, False, False, False, False, True]
    assert keep_if_better(before, after, min_gain=0.01).tolist() == [True, False, False, False,
                                                                     False, False]


def test_cft_refits_per_class_and_keeps_if_better():
    """A linear head that is wrong on class 0 and right on class 1: the re-fit fixes class 0
    (kept) and cannot improve class 1 (its weights stay bit-identical)."""
    from torch import nn

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x, batch=None):
            return {"logits": self.fc(x)}

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g)
    y = torch.stack([torch.where(x[:, 0] > 0, 1, -1), torch.where(x[:, 1] > 0, 1, -1)], 1)
    y = y.to(torch.int8)
    head = Head()
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([[-1.0, 0.0], [0.0, 5.0]]))   # class 0 inverted
        head.fc.bias.zero_()
    w1 = head.fc.weight[1].clone()

    # the selection set: other images (held out of training), their labels
    xs = torch.randn(100, 2, generator=g)
    ys = torch.stack([torch.where(xs[:, 0] > 0, 1, -1), torch.where(xs[:, 1] > 0, 1, -1)], 1)

    from omegaconf import OmegaConf
    from mlrpl.plugins.base import PluginContext
    from mlrpl.plugins.cft import CFTConfig
    cft = CFT(OmegaConf.structured(CFTConfig(steps=200, lr=0.05)),
              PluginContext(2, ["a", "b"], y.numpy(), 0, select_images=len(xs)), head)

    def hooked(x):  # the hooks must see the forward: run it inside the iteration
        for i in range(0, len(x), 50):
            xb = x[i:i + 50]
            yield {"index": torch.arange(i, i + len(xb))}, head(xb)
    stats = cft.run(hooked(x), head, y.numpy(), hooked(xs), ys.to(torch.int8).numpy())
    assert cft.kept.tolist() == [True, False]
    assert stats["cft_classes_kept"] == 1
    assert head.fc.weight[0, 0] > 0                      # class 0 now points the right way
    assert torch.equal(head.fc.weight[1], w1)           # class 1 untouched


# ---- ranking and distribution pseudo-labels ---------------------------------------------------
@pytest.mark.parametrize("method", ["pbce", "ssgrl"])
def test_ranking_plugin_on_any_method(shapes, cache_dir, tmp_path, method):
    extra = [f"method.name={method}", "train.epochs=1", "plugins=[{name: ranking, weight: 2.0}]"]
    if method == "ssgrl":
        extra += ["method.trunk.dim=32", "method.trunk.attention_dim=16"]
    run = tmp_path / method
    t = Trainer(load_config(None, tiny(shapes, cache_dir, run, *extra)))
    # The term is weight x the library's ranking loss on the method's logits.
    batch = next(iter(t._train_loader(0)))
    t.model.train()
    out = t.model(batch)
    terms = t.plugins.loss(out, batch, 0, {})
    assert set(terms) == {"ranking"}
    assert torch.allclose(terms["ranking"], 2.0 * ranking_loss(out["logits"], batch["target"]))
    t.fit()
    r = rows(run)
    assert float(r[0]["loss_ranking"]) > 0
    assert float(r[0]["loss_total"]) > float(r[0]["loss_ranking"])


def test_dist_pseudo_target_rule():
    target = torch.tensor([[1, 0, 0, -1, 0]], dtype=torch.int8)
    pos = torch.tensor([[True, True, False, True, False]])
    neg = torch.tensor([[False, False, True, True, False]])
    assert pseudo_target(target, pos, neg).tolist() == [[1, 1, -1, -1, 0]]


# ---- the mechanism -----------------------------------------------------------------------------
def test_plugin_config_is_checked_and_recorded(shapes, cache_dir, tmp_path):
    assert {"logicmix", "ranking", "dist_pseudo", "cft", "ema"} <= set(list_plugins())
    with pytest.raises(ConfigError, match="unknown plug-in 'emma'; did you mean 'ema'"):
        load_config(None, ["plugins=[{name: emma}]"])
    with pytest.raises(ConfigError, match="unknown config key 'probability'"):
        load_config(None, ["plugins=[{name: logicmix, probability: 0.5}]"])
    with pytest.raises(ConfigError, match="plugins.logicmix.prob"):
        load_config(None, ["plugins=[{name: logicmix, prob: 1.5}]"])
    with pytest.raises(ConfigError, match="listed twice"):
        check_plugins(["ema", "ema"])
    cfg = load_config(None, ["plugins=[{name: logicmix, prob: 0.3}, ema]"])
    assert cfg.plugins[0] == {"name": "logicmix", "prob": 0.3, "min_k": 2, "max_k": 3,
                              "start_epoch": 0}
    assert cfg.plugins[1]["name"] == "ema" and "decay" in cfg.plugins[1]


def _same_checkpoints(a, b):
    ka, kb = (load_checkpoint(p / "last.pt") for p in (a, b))
    assert ka["model"].keys() == kb["model"].keys()
    for k in ka["model"]:
        assert torch.equal(ka["model"][k], kb["model"][k]), k
    assert ka["plugins"].keys() == kb["plugins"].keys()
    for k in ka["plugins"]:
        x, y = ka["plugins"][k], kb["plugins"][k]
        assert torch.equal(x, y) or (x.is_floating_point() and torch.equal(x.isnan(), y.isnan())
                                     and torch.equal(x.nan_to_num(), y.nan_to_num())), k
    return ka


def test_resume_is_exact_with_plugins(shapes, cache_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    plugins = ("plugins=[{name: logicmix, prob: 0.7}, {name: ranking}, "
               "{name: dist_pseudo, start_epoch: 1, thresholds: {min_positives: 1}}, "
               "{name: ema, decay: 0.9}, {name: cft, steps: 20}]")
    extra = ["train.epochs=3", plugins, "method.dropout=0.3", "train.select=train_holdout"]
    Trainer(load_config(None, tiny(shapes, cache_dir, a, *extra))).fit()
    Trainer(load_config(None, tiny(shapes, cache_dir, b, *extra, "train.stop_after_epochs=1"))).fit()
    assert main(["train", "--resume", "--run-dir", str(b)]) == 0
    ka = _same_checkpoints(a, b)
    ra, rb = rows(a), rows(b)
    for key in ("loss_bce", "loss_ranking", "loss_dist_pseudo", "mAP", "logicmix_share",
                "ema_decay"):
        assert [x[key] for x in ra] == [x[key] for x in rb], key
    assert "cft_classes_kept" in ra[-1] and ra[-1]["cft_classes_kept"] != ""
    assert float(ra[-1]["loss_dist_pseudo"]) > 0 and float(ra[0]["loss_dist_pseudo"]) == 0
    assert 0 < float(ra[0]["logicmix_share"]) <= 1
    # the checkpoint's model scores what the run reported (the EMA weights, after CFT)
    from mlrpl.engine.evaluate import evaluate_checkpoint
    ev = evaluate_checkpoint(a / "last.pt")
    assert ev["metrics"]["mAP"] == pytest.approx(float(ra[-1]["mAP"]), abs=1e-3)
    assert bool(ka["plugins"]["items.4.done"])


def test_no_plugin_changes_nothing(shapes, cache_dir, tmp_path):
    """Without plug-ins the checkpoint has no plug-in state and the loop draws nothing more
    (the pinned values of tests/test_pinned.py are the full check)."""
    run = tmp_path / "r"
    Trainer(load_config(None, tiny(shapes, cache_dir, run, "train.epochs=1"))).fit()
    assert "plugins" not in load_checkpoint(run / "last.pt")


def test_ema_swaps_weights_for_evaluation():
    from torch import nn
    from omegaconf import OmegaConf
    from mlrpl.plugins.base import PluginContext
    from mlrpl.plugins.ema import EMA, EMAConfig
    m = nn.Linear(2, 1)
    ema = EMA(OmegaConf.structured(EMAConfig(decay=0.5, warmup=False)),
              PluginContext(1, ["a"]), m)
    w0 = m.weight.detach().clone()
    with torch.no_grad():
        m.weight.add_(2.0)
    ema.update_state(m, {}, {})
    with ema.evaluation(m):
        assert torch.allclose(m.weight, w0 + 1.0)           # 0.5 * w0 + 0.5 * (w0 + 2)
    assert torch.allclose(m.weight, w0 + 2.0)               # the online weights are back


def test_cft_verb_on_a_checkpoint(shapes, cache_dir, tmp_path, capsys):
    run = tmp_path / "r"
    Trainer(load_config(None, tiny(shapes, cache_dir, run, "train.epochs=1",
                                   "train.select=train_holdout"))).fit()
    assert main(["cft", "--checkpoint", str(run / "last.pt"), "steps=30", "--json"]) == 0
    import json
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (run / "cft.pt").is_file() and r["stats"]["cft_classes_eligible"] >= 1
    from mlrpl.engine.evaluate import evaluate_checkpoint
    ev = evaluate_checkpoint(run / "cft.pt")
    assert ev["metrics"]["mAP"] == pytest.approx(r["after"]["mAP"], abs=1e-6)
    assert main(["cft", "--checkpoint", str(run / "last.pt")]) == 2      # cft.pt exists
    assert main(["cft", "--checkpoint", str(run / "last.pt"), "stepz=3", "--force"]) == 2
