"""``mlrpl cft --checkpoint C``: category-wise fine-tuning of a trained checkpoint, after the fact.

The plug-in itself (:class:`mlrpl.plugins.cft.CFT`: re-fitting each class's final layer on the
known labels with ASL, kept where the class's selection AP improves) lives with the plug-ins;
this is its driver over a run directory: it reopens the checkpoint, its data and its partial
labels, runs the plug-in once and writes a new checkpoint beside the old one.
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from mlrpl.config import load_config
from mlrpl.engine.checkpoint import load_checkpoint
from mlrpl.engine.evaluate import predict_logits, score
from mlrpl.engine.experiment import load_splits, make_dataset, make_partial, open_checkpoint
from mlrpl.engine.runtime import select_device, to_device
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
    train, val = load_splits(cfg)
    run_dir = path.parent if (path.parent / "mask.npy").is_file() else None
    partial, _ = make_partial(cfg, train, run_dir)
    model, _, _ = open_checkpoint(path, device, ckpt=ckpt)
    train_ds, kept = make_dataset(cfg, train, partial, model.backbone, device, train=False)
    if kept is not None:
        train, partial = train.subset(kept), partial[kept]
    val_ds, kept = make_dataset(cfg, val, None, model.backbone, device, train=False)
    if kept is not None:
        val = val.subset(kept)

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
                                  int(cfg.seed)), model)
    stats = cft.run(batches(train_ds), model.method, partial, batches(val_ds), val.labels)
    after = metrics()
    new = dict(ckpt)
    new["model"] = {k: v for k, v in model.state_dict().items() if k in ckpt["model"]}
    new["metrics"] = {k: float(v) for k, v in after.items()}
    new["cft"] = {"from": str(path), "config": OmegaConf.to_container(conf), **stats}
    atomic_save(new, out, keep_old=force)
    return {"before": before, "after": after, "stats": stats, "out": str(out)}
