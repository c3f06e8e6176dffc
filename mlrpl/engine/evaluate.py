"""Prediction and evaluation: shared by the trainer and by ``mlrpl eval`` / ``predict``."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

from mlrpl import dist
from mlrpl.engine.checkpoint import load_checkpoint
from mlrpl.engine.experiment import (build_backbone, cache_source, class_difference, data_root,
                                     load_splits, make_dataset, open_checkpoint)
from mlrpl.engine.runtime import amp_dtype, select_device
from mlrpl.errors import DataError, MlrplError
from mlrpl.metrics import compute_metrics
from mlrpl.progress import progress


def gather_unique(index: np.ndarray, scores: np.ndarray, n: int) -> np.ndarray:
    """Scores in dataset order from (index, scores) pairs gathered from every process.

    A DistributedSampler pads the last shard with repeats of the first items; each index is kept
    once. A missing index is an error: evaluation never drops a test image."""
    out = np.zeros((n, scores.shape[1]), dtype=np.float32)
    seen = np.zeros(n, dtype=bool)
    _, first = np.unique(index, return_index=True)
    out[index[first]] = scores[first]
    seen[index[first]] = True
    if not seen.all():
        raise MlrplError(f"evaluation saw {int(seen.sum())} of {n} items; missing "
                         f"{np.flatnonzero(~seen)[:5].tolist()}")
    return out


@torch.no_grad()
def predict_logits(model, dataset, batch_size: int, device, amp=None, num_workers: int = 0,
                   show_progress=None) -> np.ndarray:
    """fp32 logits (N, C) for every item of `dataset`, each counted once, on every process."""
    model.eval()
    if dist.is_dist():
        sampler = DistributedSampler(dataset, shuffle=False, drop_last=False)
    else:
        sampler = SequentialSampler(dataset)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers)
    idx, out = [], []
    dev_type = torch.device(device).type
    for batch in progress(loader, desc="evaluating", enable=show_progress):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.autocast(device_type=dev_type, dtype=amp, enabled=amp is not None):
            logits = model(batch)["logits"]
        idx.append(batch["index"].long())
        out.append(logits.float())
    index = torch.cat(idx)
    logits = torch.cat(out)
    index, logits = dist.all_gather_varlen(index), dist.all_gather_varlen(logits)
    return gather_unique(index.cpu().numpy(), logits.cpu().numpy(), len(dataset))


def score(scores: np.ndarray, labels: np.ndarray, threshold, classes) -> dict:
    """Every metric (percentages) plus the number of images evaluated."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = compute_metrics(scores, labels, threshold=threshold, class_names=classes)
    metrics["eval_images"] = int(scores.shape[0])
    return metrics


def load_thresholds(path, classes: list[str]) -> np.ndarray:
    """Per-class probability thresholds from a ``.npy`` (C,) or a JSON ``{class: threshold}``
    (optionally under a ``thresholds`` key). Every value must be a probability in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise MlrplError(f"{path}: thresholds file not found")
    if path.suffix == ".json":
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"not UTF-8 text ({e})", path=path) from None
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON ({e.msg}, column {e.colno}); expected "
                            f"{{\"class name\": threshold, ...}}", path=path, line=e.lineno) from None
        if isinstance(table, dict) and isinstance(table.get("thresholds"), dict):
            table = table["thresholds"]
        if not isinstance(table, dict):
            raise DataError(f"expected a JSON object {{\"class name\": threshold, ...}}, got "
                            f"{type(table).__name__}", path=path)
        missing = [c for c in classes if c not in table]
        if missing:
            raise DataError(f"no threshold for classes {missing[:5]}", path=path)
        values = []
        for c in classes:
            v = table[c]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise DataError(f"threshold {v!r} is not a number", path=path, field=c)
            values.append(float(v))
        arr = np.array(values, dtype=np.float64)
    else:
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"not a readable .npy array ({e})", path=path) from None
        if not np.issubdtype(arr.dtype, np.number):
            raise DataError(f"thresholds must be numbers, got dtype {arr.dtype}", path=path)
        arr = arr.astype(np.float64).reshape(-1)
        if arr.shape[0] != len(classes):
            raise DataError(f"{arr.shape[0]} thresholds for {len(classes)} classes", path=path)
    bad = np.flatnonzero(~((arr >= 0) & (arr <= 1)))
    if len(bad):
        raise DataError(f"threshold {arr[bad[0]]!r} of class {classes[bad[0]]!r} is not a "
                        f"probability in [0, 1]", path=path)
    return arr


def split_scores(model, cfg, classes: list[str], split: str | None, device,
                 show_progress=None, source=None):
    """(LabelSet, fp32 logits (N, C)) of a labelled split: ``split`` of the config's dataset, or
    its evaluation split when None; unreadable images skipped when the config says so. The
    split's classes must be ``classes`` (the model's)."""
    from mlrpl.data import read_dataset
    if split is not None:
        ls = read_dataset(cfg.data.dataset, data_root(cfg.data.root), split,
                          **dict(cfg.data.reader_options or {}))
    else:
        _, ls = load_splits(cfg)
    if list(ls.classes) != list(classes):
        raise MlrplError(f"{source or 'the model'}: its classes differ from those of the labelled "
                         f"split {ls.source}: "
                         f"{class_difference(classes, ls.classes, 'model', 'split')}")
    ds, kept = make_dataset(cfg, ls, None, model.backbone, device, train=False,
                            show_progress=show_progress)
    if kept is not None:
        ls = ls.subset(kept)
    logits = predict_logits(model, ds, cfg.train.eval_batch_size, device,
                            amp_dtype(cfg.train.amp), cfg.data.num_workers, show_progress)
    return ls, logits


def learned_thresholds(method) -> np.ndarray | None:
    """The per-class probability thresholds a method learned (SATL), None when it has none."""
    get = getattr(method, "inference_thresholds", None)
    thr = get() if get is not None else None
    return None if thr is None else np.asarray(thr, dtype=np.float64)


def _model_thresholds(model, path) -> np.ndarray:
    """The per-class probability thresholds a model learned, or a clear error."""
    thr = learned_thresholds(model.method)
    if thr is None:
        raise MlrplError(f"{path}: method {model.method.name!r} has no thresholds of its own "
                         f"(per-class thresholds are learned by 'satl'); use --threshold or "
                         f"--thresholds FILE")
    return thr


def evaluate_checkpoint(path, overrides=(), split=None, save_scores=None, threshold=None,
                        thresholds_file=None, model_thresholds=False, force=False) -> dict:
    """Metrics of a checkpoint on its evaluation split (or `split`), on one process.

    Thresholded metrics use, in order of precedence: the model's own per-class thresholds
    (``model_thresholds``), a thresholds file, ``threshold``, the config's ``eval.threshold``."""
    if thresholds_file is not None and model_thresholds:
        raise MlrplError("give either a thresholds file or --model-thresholds, not both")
    from mlrpl.files import check_output
    if save_scores:  # checked before the evaluation, not after it
        check_output(save_scores, force, "scores file")
    ckpt = load_checkpoint(path)
    thr_file = None if thresholds_file is None else load_thresholds(thresholds_file,
                                                                    ckpt["classes"])
    model, ckpt, cfg = open_checkpoint(path, None, overrides=overrides, ckpt=ckpt)
    learned = _model_thresholds(model, path) if model_thresholds else None
    ls, scores = split_scores(model, cfg, ckpt["classes"], split, cfg.train.device, source=path)
    thr = cfg.eval.threshold if threshold is None else threshold
    if thr_file is not None:
        thr = thr_file
    if learned is not None:
        thr = learned
    metrics = score(scores, ls.labels, thr, ls.classes)
    if save_scores:
        from mlrpl.files import save_npy
        save_npy(save_scores, scores)
    return {"metrics": metrics, "dataset": ls.source, "num_images": len(ls), "scores": scores,
            "thresholds": thr}


def build_cache(cfg) -> list[str]:
    """Compute the feature cache of the train and evaluation splits of `cfg`."""
    from mlrpl.data.cache import cached_features
    device = select_device(cfg.train.device)
    backbone = build_backbone(cfg).to(device)
    cached = cache_source(cfg, backbone)
    if cached is None:
        raise MlrplError("the feature cache needs a frozen backbone (model.freeze=all), or "
                         "model.freeze=hcp with model.cache_prefix=true")
    source, source_name, _ = cached
    lines = []
    for name, ls in zip(("train", "eval"), load_splits(cfg)):
        feats, valid, entry = cached_features(
            [str(p) for p in ls.paths()], source,
            backbone.transform(False, cfg.data.image_size), cfg.model.cache_dir,
            backbone_name=source_name, batch_size=cfg.train.eval_batch_size, device=device,
            num_workers=cfg.data.num_workers, on_bad_image=cfg.data.on_bad_image,
            amp_dtype=amp_dtype(cfg.train.amp))
        lines.append(f"{name}: {feats.shape[0]} items, maps {tuple(feats.shape[1:])} fp16, "
                     f"{int((~valid).sum())} unreadable -> {entry}")
    return lines
