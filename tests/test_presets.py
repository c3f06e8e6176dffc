"""Every preset in configs/ runs: one epoch on a tiny generated set at 64 px with random weights
(the authors' ResNet-101 recipes included), so a broken preset fails CI, not a user's first GPU
hour. Only the data, the image size, the epochs, pretrained weights and the run directory are
replaced; method, model, optimiser, schedule and batch size are the preset's."""
import math
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO
from tests.test_transfer import _embeddings

PRESETS = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    """8 training and 8 evaluation images: one step of every preset's batch size."""
    from mlrpl.data.synthetic import make_shapes_dataset
    return make_shapes_dataset(tmp_path_factory.mktemp("tiny") / "data", n_train=8, n_val=8,
                               size=64, num_classes=6, seed=1)


def test_there_are_presets():
    assert len(PRESETS) >= 25 and any("resnet101" in p for p in PRESETS)


# The authors' ResNet-101 recipes (25 presets, about 40 s together): marked slow.
@pytest.mark.parametrize("preset", [
    pytest.param(p, marks=pytest.mark.slow) if "resnet101" in p else p for p in PRESETS])
def test_preset_trains_one_epoch(preset, tiny_shapes, cache_dir, tmp_path):
    from mlrpl.config import load_config
    from mlrpl.engine.trainer import Trainer
    cfg = load_config(REPO / "configs" / preset, [
        f"data.root={tiny_shapes}", "data.dataset=yolo", "data.num_workers=0", "data.train_split=train",
        "data.val_split=val", "data.reader_options={}", "data.image_size=64",
        "data.mask_file=null", f"data.embeddings={_embeddings(tmp_path)}",
        "model.pretrained=false", f"model.cache_dir={cache_dir}", "train.epochs=1",
        "train.eval_batch_size=8",
        "train.device=cpu", "train.tensorboard=false", "train.progress=never",
        f"run.dir={tmp_path / 'run'}"])
    trainer = Trainer(cfg)
    start = {k: v.clone() for k, v in trainer.model.method.state_dict().items()}
    result = trainer.fit()
    assert result["epochs"] == 1
    last = result["last"]
    # the step ran: the total is finite and the sum of the method's (weighted) terms, and it
    # moved the method's weights
    terms = [v for k, v in last.items() if k.startswith("loss_") and k != "loss_total"]
    assert terms and math.isfinite(last["loss_total"])
    assert last["loss_total"] == pytest.approx(sum(terms), rel=1e-4, abs=1e-6)
    end = trainer.model.method.state_dict()
    assert any(not torch.equal(start[k], end[k]) for k in start if end[k].is_floating_point())
    # scored: an AP (in %) of 8 images, the headline mAP being the VOC AP
    assert 0 < last["mAP"] <= 100 and last["mAP"] == last["ap_voc"]
    # what trained is the preset: its method, model, optimiser, schedule and batch size (but the
    # keys replaced above)
    from mlrpl.config import resolved
    saved = yaml.safe_load((Path(result["run_dir"]) / "config.yaml").read_text())
    own = resolved(load_config(REPO / "configs" / preset))
    for section in ("method", "optim", "sched"):
        assert saved[section] == own[section], section
    for key in ("backbone", "freeze"):
        assert saved["model"][key] == own["model"][key], key
    assert saved["train"]["batch_size"] == own["train"]["batch_size"]
    assert (Path(result["run_dir"]) / "last.pt").is_file()
