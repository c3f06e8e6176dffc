"""Training engine: config, run directory, checkpoints, exact resume, cache vs images, faults."""
import csv
import json

import numpy as np
import pytest
import torch

from mlrpl.cli import main
from mlrpl.config import load_config
from mlrpl.engine.checkpoint import load_checkpoint
from mlrpl.engine.trainer import Trainer, TrainingError
from mlrpl.errors import ConfigError, DataError


def tiny(shapes, cache_dir, run_dir, *extra):
    return [f"data.root={shapes}", "data.dataset=yolo", "data.train_split=train",
            "data.val_split=val", "data.image_size=64", "data.known_proportion=0.5",
            "model.backbone=efficientnet_lite0", "model.freeze=all", f"model.cache_dir={cache_dir}",
            "optim.lr=0.01", "sched.name=step", "sched.step_size=1", "sched.gamma=0.5",
            "train.epochs=2", "train.batch_size=8", "train.eval_batch_size=16",
            "train.tensorboard=false", f"run.dir={run_dir}", *extra]


def rows(run_dir):
    with open(run_dir / "summary.csv") as fh:
        return list(csv.DictReader(fh))


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'; did you mean 'train.epochs'"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate'"):
        load_config(None, ["optim.learning_rate=3"])
    with pytest.raises(ConfigError, match="bad value for 'train.epochs'"):
        load_config(None, ["train.epochs=many"])
    with pytest.raises(ConfigError, match="unknown method 'pbcee'; did you mean 'pbce'"):
        load_config(None, ["method.name=pbcee"])


def test_print_config(capsys):
    assert main(["train", "--config", "configs/coco128_pbce_cpu.yaml", "--print-config",
                 "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 3" in out and "backbone: efficientnet_lite0" in out
    assert main(["train", "--print-config", "train.epoch=3"]) == 2
    assert "did you mean 'train.epochs'" in capsys.readouterr().err


def test_train_run_directory_and_checkpoint(shapes, cache_dir, tmp_path):
    run = tmp_path / "run"
    result = Trainer(load_config(None, tiny(shapes, cache_dir, run))).fit()
    for name in ("config.yaml", "summary.csv", "train.log", "last.pt", "best.pt", "mask.npy",
                 "mask.provenance.json", "metrics.json"):
        assert (run / name).is_file(), name
    r = rows(run)
    assert [int(x["epoch"]) for x in r] == [1, 2]  # counted from 1, as the console does
    for key in ("loss_bce", "mAP", "ap_rank", "CF1", "OF1_top3", "lr", "eval_images"):
        assert key in r[0]
    assert int(r[0]["eval_images"]) == 24
    # the learning rate each epoch trained with; StepLR halves it every epoch
    assert [float(x["lr"]) for x in r] == pytest.approx([0.01, 0.005])
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["classes"][0] == "red_circle" and ck["encoding"] == "hcp" and ck["epoch"] == 2
    assert ck["mask_hash"] and ck["preprocess"]["mean"]
    assert not any(k.startswith("backbone.") for k in ck["model"])  # frozen pretrained: digest
    assert result["last"]["mAP"] == pytest.approx(float(r[-1]["mAP"]), abs=1e-3)
    mask = np.load(run / "mask.npy")
    assert abs((mask != 0).mean() - 0.5) < 0.1
    # never clobbered without being asked
    with pytest.raises(ConfigError, match="already exists"):
        Trainer(load_config(None, tiny(shapes, cache_dir, run)))
    assert (run / "last.pt").is_file()


def test_resume_is_exact(shapes, cache_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    extra = ["method.dropout=0.3"]  # dropout draws random numbers: resume must restore them
    Trainer(load_config(None, tiny(shapes, cache_dir, a, *extra))).fit()
    Trainer(load_config(None, tiny(shapes, cache_dir, b, *extra, "train.stop_after_epochs=1"))).fit()
    assert len(rows(b)) == 1
    assert main(["train", "--resume", "--run-dir", str(b)]) == 0
    ka, kb = (load_checkpoint(p / "last.pt") for p in (a, b))
    assert ka["model"].keys() == kb["model"].keys()
    for k in ka["model"]:
        assert torch.equal(ka["model"][k], kb["model"][k]), k
    ra, rb = rows(a), rows(b)
    for key in ("loss_bce", "mAP", "CF1", "OF1", "lr"):
        assert [x[key] for x in ra] == [x[key] for x in rb], key


def test_cached_and_image_paths_give_the_same_logits(shapes, cache_dir, tmp_path):
    run = tmp_path / "r"
    Trainer(load_config(None, tiny(shapes, cache_dir, run, "train.epochs=1"))).fit()
    from mlrpl.engine.evaluate import evaluate_checkpoint
    cached = evaluate_checkpoint(run / "last.pt")
    images = evaluate_checkpoint(run / "last.pt", overrides=["model.cache_features=false"])
    # Same inputs; the only difference is the cache's fp16 storage of the feature maps.
    assert np.allclose(cached["scores"], images["scores"], atol=2e-2, rtol=1e-2)
    assert cached["metrics"]["mAP"] == pytest.approx(images["metrics"]["mAP"], abs=1.0)


def test_nan_loss_stops_and_keeps_last_checkpoint(shapes, cache_dir, tmp_path):
    run = tmp_path / "nan"
    trainer = Trainer(load_config(None, tiny(shapes, cache_dir, run, "train.epochs=3")))
    real = trainer.model.method.loss

    def poisoned(outputs, batch, epoch):
        terms = real(outputs, batch, epoch)
        if epoch == 1:
            terms["bce"] = terms["bce"] * float("nan")
        return terms
    trainer.model.method.loss = poisoned
    with pytest.raises(TrainingError, match="non-finite loss at epoch 2.*last.pt \\(epoch 1\\)"):
        trainer.fit()
    ck = load_checkpoint(run / "last.pt")
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values()
                                    if v.is_floating_point())


def test_bad_image_error_or_skip(tmp_path, cache_dir):
    from mlrpl.data.synthetic import make_shapes_dataset
    root = make_shapes_dataset(tmp_path / "d", n_train=20, n_val=10, size=64, num_classes=4)
    bad = sorted((root / "images" / "train").iterdir())[3]
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match=f"{bad.name}.*unreadable image"):
        Trainer(load_config(None, tiny(root, cache_dir, tmp_path / "r1", "train.epochs=1")))
    with pytest.raises(DataError, match=f"{bad.name}.*unreadable image"):
        Trainer(load_config(None, tiny(root, cache_dir, tmp_path / "r2", "train.epochs=1",
                                       "model.cache_features=false"))).fit()
    t = Trainer(load_config(None, tiny(root, cache_dir, tmp_path / "r3", "train.epochs=1",
                                       "data.on_bad_image=skip")))
    assert len(t.train_ds) == 19
    t.fit()


def test_eval_verb(shapes, cache_dir, tmp_path, capsys):
    run = tmp_path / "e"
    Trainer(load_config(None, tiny(shapes, cache_dir, run, "train.epochs=1"))).fit()
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["eval_images"] == 24
    assert m["mAP"] == pytest.approx(float(rows(run)[-1]["mAP"]), abs=1e-3)
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [
    ["optim.name=sgd", "optim.lr=0.1", "sched.name=onecycle", "optim.grad_clip=1.0"],
    ["optim.name=adamw", "sched.name=cosine", "train.amp=bf16"],
    ["model.freeze=hcp", "model.cache_features=false", "optim.backbone_lr_mult=0.1",
     "train.batch_size=4"],
])
def test_optimisers_schedules_precision_and_image_path(shapes, cache_dir, tmp_path, extra):
    run = tmp_path / "r"
    t = Trainer(load_config(None, tiny(shapes, cache_dir, run, "train.epochs=1", *extra)))
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    untrained, _ = t.evaluate(t.val_ds, t.exp.val.labels)
    result = t.fit()
    # one epoch learns: the model ranks the evaluation split better than before it trained (34.2
    # untrained; 47 to 57 after the epoch)
    assert result["last"]["mAP"] > untrained["mAP"] + 5, (untrained["mAP"], result["last"]["mAP"])
    after = t.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("method.") for k in changed)
    if "model.freeze=hcp" in extra:
        # only the last stage of the backbone trains; frozen stages keep weights and BN statistics
        assert any(k.startswith("backbone._blocks.15") for k in changed)
        assert not any(k.startswith("backbone._blocks.0.") or k.startswith("backbone._conv_stem")
                       for k in changed)
        ck = torch.load(run / "last.pt", weights_only=True)
        assert any(k.startswith("backbone.") for k in ck["model"])  # a trained backbone is saved
        groups = {g["name"]: g["lr"] for g in t.optimizer.param_groups}
        assert groups["backbone"] == pytest.approx(0.1 * groups["method"])


@pytest.mark.slow
def test_demo_falls_back_to_generated_data(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLRPL_DATA", raising=False)
    monkeypatch.setenv("MLRPL_CACHE", str(tmp_path / "cache"))
    from mlrpl.experiments.demo import run_demo
    assert run_demo(data_root=str(tmp_path / "nothing"), out=str(tmp_path / "demo"), epochs=2) == 0
    out = capsys.readouterr().out
    assert "COCO128 was not found" in out and "generated shapes" in out
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 10_000
    for name in ("p0.3", "p0.3_prior_whole", "p0.3_prior", "p1.0", "p0.3_random_backbone"):
        assert (tmp_path / "demo" / name / "best.pt").is_file()


def test_every_preset_loads_and_base_files_chain(tmp_path):
    from pathlib import Path
    presets = sorted(Path("configs").glob("*.yaml"))
    assert len(presets) >= 6
    for p in presets:
        cfg = load_config(p)
        assert cfg.method.name in p.name
    (tmp_path / "a.yaml").write_text("base: b.yaml\ntrain: {epochs: 3}\n")
    (tmp_path / "b.yaml").write_text("train: {epochs: 7, batch_size: 5}\n")
    cfg = load_config(tmp_path / "a.yaml")
    assert cfg.train.epochs == 3 and cfg.train.batch_size == 5
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="include each other"):
        load_config(tmp_path / "a.yaml")
