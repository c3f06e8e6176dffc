"""Prediction and evaluation: shared by the trainer and by ``mlrpl eval`` / ``predict``."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

from mlrpl.utils import dist
from mlrpl.engine.checkpoint import load_checkpoint
from mlrpl.engine.experiment import (build_backbone, cache_source, class_difference, data_root,
                                     load_splits, make_dataset, open_checkpoint)
from mlrpl.engine.runtime import amp_dtype, select_device
from mlrpl.errors import DataError, MlrplError
from mlrpl.metrics import compute_metrics
from mlrpl.utils.progress import progress


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
    for batch in progress(loader, desc="evaluating", enable=show_progress, log=False):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.autocast(device_type=dev_type, dtype=amp, enabled=amp is not None):
            logits = model(batch)["logits"]
        idx.append(batch["index"].long())
        out.append(logits.float())
    index = torch.cat(idx)
    logits = torch.cat(out)
    index, logits = dist.all_gather_varlen(index), dist.all_gather_varlen(logits)
    return gather_unique(index.cpu().numpy(), logits.cpu().numpy(), len(dataset))


def left_out_of_map(labels: np.ndarray, classes) -> list[str]:
    """The classes without a known positive in `labels`: they have no AP and are left out of
    mAP (and of CP, CR), as :func:`mlrpl.metrics.compute_metrics` does."""
    has = (np.asarray(labels) == 1).any(0)
    return [c for c, h in zip(classes, has) if not h]


def map_scope(labels: np.ndarray, classes) -> str | None:
    """``mAP over K of C classes (N left out: no positive in this split: a, b, ...)`` when some
    classes are left out of mAP, else None: an mAP is read with the classes it covers."""
    out = left_out_of_map(labels, classes)
    if not out:
        return None
    shown = ", ".join(out[:10]) + (f", ... ({len(out) - 10} more)" if len(out) > 10 else "")
    return (f"mAP over {len(classes) - len(out)} of {len(classes)} classes ({len(out)} left out: "
            f"no positive in this split: {shown})")


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
        extra = [c for c in table if c not in classes]
        if missing or extra:
            raise DataError(f"its classes differ from the model's: no threshold for classes "
                            f"{missing[:5]}" + (f", thresholds for classes the model does not "
                                                f"have: {extra[:5]}" if extra else ""), path=path)
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
    check_data_paths(cfg, source, ("data.root",) if split is not None else None)
    if split is not None:
        ls = read_dataset(cfg.data.dataset, data_root(cfg.data.root), split,
                          **dict(cfg.data.reader_options or {}))
        warn_if_trained_on(cfg, ls, split)
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


def check_data_paths(cfg, source=None, keys=None) -> None:
    """A data.root / data.val_root (or `keys`) that does not exist from here is an error saying
    what it was resolved against and how to point at the data (before a reader's 'not found')."""
    from omegaconf import OmegaConf
    for key in keys or ("data.root", "data.val_root"):
        value = OmegaConf.select(cfg, key)
        if not value or "://" in str(value) or os.path.exists(data_root(value)):
            continue
        given = ""
        if source is not None:
            raw = _given_config(source).get(key.split(".")[1])
            if isinstance(raw, str) and raw != value:
                given = f" (the checkpoint's config gives {raw!r}"
                if "${oc.env:MLRPL_DATA" in raw:
                    env = os.environ.get("MLRPL_DATA")
                    given += f"; MLRPL_DATA is {'unset' if env is None else repr(env)}"
                given += ")"
        raise DataError(f"{key} not found: {value!r} is resolved against the working directory "
                        f"{os.getcwd()}{given}; run from the folder the model was trained in, set "
                        f"MLRPL_DATA, or pass {key}=PATH", path=os.path.abspath(data_root(value)))


def _given_config(source) -> dict:
    """The ``data`` section of a checkpoint's config as saved (paths as given), {} if unreadable."""
    try:
        return dict((load_checkpoint(source).get("config") or {}).get("data") or {})
    except (MlrplError, OSError, AttributeError, TypeError):
        return {}


def warn_if_trained_on(cfg, ls, split: str) -> None:
    """Log one line when the labelled `split` holds images the model was trained on: its scores
    would measure memory, not generalisation."""
    import logging
    log = logging.getLogger("mlrpl")
    try:
        train, val = load_splits(cfg)
    except MlrplError as e:
        log.warning(f"cannot tell whether split {split!r} holds training images: the run's own "
                    f"splits do not read from here ({e})")
        return

    from omegaconf import OmegaConf
    held = 0
    if OmegaConf.select(cfg, "train.select", default="eval") == "train_holdout":
        from mlrpl.engine.experiment import seeded_split
        keep, hold = seeded_split(len(train), cfg.train.select_holdout, cfg.data.split_seed)
        train, held = train.subset(keep), len(hold)   # those never reached the optimiser

    def keys(x):
        return {os.path.normpath(os.path.abspath(str(p))) for p in x.paths()}
    kt, ke, kv = keys(train), keys(ls), keys(val)
    both = len(kt & ke)
    if not both:
        return
    d = cfg.data
    trained = f"split {d.train_split!r}" if d.train_split else str(d.root)
    if d.val_root is None and d.val_split is None:
        trained += (f" less its seeded hold-out of {len(kv)} images (data.holdout={d.holdout}), "
                    f"the run's evaluation split")
    if held:
        trained += (f", less the {held} images held out to choose the best epoch "
                    f"(train.select=train_holdout)")
    n, t = len(ke), len(kt)
    if ke == kt:
        what = f"is the model's training set: the {t} images of {trained}"
    elif kt <= ke:
        rest = ke - kt
        others = ("the run's hold-out evaluation images" if rest == kv else "images it was not "
                  "trained on")
        what = (f"holds all {t} images the model was trained on ({trained}) and {len(rest)} "
                f"{others}")
    else:
        what = f"holds {both} of the {t} images the model was trained on ({trained})"
    log.warning(f"split {split!r} ({n} images) {what}: scores on training images measure "
                f"memory, not generalisation; leave out --split to evaluate the run's evaluation "
                f"split")


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
    if save_scores:  # checked before the evaluation, not after it (with the ids file beside)
        from mlrpl.metrics import check_scores_output
        check_scores_output(save_scores, force)
    ckpt = load_checkpoint(path)
    thr_file = None if thresholds_file is None else load_thresholds(thresholds_file,
                                                                    ckpt["classes"])
    model, ckpt, cfg = open_checkpoint(path, None, overrides=overrides, ckpt=ckpt,
                                       find_data=True)
    learned = _model_thresholds(model, path) if model_thresholds else None
    ls, scores = split_scores(model, cfg, ckpt["classes"], split, cfg.train.device, source=path)
    thr = cfg.eval.threshold if threshold is None else threshold
    if thr_file is not None:
        thr = thr_file
    if learned is not None:
        thr = learned
    metrics = score(scores, ls.labels, thr, ls.classes)
    if save_scores:  # the logits with the ids of their images: .npy + .ids.txt, or one .npz
        from mlrpl.metrics import write_scores
        write_scores(save_scores, scores, ls.items, ls.classes, kind="logits", keep_old=force)
    return {"metrics": metrics, "dataset": ls.source, "num_images": len(ls), "scores": scores,
            "thresholds": thr, "classes_left_out_of_mAP": left_out_of_map(ls.labels, ls.classes),
            "mAP_scope": map_scope(ls.labels, ls.classes)}


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
