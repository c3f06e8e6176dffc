"""Every preset in configs/ runs: one epoch on a tiny generated set at 64 px with random weights
(the authors' ResNet-101 recipes included), so a broken preset fails CI, not a user's first GPU
hour. Only the data, the image size, the epochs, pretrained weights and the run directory are
replaced; method, model, optimiser, schedule and batch size are the preset's."""
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("preset", PRESETS)
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
    result = Trainer(cfg).fit()
    assert result["epochs"] == 1
    last = result["last"]
    assert last["loss_total"] == last["loss_total"] and last["mAP"] >= 0      # finite, scored
    assert (Path(result["run_dir"]) / "last.pt").is_file()
