"""The Python API: train, evaluate, load a model and predict, in a few calls.

    import mlrpl
    run_dir = mlrpl.train({"data": {"dataset": "csv", "root": "labels.csv", ...}})
    model = mlrpl.load(run_dir / "best.pt")
    model.predict(["photo.jpg"])   # [{"labels": [...], "probabilities": {...}}]

The examples below run as doctests in ``make test`` (``tests/test_api.py``), where ``data`` is a
small generated dataset (``train.csv`` with blank unknown cells, ``val.csv``, images) and
``checkpoint`` / ``image`` a model trained on it and one of its images.
"""
from __future__ import annotations

from pathlib import Path

from mlrpl.deploy.predict import Predictor

__all__ = ["Predictor", "evaluate", "load", "train"]


def load(path, device: str = "cpu", thresholds="auto", backbone_weights=None,
         warn=None) -> Predictor:
    """Open a checkpoint or bundle for prediction, offline.

    Parameters
    ----------
    path : a checkpoint (``best.pt``, ``last.pt``) or a bundle (``mlrpl model bundle``).
    thresholds : ``"auto"`` (tuned thresholds saved beside the checkpoint, else the method's
        learned ones, else 0.5), ``"model"``, ``"tuned"``, ``"learned"``, a number, or a file.
        Tuned thresholds record the model they were tuned for: found beside the checkpoint but
        tuned for another model, they are not used; a file given for another model is used;
        either way with a warning.
    backbone_weights : the frozen backbone's weight file when the checkpoint only references it.
    warn : called with each one-line warning (default: a Python ``DeployWarning``).

    Returns
    -------
    Predictor
        ``.classes`` (C names), ``.thresholds`` (C,), ``.predict(inputs)`` (one dict per image:
        ``labels``, the names that pass their threshold, highest first, and ``probabilities``,
        every class's probability), ``.predict_proba(inputs)`` (an (N, C) array).

    Inputs of ``predict`` and ``predict_proba``: image file paths, PIL images, numpy uint8
    arrays (H, W, 3) RGB (as ``numpy.asarray(PIL image)`` gives them), uint8 tensors (3, H, W)
    (as ``torchvision.io.read_image`` gives them), all preprocessed exactly as an image file is
    (the same probabilities), or float tensors (3, S, S) already preprocessed (finite, S the
    model's input size); batches with one more leading axis, or a list of any of these. Anything
    else is an error naming the shape and type expected (``mlrpl.deploy.predict.INPUTS_DOC``).

    Example
    -------
    >>> model = mlrpl.load(checkpoint)
    >>> model.classes
    ['red_circle', 'green_square', 'blue_triangle', 'yellow_star']
    >>> out = model.predict([image, image], thresholds=0.5)
    >>> sorted(out[0]["probabilities"]) == sorted(model.classes)
    True
    >>> model.predict_proba(image).shape
    (1, 4)
    """
    return Predictor.from_checkpoint(path, device, thresholds, backbone_weights, warn=warn)


def train(config=None, overrides=(), resume: bool = False, **options) -> Path:
    """Train a model; returns its run directory (``config.yaml``, ``summary.csv``, ``best.pt``,
    ``last.pt``, ``metrics.json``).

    Parameters
    ----------
    config : a YAML path, a dict (nested like the YAML), or None (the built-in defaults).
    overrides : dotted ``key=value`` strings applied on top, as on the command line.
    **options : more overrides as keywords, with ``__`` for the dots
        (``train__epochs=3`` is ``train.epochs=3``).

    Example
    -------
    >>> run = mlrpl.train({"data": {"dataset": "csv", "root": str(data / "train.csv"),
    ...                             "val_root": str(data / "val.csv"), "train_split": None,
    ...                             "val_split": None, "image_size": 64},
    ...                    "train": {"epochs": 1, "batch_size": 8, "tensorboard": False,
    ...                              "progress": "never"},
    ...                    "model": {"cache_dir": str(data / "cache")}},
    ...                   ["run.dir=" + str(data / "api_run")])
    >>> sorted(p.name for p in run.glob("*.pt"))
    ['best.pt', 'last.pt']
    """
    from mlrpl.config import load_config
    from mlrpl.utils import dist
    from mlrpl.engine.trainer import Trainer
    overrides = list(overrides) + [f"{k.replace('__', '.')}={_yaml(v)}"
                                   for k, v in options.items()]
    if isinstance(config, dict):
        cfg = load_config(None, overrides, base=config)
    else:
        cfg = load_config(config, overrides)
    try:
        result = Trainer(cfg, resume=resume).fit()
    finally:
        dist.cleanup()
    return Path(result["run_dir"])


def evaluate(checkpoint, split: str | None = None, overrides=(), thresholds=None) -> dict:
    """Metrics (percentages) of a checkpoint on its evaluation split, or on `split`.

    ``thresholds`` for the thresholded metrics (CP, CR, CF1, OP, OR, OF1): None (0.5), a number,
    ``"model"`` (tuned, else learned) or a thresholds file.

    Example
    -------
    >>> m = mlrpl.evaluate(checkpoint)
    >>> 0 <= m["mAP"] <= 100 and m["eval_images"]
    12
    >>> tuned = mlrpl.evaluate(checkpoint, thresholds=0.3)
    >>> sorted(k for k in tuned if k.startswith("OF1"))
    ['OF1', 'OF1_top3']
    """
    from mlrpl.engine.evaluate import evaluate_checkpoint
    kw = {}
    if isinstance(thresholds, (int, float)) and not isinstance(thresholds, bool):
        kw["threshold"] = float(thresholds)
    elif thresholds == "model":
        from mlrpl.deploy.predict import Predictor as _P
        p = _P.from_checkpoint(checkpoint, thresholds="model")
        import numpy as np
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "thr.npy"
            np.save(f, p.thresholds)
            return evaluate_checkpoint(checkpoint, overrides=overrides, split=split,
                                       thresholds_file=f)["metrics"]
    elif thresholds is not None:
        kw["thresholds_file"] = thresholds
    return evaluate_checkpoint(checkpoint, overrides=overrides, split=split, **kw)["metrics"]


def _yaml(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


# ---- annotation: which labels to ask next, and the answers back in ----------------------------
__all__ += ["merge_labels", "suggest"]


def suggest(checkpoint, budget: int, strategy: str = "uncertainty", per_image=None,
            seed: int = 0, out=None, force: bool = False, thresholds="auto",
            overrides=()) -> dict:
    """The unknown entries of a run's training labels most worth annotating, best first, and
    (with `out`) the ask file for an annotator (``image,label,value,rank,score,reason``, value
    blank). ``mlrpl suggest`` on the command line.

    Parameters
    ----------
    checkpoint : the run's ``last.pt`` or ``best.pt``; its config rebuilds the training split
        and its partial labels (the label file as it is now, or the simulated protocol).
    budget : how many entries to return (at least 1, at most the number of unknown entries).
    strategy : ``"random"`` (seeded), ``"uncertainty"`` (probability closest to the class's
        decision threshold), ``"class-balance"`` (classes with the fewest known positives first,
        round-robin), ``"related-classes"`` (class-balance, but a class without a known positive
        is looked for in the images that hold classes with related names, by the label
        embeddings' similarity, where such names rank the known labels above chance) or
        ``"expected-gain"`` (expected mAP gain of the answer).
    per_image : None, K (at most K entries per image) or ``"all"`` (whole images).
    thresholds : ``"auto"`` (the model's tuned or learned thresholds, else each class's operating
        point on the known training labels), a number or a thresholds file.
    overrides : data overrides, e.g. ``["data.root=labels.v2.csv"]``.

    Returns
    -------
    dict with ``rows`` (dicts: ``rank``, ``image``, ``label``, ``score``, ``probability``,
    ``reason``), ``unknown_entries``, ``images``, ``thresholds_source``, ``out``.

    Example
    -------
    >>> ask = mlrpl.suggest(checkpoint, budget=4, strategy="expected-gain",
    ...                     out=data / "ask.csv")
    >>> [r["rank"] for r in ask["rows"]]
    [1, 2, 3, 4]
    >>> (data / "ask.csv").read_text().splitlines()[0]
    'image,label,value,rank,score,reason'
    """
    from mlrpl.deploy.suggest import suggest as _suggest
    return _suggest(checkpoint, budget, strategy=strategy, per_image=per_image, seed=seed,
                    out=out, force=force, thresholds=thresholds, overrides=overrides)


def merge_labels(labels, answers, out, force: bool = False, **reader_options) -> dict:
    """Fill the unknown entries of a label CSV with annotators' answers (CSV files in any layout:
    values 1, 0 / -1, blank = still unknown) and write it, in its own layout, to `out` (a new
    file). ``mlrpl data merge`` on the command line. An answer that contradicts a known label, or
    names an image or class the label file lacks, is an error naming file, line and field.

    Returns the counts: ``filled`` (``filled_positive``, ``filled_negative``),
    ``unknown_before``, ``unknown_after``, ``blank_answers``, ``agreed_with_known``.

    Example
    -------
    >>> import csv
    >>> rows = list(csv.reader(open(data / "train.csv")))
    >>> header, row = rows[0], next(r for r in rows[1:] if "" in r)    # a row with a blank
    >>> _ = (data / "answers.csv").write_text(
    ...     f"image,label,value\\n{row[0]},{header[row.index('')]},1\\n")
    >>> n = mlrpl.merge_labels(data / "train.csv", data / "answers.csv", data / "train.v2.csv")
    >>> n["filled"], n["unknown_after"] == n["unknown_before"] - 1
    (1, True)
    """
    from mlrpl.data.merge import merge_labels as _merge
    return _merge(labels, answers, out, force=force, **reader_options)
