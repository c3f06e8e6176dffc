"""model.cache_prefix: with freeze: hcp, the frozen layers' output is computed once and the last
stage trains on it (the fine-tuning regime on a few CPU cores,
configs/sweeps/voc2007-2k_finetune_cpu.yaml)."""
import numpy as np
import pytest
import torch

from mlrpl.cli import main
from mlrpl.config import load_config
from mlrpl.engine.checkpoint import load_checkpoint
from mlrpl.engine.trainer import Trainer
from mlrpl.errors import ConfigError
from mlrpl.models.backbones import FrozenPart, apply_freeze, create_backbone

from .test_engine import rows, tiny

PREFIX = ["model.freeze=hcp", "model.cache_prefix=true", "optim.backbone_lr_mult=0.1"]


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_frozen_part_then_last_stage_is_the_backbone(name):
    torch.manual_seed(0)
    bb = apply_freeze(create_backbone(name, pretrained=False), "hcp").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(bb.forward_last_stage(FrozenPart(bb)(x)), bb(x))
    # the cache key's digest leaves out exactly the weights that train
    trained = {k for k, _ in bb.named_parameters() if _.requires_grad}
    kept = set(FrozenPart(bb).cache_state())
    assert trained and not trained & kept
    assert kept | {k for k in bb.state_dict() if k not in kept} == set(bb.state_dict())


def test_cache_prefix_needs_the_hcp_policy(shapes, cache_dir, tmp_path):
    with pytest.raises(ConfigError, match="model.cache_prefix=true needs model.freeze=hcp"):
        load_config(None, tiny(shapes, cache_dir, tmp_path / "r", "model.cache_prefix=true"))


def test_prefix_cache_trains_the_last_stage_resumes_exactly_and_matches_images(
        shapes, cache_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    t = Trainer(load_config(None, tiny(shapes, cache_dir, a, *PREFIX)))
    assert set(t.train_ds[0]) >= {"prefix", "target"} and "features" not in t.train_ds[0]
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.fit()
    changed = {k for k, v in t.model.state_dict().items() if not torch.equal(before[k], v)}
    assert any(k.startswith("backbone._blocks.15") for k in changed)      # the last stage learns
    assert not any(k.startswith(("backbone._blocks.0.", "backbone._conv_stem", "backbone._bn0"))
                   for k in changed)                                     # the rest is frozen
    entries = sorted(p.name for p in cache_dir.iterdir() if not p.name.startswith("."))

    Trainer(load_config(None, tiny(shapes, cache_dir, b, *PREFIX,
                                   "train.stop_after_epochs=1"))).fit()
    assert main(["train", "--resume", "--run-dir", str(b)]) == 0
    ka, kb = (load_checkpoint(p / "last.pt") for p in (a, b))
    for k in ka["model"]:
        assert torch.equal(ka["model"][k], kb["model"][k]), k
    assert [r["mAP"] for r in rows(a)] == [r["mAP"] for r in rows(b)]
    # a resumed run (trained last stage) finds the same cache entries: no new ones
    assert sorted(p.name for p in cache_dir.iterdir() if not p.name.startswith(".")) == entries

    from mlrpl.engine.evaluate import evaluate_checkpoint
    cached = evaluate_checkpoint(a / "last.pt")
    images = evaluate_checkpoint(a / "last.pt", overrides=["model.cache_prefix=false"])
    # the same model; the only difference is the cache's fp16 storage of the frozen output
    assert np.allclose(cached["scores"], images["scores"], atol=2e-2, rtol=1e-2)
