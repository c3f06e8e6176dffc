"""``mlrpl cft --checkpoint C``: category-wise fine-tuning of a trained checkpoint, after the fact.

The plug-in itself (:class:`mlrpl.plugins.cft.CFT`: re-fitting each class's final layer on the
known labels with ASL, kept where the class's selection AP improves) lives with the plug-ins;
this is its driver over a run directory: it reopens the checkpoint, its data and its partial
labels, runs the plug-in once and writes a new checkpoint beside the old one.

It re-fits on the images the run trained on and, with ``select=train_holdout`` (the default),
selects on the training images the run held out of training before it started
(``train.select=train_holdout``: the same seeded draw, ``train.select_holdout`` with
``data.split_seed``). A run trained without them is refused in one line rather than selected on
images it trained on; ``select=eval_split`` selects on the evaluation split (an upper bound).
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from mlrpl.config import load_config
from mlrpl.engine.checkpoint import load_checkpoint
from mlrpl.engine.evaluate import predict_logits, score
from mlrpl.engine.experiment import (load_splits, make_dataset, make_partial, open_checkpoint,
                                     seeded_split)
from mlrpl.engine.runtime import select_device, to_device
from mlrpl.errors import MlrplError
from mlrpl.plugins.base import PluginContext
from mlrpl.plugins.cft import CFT, CFTConfig
from mlrpl.plugins.registry import check_plugins
from mlrpl.utils.files import check_output
from mlrpl.utils.torchio import atomic_save


def cft_checkpoint(path, out=None, options=(), force: bool = False) -> dict:
    """``mlrpl cft --checkpoint C``: category-wise fine-tuning of a trained checkpoint, written to
    ``out`` (default: ``cft.pt`` beside it); ``options`` are ``key=value`` keys of the plug-in.
    Returns the evaluation split's metrics before and after and the CFT statistics."""
    path = Path(path)
    out = Path(out) if out is not None else path.with_name("cft.pt")
    check_output(out, force, "checkpoint")
    item = {"name": "cft"}
    for kv in options:
        k, _, v = kv.partition("=")
        item[k.strip()] = OmegaConf.from_dotlist([f"v={v}"]).v
    conf = OmegaConf.merge(OmegaConf.structured(CFTConfig), check_plugins([item])[0])
    ckpt = load_checkpoint(path)
    cfg = load_config(None, [], base=ckpt["config"])
    device = select_device(cfg.train.device)
    held_out = cfg.train.select == "train_holdout"
    if conf.select == "train_holdout" and not held_out:
        raise MlrplError(f"cft --checkpoint: {path} was trained without training images held "
                         f"out of training (train.select={cfg.train.select}), so select="
                         f"train_holdout would select on images it trained on; retrain with "
                         f"train.select=train_holdout, or pass select=eval_split (it selects on "
                         f"the evaluation split: an upper bound)")
    train, val = load_splits(cfg)
    run_dir = path.parent if (path.parent / "mask.npy").is_file() else None
    partial, _ = make_partial(cfg, train, run_dir)
    model, _, _ = open_checkpoint(path, device, ckpt=ckpt)
    selection = None
    if held_out:  # the images the run held out of training, drawn as the trainer drew them
        keep, hold = seeded_split(len(train), cfg.train.select_holdout, cfg.data.split_seed)
        selection = train.subset(hold).with_labels(partial[hold])
        train, partial = train.subset(keep), partial[keep]
    train_ds, kept = make_dataset(cfg, train, partial, model.backbone, device, train=False)
    if kept is not None:
        train, partial = train.subset(kept), partial[kept]
    val_ds, kept = make_dataset(cfg, val, None, model.backbone, device, train=False)
    if kept is not None:
        val = val.subset(kept)
    if conf.select == "train_holdout":
        sel_ds, kept = make_dataset(cfg, selection, None, model.backbone, device, train=False)
        if kept is not None:
            selection = selection.subset(kept)
        sel_labels = selection.labels
        select_from = (f"training images held out of training before the run (train.select="
                       f"train_holdout, train.select_holdout={cfg.train.select_holdout}, "
                       f"data.split_seed={cfg.data.split_seed})")
    else:
        sel_ds, sel_labels = val_ds, val.labels
        select_from = "images of the evaluation split (an upper bound)"

    def batches(ds):
        loader = DataLoader(ds, batch_size=cfg.train.eval_batch_size)
        with torch.no_grad():
            for batch in loader:
                batch = to_device(batch, device)
                yield batch, model(batch)

    def metrics():
        s = predict_logits(model, val_ds, cfg.train.eval_batch_size, device)
        return score(s, val.labels, cfg.eval.threshold, val.classes)

    before = metrics()
    cft = CFT(conf, PluginContext(len(train.classes), list(train.classes), partial,
                                  int(cfg.seed),
                                  0 if selection is None else len(selection)), model)
    stats = cft.run(batches(train_ds), model, partial, batches(sel_ds), sel_labels, select_from)
    after = metrics()
    new = dict(ckpt)
    new["model"] = {k: v for k, v in model.state_dict().items() if k in ckpt["model"]}
    new["metrics"] = {k: float(v) for k, v in after.items()}
    new["cft"] = {"from": str(path), "config": OmegaConf.to_container(conf),
                  "select_from": select_from, **stats}
    atomic_save(new, out, keep_old=force)
    return {"before": before, "after": after, "stats": stats, "out": str(out)}
