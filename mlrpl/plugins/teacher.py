"""``teacher``: unknown labels recovered from a teacher's scores, calibrated per class on the
known labels (any method).

A teacher scores every (training image, class) pair: the model's own class prior
(``source: prior``, the ImageNet classifier mapped by class names, with its per-class trust), or
a file of scores from any other model run elsewhere (``source: file``: a vision-language model,
an older model, another team's tagger). The teacher is not trained on the known labels, so its
scores on the known entries are an honest sample of how it scores the unknown ones: under a
uniformly random mask (the HCP protocol, and most real annotation that skips labels at random),
the known positives and negatives of a class are a random draw of all of its positives and
negatives. Before the first epoch each class's scores are turned into percentiles over the
training images and, from the known entries alone, the plug-in estimates for every threshold the
precision of the unknown entries above it and the negative predictive value below it
(:func:`~mlrpl.methods.components.pseudo_labels.distribution_thresholds`, the estimate SATL uses;
for the precision, one unseen negative spread evenly over the percentiles keeps a class with a
dozen known entries from looking perfectly separated at the top).
Unknown entries above the lowest threshold whose estimated precision reaches
``target_precision`` become positives, those below the highest threshold whose NPV reaches
``target_npv`` negatives; a class with fewer than ``min_positives`` known positives gets
negatives only (no calibration of its positives is possible). Known entries always keep their
label. From ``start_epoch`` on, the term ``weight · bce(s, recovered)`` over the recovered
entries (named ``teacher``) is added to the method's loss, on the scores the model outputs.

The recovered labels are fixed for the run (buffers, saved with the checkpoint; a resumed run
reuses them). Their precision and recall against the hidden labels are logged per epoch as
``pl_teacher_pos_*`` / ``pl_teacher_neg_*`` when the hidden labels exist (simulated masks).
The deployed model never needs the teacher.

Teacher files: a CSV with a header ``image,<class>,<class>,...`` and one row per image (the
image's path as the label file names it, its resolved path, or its file name without extension;
other columns, such as the ``labels`` column of ``mlrpl predict --out x.csv``, are ignored), or a
``.npz`` / ``.npy`` scores file as ``mlrpl eval --save-scores`` writes (scores with ids and
classes). Scores may be probabilities or logits (only their order within a class matters). Every
training image needs a row and every class a column; extra images and extra columns are ignored.
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mlrpl.errors import ConfigError, DataError
from mlrpl.losses import partial_bce, zero_loss
from mlrpl.methods.components.pseudo_labels import PseudoLabelQuality, distribution_thresholds
from mlrpl.plugins.base import Plugin, PluginConfig
from mlrpl.plugins.registry import register_plugin
from mlrpl.utils import dist

log = logging.getLogger("mlrpl")
BINS = 100


@dataclass
class TeacherConfig(PluginConfig):
    name: str = "teacher"
    source: str = "prior"            # prior (model.prior) | file
    file: Optional[str] = None       # source=file: per-image class scores (.csv, .npz, .npy)
    target_precision: float = 0.9    # estimated precision of the recovered positives
    target_npv: float = 0.99         # estimated NPV of the recovered negatives
    negatives: bool = True
    min_positives: int = 5           # known positives a class needs for recovered positives
    weight: float = 1.0
    start_epoch: int = 0


def _image_keys(item: str, path: str) -> list[str]:
    return [item, path, str(Path(path).resolve()), Path(item).stem]


def read_teacher_csv(path: Path, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """(image keys, (N, C) scores of `classes`) of a teacher CSV: the first column names the
    image, the columns named after the classes hold scores, any other column (``mlrpl predict``'s
    ``labels``) is ignored. A DataError names the file and line."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e})", path=path) from None
    if not rows or len(rows[0]) < 2:
        raise DataError("expected a header 'image,<class>,<class>,...' and one row of scores "
                        "per image", path=path, line=1)
    header = [c.strip() for c in rows[0]]
    missing = [c for c in classes if c not in header[1:]]
    if missing:
        raise DataError(f"no column for {len(missing)} of the {len(classes)} classes (e.g. "
                        f"{missing[:5]}); the header's columns: {header[1:9]}"
                        f"{' ...' if len(header) > 9 else ''}", path=path, line=1)
    col = [header.index(c, 1) for c in classes]
    keys, values = [], []
    for n, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{len(row)} fields; the header has {len(header)}", path=path, line=n)
        try:
            v = [float(row[i]) for i in col]
        except ValueError:
            bad = next(i for i in col if not _is_float(row[i]))
            raise DataError(f"score {row[bad]!r} of class {header[bad]!r} is not a number",
                            path=path, line=n) from None
        if not all(math.isfinite(x) for x in v):
            raise DataError("a score is NaN or infinite; expected finite probabilities or logits",
                            path=path, line=n)
        keys.append(row[0].strip())
        values.append(v)
    if not keys:
        raise DataError("no row of scores under the header", path=path)
    return keys, np.asarray(values, dtype=np.float64)


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_teacher_file(path, items: list[str], paths: list[str], classes: list[str]) -> np.ndarray:
    """(N_train, C) teacher scores in the training images' and classes' order."""
    from mlrpl.metrics import read_scores
    path = Path(path)
    if not path.is_file():
        raise DataError("teacher scores file not found" if not path.exists() else
                        "the teacher scores file is a folder", path=path)
    if path.suffix.lower() in (".npz", ".npy"):
        z = read_scores(path)
        if z["ids"] is None or z["classes"] is None:
            raise DataError("the scores need their image ids and class names (an .npz with "
                            "'ids' and 'classes', or a .npy with its .ids.txt and a CSV teacher "
                            "file instead)", path=path)
        keys, names = z["ids"], z["classes"]
        missing = [c for c in classes if c not in names]
        if missing:
            raise DataError(f"no scores for {len(missing)} of the {len(classes)} classes (e.g. "
                            f"{missing[:5]}); the file's classes: {names[:8]}"
                            f"{' ...' if len(names) > 8 else ''}", path=path, field="classes")
        scores = z["scores"][:, [names.index(c) for c in classes]]
    else:
        keys, scores = read_teacher_csv(path, classes)
    row_of: dict[str, int] = {}
    for i, k in enumerate(keys):
        for variant in (k, Path(k).stem):
            row_of.setdefault(variant, i)
    out, lost = np.zeros((len(items), len(classes))), []
    for n, (item, p) in enumerate(zip(items, paths)):
        hit = next((row_of[k] for k in _image_keys(item, p) if k in row_of), None)
        if hit is None:
            lost.append(item)
            continue
        out[n] = scores[hit]
    if lost:
        raise DataError(f"no scores for {len(lost)} of the {len(items)} training images (e.g. "
                        f"{lost[:3]}); rows are matched by the image as the label file names "
                        f"it, its path, or its file name without extension", path=path,
                        field="image")
    return out


def percentiles(scores: np.ndarray) -> np.ndarray:
    """Per column, each score's rank among the images as a share in (0, 1] (ties share the
    highest rank): thresholds become comparable across classes and score scales."""
    s = np.asarray(scores, float)
    out = np.empty_like(s)
    n = s.shape[0]
    for c in range(s.shape[1]):
        order = np.sort(s[:, c])
        out[:, c] = np.searchsorted(order, s[:, c], side="right") / n
    return out


def recover(scores: np.ndarray, partial: np.ndarray, cfg) -> tuple[np.ndarray, dict]:
    """(N, C) int8 recovered labels on unknown entries (+1, -1, 0 none) and per-class details."""
    u = torch.as_tensor(percentiles(scores))
    known = torch.as_tensor(partial)
    edges = torch.linspace(0, 1, BINS + 1, dtype=torch.float64)
    b = torch.bucketize(u, edges[1:-1], right=True)                      # bin of each entry
    onehot = torch.nn.functional.one_hot(b, BINS).double()                # (N, C, K)
    pos_hist = (onehot * (known > 0)[..., None]).sum(0)
    neg_hist = (onehot * (known < 0)[..., None]).sum(0)
    n_pos, n_neg = pos_hist.sum(1), neg_hist.sum(1)
    # the share of positives among the known labels, with one pseudo-count at the mean share
    mean = float(n_pos.sum() / (n_pos + n_neg).sum().clamp(min=1))
    pi = (n_pos + mean) / (n_pos + n_neg + 1)
    # The positives' threshold counts one unseen negative spread evenly over the percentiles: a
    # class with a dozen known entries cannot look perfectly separated at the top.
    tau_pos, _, _ = distribution_thresholds(pos_hist, neg_hist + 1.0 / BINS, pi,
                                            cfg.target_precision, cfg.target_npv)
    _, tau_neg, _ = distribution_thresholds(pos_hist, neg_hist, pi, cfg.target_precision,
                                            cfg.target_npv)
    tau_pos = torch.where(n_pos >= cfg.min_positives, tau_pos, torch.full_like(tau_pos, math.inf))
    unknown = known == 0
    pos = unknown & (u >= tau_pos[None])
    neg = unknown & (u < tau_neg[None]) & ~pos if cfg.negatives else torch.zeros_like(pos)
    out = torch.zeros_like(known, dtype=torch.int8)
    out[pos], out[neg] = 1, -1
    detail = {"tau_pos": tau_pos.tolist(), "tau_neg": tau_neg.tolist(),
              "positives": pos.sum(0).tolist(), "negatives": neg.sum(0).tolist()}
    return out.numpy(), detail


@register_plugin("teacher")
class Teacher(Plugin):
    Config = TeacherConfig

    def __init__(self, cfg, ctx, model):
        super().__init__(cfg, ctx, model)
        n = 0 if ctx.partial_labels is None else len(ctx.partial_labels)
        self.register_buffer("recovered", torch.zeros(n, ctx.num_classes, dtype=torch.int8))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))
        self.class_names = list(ctx.class_names)
        self.file_scores = None
        if cfg.source == "prior" and getattr(model, "prior", None) is None:
            raise ConfigError("plugins.teacher.source=prior needs the model's class prior "
                              "(model.prior.name=imagenet), or source=file with a file of "
                              "teacher scores")
        if cfg.source == "file":
            self.file_scores = read_teacher_file(cfg.file, list(ctx.train_items or []),
                                                 list(ctx.train_paths or []), self.class_names)
        self.quality = PseudoLabelQuality(("teacher_pos", "teacher_neg"), self.class_names,
                                          per_class=False)

    @classmethod
    def check(cls, cfg):
        if cfg.source not in ("prior", "file"):
            raise ConfigError(f"bad value for 'plugins.teacher.source': {cfg.source!r}; expected "
                              f"prior or file")
        if cfg.source == "file" and not cfg.file:
            raise ConfigError("plugins.teacher.source=file needs plugins.teacher.file (a CSV "
                              "'image,<class>,...' or an .npz of scores with ids and classes)")
        for key in ("target_precision", "target_npv"):
            v = getattr(cfg, key)
            if not 0.5 <= v < 1:
                raise ConfigError(f"bad value for 'plugins.teacher.{key}': {v!r}; expected a "
                                  f"number in [0.5, 1)")
        if cfg.weight < 0 or cfg.min_positives < 1 or cfg.start_epoch < 0:
            raise ConfigError("plugins.teacher: weight must be >= 0, min_positives >= 1 and "
                              "start_epoch >= 0")

    def on_epoch_start(self, ctx, model):
        if bool(self.ready):
            return
        scores = self.file_scores
        if scores is None:   # the model's class prior (with its trust) on every training image
            scores = dist.rows_by_index(
                ((b["index"], o["prior_logits"].float())
                 for b, o in ctx.eval_batches("teacher scores")), len(self.recovered))[0].numpy()
        rec, detail = recover(scores, ctx.partial_labels, self.cfg)
        self.recovered.copy_(torch.as_tensor(rec))
        self.ready.fill_(True)
        pos, neg = detail["positives"], detail["negatives"]
        with_pos = sum(p > 0 for p in pos)
        log.info(f"teacher ({self.cfg.source}): {sum(pos)} unknown entries recovered as positive "
                 f"({with_pos} of {len(pos)} classes), {sum(neg)} as negative, at estimated "
                 f"precision >= {self.cfg.target_precision} / NPV >= {self.cfg.target_npv} "
                 f"from the known labels")

    def loss(self, outputs, batch, epoch):
        logits = outputs["logits"]
        if epoch < int(self.cfg.start_epoch) or not bool(self.ready):
            return {"teacher": zero_loss(logits)}
        rec = self.recovered[batch["index"].long().to(self.recovered.device)].to(logits.device)
        outputs["teacher_target"] = rec
        return {"teacher": float(self.cfg.weight) * partial_bce(logits, rec)}

    def update_state(self, model, outputs, batch):
        rec = outputs.get("teacher_target")
        if rec is not None:
            self.quality.update_pos_neg("teacher_pos", "teacher_neg", rec > 0, rec < 0,
                                        batch["target"], batch.get("full"))

    def epoch_stats(self):
        stats = self.quality.compute(self.recovered.device)
        self.quality.reset()
        return stats
