"""From a resolved config to data, partial labels and a model: everything the trainer needs.

Kept apart from the loop so that ``mlrpl eval``, ``predict`` and ``cache`` build exactly the same
pieces as ``train``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlrpl.data import LabelSet, read_dataset
from mlrpl.data.labelset import label_hash
from mlrpl.data.dataset import PRIOR_MEMO_KEY
from mlrpl.data.simulate import load_partial, provenance, simulate, write_outputs
from mlrpl.utils import dist
from mlrpl.errors import ConfigError, DataError, MlrplError
from mlrpl.methods import get_method_class
from mlrpl.methods.base import MethodContext


class MLRModel(nn.Module):
    """Backbone + method (+ the optional ``model.prior``, added to the method's logits). With
    cached features the backbone is present but not run."""

    def __init__(self, backbone: nn.Module, method: nn.Module, prior: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.method = method
        self.prior = prior

    def features(self, batch: dict) -> torch.Tensor:
        if "features" in batch:
            return batch["features"]
        if "prefix" in batch:   # model.cache_prefix: the frozen layers' cached output
            return self.backbone.forward_last_stage(batch["prefix"])
        return self.backbone(batch["image"])

    def forward(self, batch: dict) -> dict:
        return self.head(self.features(batch), batch)

    def head(self, features: torch.Tensor, batch: dict | None = None) -> dict:
        """The method's outputs on backbone `features`; with a class prior, ``logits`` include the
        prior's (``prior_logits`` in the outputs: its part). A method that thresholds, ranks or
        recovers labels from its class scores (``Method.reads_prior``) receives the prior's logits
        in ``batch["prior_logits"]`` and adds them itself, before it uses the scores; for the
        others the model adds them to ``logits`` after the method's forward."""
        if self.prior is None:
            return self.method(features, batch)
        # detached inside: no gradient through the prior; a cached map's is memoised in the batch
        memo = None if batch is None else batch.get(PRIOR_MEMO_KEY)
        prior = self.prior(features) if memo is None else self.prior(features, memo)
        if getattr(self.method, "reads_prior", False):
            out = dict(self.method(features, {**(batch or {}), "prior_logits": prior}))
        else:
            out = dict(self.method(features, batch))
            out["logits"] = out["logits"] + prior.to(out["logits"].dtype)
        out["prior_logits"] = prior
        return out


# ---- data -------------------------------------------------------------------------------------
def data_root(root: str) -> str:
    return os.path.expanduser(str(root))


def opaque_names(n: int) -> list[str]:
    """``data.class_names=opaque``: c00, c01, ... (as many digits as the class count needs)."""
    width = max(2, len(str(n - 1)))
    return [f"c{i:0{width}d}" for i in range(n)]


def load_splits(cfg) -> tuple[LabelSet, LabelSet]:
    """Train and evaluation LabelSets; with ``data.class_names=opaque`` the classes renamed
    c00, c01, ... (see :func:`read_splits`)."""
    train, val = read_splits(cfg)
    if getattr(cfg.data, "class_names", "as_read") == "opaque":
        names = opaque_names(train.num_classes)
        train, val = (LabelSet(ls.items, list(names), ls.labels, ls.root, ls.source, dict(ls.meta))
                      for ls in (train, val))
    return train, val


def read_splits(cfg) -> tuple[LabelSet, LabelSet]:
    """Train and evaluation LabelSets (full labels).

    The evaluation labels come from ``data.val_root`` (another file or root, read with
    ``data.val_split``), else from ``data.val_split`` of ``data.root``, else from a seeded holdout
    (``data.holdout`` of the train split, drawn with ``data.split_seed``). A file with a ``split``
    column needs its splits named. Train and evaluation items that overlap (same image path or
    id) are an error naming a few of them."""
    d = cfg.data
    opts = dict(d.reader_options or {})
    train = read_dataset(d.dataset, data_root(d.root), d.train_split, **opts)
    vopts = dict(opts)
    if d.dataset == "csv" and "classes" not in vopts:
        vopts["classes"] = list(train.classes)   # a name outside them is an error, by line
    if train.meta.get("tokens") and not {"positive", "negative", "unknown"} & set(vopts):
        vopts.update(train.meta["tokens"])       # read the same tokens the same way
    val_root = getattr(d, "val_root", None)
    if val_root:
        val = read_dataset(d.dataset, data_root(val_root), d.val_split, **vopts)
        where = f"{val_root}" + (f" split {d.val_split!r}" if d.val_split else "")
    elif d.val_split is not None:
        val = read_dataset(d.dataset, data_root(d.root), d.val_split, **vopts)
        where = f"split {d.val_split!r}"
    else:
        splits = train.meta.get("splits")
        if d.train_split is None and splits is not None:
            raise ConfigError(f"{d.root}: the file has a 'split' column (values "
                              f"{sorted(set(splits))}); name the splits with data.train_split "
                              f"and data.val_split")
        train_idx, val_idx = seeded_split(len(train), d.holdout, d.split_seed)
        return train.subset(train_idx), train.subset(val_idx)
    if val.classes != train.classes:
        raise DataError(f"the classes of {where} differ from those of the training split: "
                        f"{class_difference(train.classes, val.classes, 'training split', 'evaluation split')}",
                        path=d.root)
    check_no_overlap(train, val)
    return train, val


def seeded_split(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) sorted indices of ``range(n)``: ``round(share * n)`` (at least 1) held
    out, drawn with ``numpy.random.default_rng(seed)``, the same for every experiment seed."""
    perm = np.random.default_rng(seed).permutation(n)
    n_out = max(1, int(round(share * n)))
    return np.sort(perm[n_out:]), np.sort(perm[:n_out])


def class_difference(a: list[str], b: list[str], name_a: str = "first",
                     name_b: str = "second") -> str:
    """How two class lists differ, in a few words (for error messages)."""
    only_a = [c for c in a if c not in b]
    only_b = [c for c in b if c not in a]
    if not only_a and not only_b:
        return f"the same {len(a)} names in another order"
    return (f"{len(a)} vs {len(b)} classes; only in the {name_a}: {only_a[:5]}, only in the "
            f"{name_b}: {only_b[:5]}")


def check_no_overlap(train: LabelSet, val: LabelSet) -> None:
    """Raise a DataError when an image is both a training and an evaluation item."""
    def keys(ls):
        return {os.path.normpath(os.path.abspath(str(p))): item
                for p, item in zip(ls.paths(), ls.items)}
    kt, kv = keys(train), keys(val)
    both = sorted(set(kt) & set(kv))
    if both:
        raise DataError(f"{len(both)} evaluation image(s) are also training images, e.g. "
                        f"{[kv[k] for k in both[:3]]}: evaluation would measure memory; "
                        f"give disjoint splits", path=val.source.split(":", 1)[-1] or None)


def make_partial(cfg, train: LabelSet, run_dir: Path | None) -> tuple[np.ndarray, dict]:
    """The partial training labels: from ``data.mask_file``, from the run directory (resume),
    or simulated once (main process) and written to ``run_dir/mask.npy`` with provenance."""
    d = cfg.data
    saved = run_dir / "mask.npy" if run_dir is not None else None
    if saved is not None and saved.is_file():
        partial = load_partial(saved, train.labels)
        prov = run_dir / "mask.provenance.json"
        try:
            record = json.loads(prov.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError("the run's mask provenance is missing (it is written with mask.npy); "
                            "the run directory is incomplete and cannot be resumed", path=prov) from None
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"the run's mask provenance is damaged ({e})", path=prov) from None
        if not isinstance(record, dict) or "known_entries" not in record:
            raise DataError("the run's mask provenance is damaged (expected the JSON record "
                            "written by mlrpl)", path=prov)
        report_training_labels(train, partial, record)
        return partial, record
    if d.mask_file:
        partial = load_partial(d.mask_file, train.labels)
        record = provenance(partial, train.labels, train.classes, "imported", source=train.source,
                            imported_from=str(d.mask_file))
    elif d.protocol == "full" or (d.protocol in ("hcp", "rps") and d.known_proportion >= 1.0):
        partial = train.labels.copy()
        record = provenance(partial, train.labels, train.classes, d.protocol, p=1.0,
                            source=train.source)
    else:
        check_may_hide_real_labels(cfg, train)
        seed = cfg.seed if d.mask_seed is None else d.mask_seed
        partial = simulate(train.labels, d.protocol, p=d.known_proportion, seed=seed, n=d.fpc_n)
        record = provenance(partial, train.labels, train.classes, d.protocol, p=d.known_proportion,
                            seed=seed, n=d.fpc_n, source=train.source)
    check_trainable(cfg, partial)
    report_training_labels(train, partial, record)
    if run_dir is not None and dist.is_main():
        write_outputs(partial, record, run_dir / "mask.npy", "npy", overwrite=True)
    return partial, record


def _names(classes: list[str], most: int = 10) -> str:
    shown = ", ".join(classes[:most])
    return shown + (f", ... ({len(classes) - most} more)" if len(classes) > most else "")


def report_training_labels(train: LabelSet, partial: np.ndarray, record: dict) -> None:
    """Complete the mask provenance `record` with how the labels were read (VOC's difficult rule,
    the reading of a 0/1 spreadsheet) and the classes the partial labels cannot teach, and say
    them in the log before training."""
    import logging
    from mlrpl.data.simulate import unlearnable_classes
    if "difficult" in train.meta:
        record.setdefault("voc_difficult", train.meta["difficult"])
    rule = train.meta.get("encoding_rule")
    if rule:
        record.setdefault("label_reading", rule)
    for key, value in unlearnable_classes(partial, train.classes).items():
        record.setdefault(key, value)
    if not dist.is_main():
        return
    log = logging.getLogger("mlrpl")
    if "difficult" in train.meta:
        from mlrpl.data.readers.voc import difficult_rule
        log.info(difficult_rule(train.meta["difficult"]))
    if rule:
        log.info(f"{train.source}: {rule}")
    c = len(train.classes)
    no_label = list(record["classes_without_known_label"])
    no_pos = [k for k in record["classes_without_known_positive"] if k not in no_label]
    if no_label:
        log.warning(f"{len(no_label)} of {c} classes have no known training label (every entry "
                    f"unknown): {_names(no_label)}; the model cannot learn them, and they stay in "
                    f"mAP wherever the evaluation split has positives (listed in "
                    f"mask.provenance.json, classes_without_known_label)")
    if no_pos:
        log.warning(f"{len(no_pos)} of {c} classes have no known positive training label (only "
                    f"negatives): {_names(no_pos)}; the model can only learn that they are absent "
                    f"(listed in mask.provenance.json, classes_without_known_positive)")


def check_trainable(cfg, partial: np.ndarray) -> None:
    """A run that would train on nothing is an error, not a quiet untrained model."""
    d = cfg.data
    how = (f"data.mask_file={d.mask_file}" if d.mask_file else
           f"data.protocol={d.protocol}, data.known_proportion={d.known_proportion}")
    if not (partial != 0).any():
        raise ConfigError(f"no training label is known ({how}, {partial.shape[0]} images x "
                          f"{partial.shape[1]} classes): the run would train on nothing; raise "
                          f"data.known_proportion or give another mask")
    if not (partial == 1).any():
        raise ConfigError(f"no training label is a known positive ({how}): the run would learn "
                          f"only that nothing is present; raise data.known_proportion or give "
                          f"another mask")


def check_evaluable(val: LabelSet, what: str = "evaluation split") -> None:
    """An evaluation split without any positive has no mAP: an error before training."""
    if not (val.labels == 1).any():
        raise DataError(f"the {what} ({len(val)} images) has no positive label in any class, so "
                        f"no metric can be computed; choose another data.val_split or "
                        f"data.holdout", path=val.source.split(":", 1)[-1] or None)


def check_may_hide_real_labels(cfg, train: LabelSet) -> None:
    """Labels that already hold unknowns are real partial labels: a protocol that would hide
    some of them (a preset's known_proportion, say) needs ``data.simulate_on_partial=true``."""
    d = cfg.data
    n_unknown = int((train.labels == 0).sum())
    # Only the user's own label files: a benchmark reader's 0 means "ignored" (VOC difficult),
    # part of the published protocol.
    own = train.source.startswith(("csv:", "npy:"))
    if n_unknown == 0 or d.simulate_on_partial or not own:
        return
    what = (f"data.known_proportion={d.known_proportion} ({d.protocol})"
            if d.protocol in ("hcp", "rps") else f"data.protocol={d.protocol}")
    raise ConfigError(
        f"{d.root}: the training labels already hold {n_unknown} unknown entries of "
        f"{train.labels.size} (real partial labels), and {what} would hide some of the known "
        f"ones as well. Set data.known_proportion=1 (or data.protocol=full) to train on them as "
        f"they are, or data.simulate_on_partial=true to hide more on purpose")


# ---- model ------------------------------------------------------------------------------------
def build_backbone(cfg):
    from mlrpl.models.backbones import apply_freeze, create_backbone
    bb = create_backbone(cfg.model.backbone, pretrained=cfg.model.pretrained)
    apply_freeze(bb, cfg.model.freeze)
    return bb


def build_model(cfg, backbone, method, classes, with_data: bool = True) -> MLRModel:
    """Backbone + method + ``model.prior`` (see mlrpl.models.prior)."""
    from mlrpl.models.prior import build_prior
    return MLRModel(backbone, method, build_prior(cfg, backbone, list(classes), with_data))


def find_embeddings(cfg, classes: list[str]) -> tuple[np.ndarray, str]:
    from mlrpl.data.embeddings import label_embeddings
    dirs = [Path(data_root(cfg.data.root)).parent / "label-embeddings"]
    if os.environ.get("MLRPL_DATA"):
        dirs.append(Path(os.environ["MLRPL_DATA"]) / "label-embeddings")
    return label_embeddings(classes, cfg.data.embeddings, search_dirs=dirs)


def build_method(cfg, classes, feature_channels, partial=None, with_data=True,
                 state_shapes=None):
    cls = get_method_class(cfg.method.name)
    emb, origin = None, None
    if with_data and getattr(cls, "needs_embeddings", False):
        emb, origin = find_embeddings(cfg, classes)
    ctx = MethodContext(num_classes=len(classes), feature_channels=feature_channels,
                          class_names=list(classes), partial_labels=partial, embeddings=emb,
                          state_shapes=state_shapes, seed=int(cfg.seed))
    method = cls(cfg.method, ctx)
    method.embedding_origin = origin  # where the word vectors came from (the run record says)
    return method


def cache_source(cfg, backbone):
    """What the feature cache holds for `cfg`: (module to run, name in the cache key, batch key),
    or None when the dataset reads images. ``freeze: all`` with ``cache_features``: the
    backbone's maps (``features``); ``freeze: hcp`` with ``cache_prefix``: the output of the
    frozen layers (``prefix``), on which the last stage trains."""
    if cfg.model.freeze == "all" and cfg.model.cache_features:
        return backbone, cfg.model.backbone, "features"
    if cfg.model.freeze == "hcp" and cfg.model.cache_prefix:
        from mlrpl.models.backbones import FrozenPart
        return FrozenPart(backbone), f"{cfg.model.backbone}:frozen-before-last-stage", "prefix"
    return None


def make_dataset(cfg, ls: LabelSet, partial, backbone, device, train: bool,
                 show_progress=None):
    """The dataset of one split: cached feature maps when the backbone is frozen and caching is
    on, images through the backbone's transforms otherwise. Returns (dataset, kept) where `kept`
    lists the items left after skipping unreadable images (None when none was skipped)."""
    from mlrpl.data.dataset import (FeatureDataset, ImageDataset, check_images_exist,
                                    image_paths_origin, scan_images)
    size = cfg.data.image_size
    cached = cache_source(cfg, backbone)
    if cfg.data.on_bad_image != "skip":  # before any caching, decoding or training
        check_images_exist([str(p) for p in ls.paths()], image_paths_origin(ls))
    if cached is None:
        tf = backbone.transform(train, size)
        paths = [str(p) for p in ls.paths()]
        if cfg.data.on_bad_image != "skip":
            return ImageDataset(ls, tf, partial), None
        # Unreadable images are removed before batching, never replaced on the fly.
        valid = scan_images(paths, show_progress) if dist.is_main() else None
        valid = np.asarray(dist.broadcast_object(valid), dtype=bool)
        if valid.all():
            return ImageDataset(ls, tf, partial), None
        kept = _report_skipped(paths, valid)
        return ImageDataset(ls.subset(kept), tf, None if partial is None else partial[kept]), kept
    from mlrpl.data.cache import cached_features
    from mlrpl.engine.runtime import amp_dtype
    paths = [str(p) for p in ls.paths()]
    source, name, key = cached
    kw = dict(backbone_name=name, batch_size=cfg.train.eval_batch_size,
              device=device, num_workers=cfg.data.num_workers,
              on_bad_image=cfg.data.on_bad_image, amp_dtype=amp_dtype(cfg.train.amp),
              show_progress=show_progress)
    tf = backbone.transform(False, size)
    # One process computes the entry; the others read it once it is complete.
    if dist.is_main():
        feats, valid, _ = cached_features(paths, source, tf, cfg.model.cache_dir, **kw)
    dist.barrier()
    if not dist.is_main():
        feats, valid, _ = cached_features(paths, source, tf, cfg.model.cache_dir, **kw)
    if valid.all():
        return FeatureDataset(feats, ls.labels, partial, key=key), None
    kept = _report_skipped(paths, valid)
    return FeatureDataset(feats[kept], ls.labels[kept],
                          None if partial is None else partial[kept], key=key), kept


def _report_skipped(paths, valid) -> np.ndarray:
    """Log the images left out with data.on_bad_image=skip; return the kept indices."""
    import logging
    kept = np.flatnonzero(valid)
    if not len(kept):
        raise DataError(f"no readable image among the {len(paths)} of this split",
                        path=paths[0] if paths else None)
    logging.getLogger("mlrpl").warning(
        f"skipped {len(paths) - len(kept)} unreadable image(s) (data.on_bad_image=skip): "
        f"{[p for p, v in zip(paths, valid) if not v][:5]}")
    return kept


def skipped_items(ls: LabelSet, kept) -> list[str]:
    """The items of `ls` that `kept` (indices, or None for all) leaves out."""
    if kept is None:
        return []
    keep = set(int(i) for i in kept)
    return [item for i, item in enumerate(ls.items) if i not in keep]


@dataclass
class Experiment:
    cfg: object
    train: LabelSet
    val: LabelSet
    partial: np.ndarray
    mask_record: dict
    model: MLRModel

    @property
    def mask_hash(self) -> str:
        return label_hash(self.partial, self.train.classes)


# ---- a model from a checkpoint -------------------------------------------------------------------
def _same_release(a: str, b: str) -> bool:
    return str(a).split(".")[:2] == str(b).split(".")[:2]


def has_backbone_weights(ckpt: dict) -> bool:
    return any(k.startswith("backbone.") for k in ckpt["model"])


def open_checkpoint(path, device="cpu", backbone_weights=None, classes=None, overrides=(),
                    ckpt: dict | None = None, find_data: bool = False):
    """(model in eval mode, checkpoint dict, config) from a checkpoint or bundle, offline
    (``ckpt``: the checkpoint already loaded from ``path``; ``device`` None: the config's).

    A checkpoint that holds its backbone's weights (a bundle, or a backbone that trained) needs
    nothing else; one that references a frozen pretrained backbone by digest rebuilds it from its
    source. Raises a one-line :class:`MlrplError` for a file of another library release, an
    unknown method, another class list (when `classes` is given), or a backbone whose weights
    are referenced but cannot be found. ``find_data``: for a caller that reads the run's data,
    look for it where the run found it when its paths do not resolve from here
    (:func:`relocate_data_paths`)."""
    from mlrpl.config import load_config
    from mlrpl.engine.checkpoint import load_checkpoint, load_model_state
    from mlrpl.version import __version__
    path = Path(path)
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    version = ckpt.get("mlrpl_version", "?")
    if not _same_release(version, __version__):
        raise MlrplError(f"{path}: written by mlrpl {version}; this is mlrpl {__version__}, "
                         f"which reads checkpoints of release "
                         f"{'.'.join(__version__.split('.')[:2])}.x only")
    method = (ckpt.get("config") or {}).get("method", {}).get("name")
    try:
        get_method_class(method)
    except (ConfigError, KeyError, ValueError) as e:
        raise MlrplError(f"{path}: the checkpoint's method {method!r} is not available in this "
                         f"mlrpl ({e})") from None
    if classes is not None and list(classes) != list(ckpt["classes"]):
        raise MlrplError(f"{path}: the checkpoint's classes differ from those expected: "
                         f"{class_difference(ckpt['classes'], classes, 'checkpoint', 'expected')}")
    cfg = load_config(None, list(overrides), base=ckpt["config"])
    if find_data:
        relocate_data_paths(cfg, path, ckpt, overrides)
    if device is None:  # the config's device
        from mlrpl.engine.runtime import select_device
        device = select_device(cfg.train.device)
    cfg.train.device = str(device)
    if has_backbone_weights(ckpt):
        cfg.model.pretrained = False    # the weights travel with the checkpoint
    elif backbone_weights is not None:
        cfg.model.pretrained = str(backbone_weights)
    try:
        backbone = build_backbone(cfg)
    except ConfigError as e:
        raise MlrplError(_missing_backbone_message(path, ckpt, cfg, e)) from None
    shapes = {k[len("method."):]: tuple(v.shape) for k, v in ckpt["model"].items()
              if k.startswith("method.")}
    method_module = build_method(cfg, ckpt["classes"], backbone.out_channels, None,
                                 with_data=False, state_shapes=shapes)
    model = build_model(cfg, backbone, method_module, ckpt["classes"], with_data=False)
    try:
        load_model_state(model, ckpt)
    except MlrplError as e:
        raise MlrplError(f"{path}: {e}") from None
    return model.to(device).eval(), ckpt, cfg


def _training_cwd(run_dir_given, checkpoint: Path) -> Path | None:
    """The working directory a run was trained from, when its relative ``run.dir`` still names
    the folder the checkpoint is in (``runs/x`` and ``/a/b/runs/x/last.pt`` -> ``/a/b``)."""
    if not run_dir_given or os.path.isabs(str(run_dir_given)):
        return None
    parts = Path(os.path.normpath(str(run_dir_given))).parts
    here = checkpoint.resolve().parent.parts
    if not parts or parts[0] == ".." or here[-len(parts):] != parts:
        return None
    return Path(*here[:-len(parts)])


def relocate_data_paths(cfg, path: Path, ckpt: dict, overrides=()) -> None:
    """Find a checkpoint's data where its run found it, when ``data.root`` / ``data.val_root``
    do not resolve from here.

    The config keeps paths as given (relative to the working directory, or under
    ``${oc.env:MLRPL_DATA,...}``), so that a run moved to another machine finds its data there.
    From another folder, or without MLRPL_DATA, the as-given path may name nothing: then the
    absolute path the run resolved at training is used (the checkpoint's or ``run.json``'s
    ``paths``, or a relative path taken from the folder the run was trained from), with a log
    line. A path given on the command line is never replaced."""
    import logging
    from omegaconf import OmegaConf
    from mlrpl.engine import rundir
    given = {str(o).split("=", 1)[0].strip().lstrip("+~") for o in overrides}
    record = rundir.read_run_record(path.parent) if (path.parent / rundir.RUN_RECORD).is_file() \
        else {}
    cwd = _training_cwd(OmegaConf.select(cfg, "run.dir"), path)
    for key in ("data.root", "data.val_root"):
        value = OmegaConf.select(cfg, key)
        if not value or key in given or os.path.exists(data_root(value)):
            continue
        found = []
        for src in (ckpt.get("paths"), record.get("paths")):
            v = src.get(key) if isinstance(src, dict) else None
            if isinstance(v, str) and v:
                found.append(Path(data_root(v)))
        found.append(Path(data_root(value)))
        for cand in found:
            if not cand.is_absolute():
                if cwd is None:
                    continue
                cand = cwd / cand
            if cand.exists():
                OmegaConf.update(cfg, key, str(cand))
                logging.getLogger("mlrpl").info(
                    f"{key} {value!r} does not resolve from {os.getcwd()}; using {cand}, where "
                    f"the run found it at training (pass {key}=PATH to choose another)")
                break


def _missing_backbone_message(path, ckpt, cfg, error) -> str:
    digest = (ckpt.get("backbone_digest") or "")[:16]
    source = cfg.model.pretrained
    where = (f"the weight file {source}" if isinstance(source, str) and source.lower() not in
             ("true", "false") else f"the pretrained weights of {cfg.model.backbone}")
    return (f"{path}: the checkpoint does not hold its frozen backbone's weights, only their "
            f"digest ({digest}...), and {where} cannot be loaded here ({error}). Put that file "
            f"back at {source} (or pass --backbone-weights FILE / backbone_weights= with the same "
            f"weights), or write a self-contained bundle where it exists: "
            f"mlrpl model bundle --checkpoint {path}")
