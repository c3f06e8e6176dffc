"""Exporting a trained model for deployment (``mlrpl export``).

``--format onnx`` writes, in a new folder:

* ``model.onnx``: input ``image`` (batch, 3, S, S) float32, normalised as ``preprocess.json``
  says; outputs ``logits`` and ``probabilities`` (batch, C). The batch axis is dynamic. Only the
  inference path is exported: backbone, trunk and classifier; no memory bank, prototype,
  distribution or loss.
* ``classes.txt`` (one name a line, in output order), ``preprocess.json`` (size, mean, std,
  resize rule) and ``thresholds.json`` (per-class decision thresholds and where they came from).

The export is checked before it is kept: the same images (real ones: ``images=`` or the
checkpoint's evaluation split) go through onnxruntime and PyTorch, the largest difference of the
probabilities is printed, and above ``tolerance`` the export fails and nothing is written.
``--format torch-export`` writes ``model.pt2`` (``torch.export``) with the same side files.

The folder is built under a temporary name beside ``out`` and renamed into place at the end. An
existing ``out`` is replaced only with ``force`` and only when it is an earlier export (its
``preprocess.json`` says ``"written_by": "mlrpl export"``); it is moved aside to
``<out>.replaced-<time>``, never deleted. Any other non-empty folder, or a file, is refused.
"""
from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from mlrpl.errors import MlrplError

FORMATS = ("onnx", "torch-export")


def _check_images(predictor, images, n: int = 8) -> tuple[torch.Tensor, str]:
    """A batch of real, preprocessed images to compare the two runtimes on."""
    from mlrpl.data.dataset import load_image
    from mlrpl.errors import DataError
    paths = []
    if images:
        from mlrpl.deploy.predict import expand_inputs
        paths = expand_inputs(images)
        what = "given images"
    else:
        try:
            from mlrpl.engine.experiment import load_splits
            _, val = load_splits(predictor.cfg)
            paths = val.paths()
            what = f"images of the evaluation split ({val.source})"
        except Exception:  # noqa: BLE001 - the data may not be here; fall back below
            paths = []
    tensors = []
    for p in paths:
        try:
            tensors.append(predictor.transform(load_image(p)))
        except DataError:
            continue
        if len(tensors) == n:
            break
    if not tensors:
        raise MlrplError("no real image to check the export on: give some with --images "
                         "(the checkpoint's data is not reachable here)")
    return torch.stack(tensors), f"{len(tensors)} {what}"


WRITTEN_BY = "mlrpl export"
EXPORT_FILES = ("model.onnx", "model.pt2", "classes.txt", "preprocess.json", "thresholds.json")


def is_export_dir(folder) -> bool:
    """Whether `folder` is one that :func:`export_model` wrote: its ``preprocess.json`` says
    ``"written_by": "mlrpl export"`` (or, written before that mark, holds the export's ``input``
    and ``outputs`` keys beside a model file)."""
    folder = Path(folder)
    pre = folder / "preprocess.json"
    try:
        doc = json.loads(pre.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(doc, dict):
        return False
    if doc.get("written_by") == WRITTEN_BY:
        return True
    return (doc.get("input") == "image" and doc.get("outputs") == ["logits", "probabilities"]
            and any((folder / m).is_file() for m in ("model.onnx", "model.pt2")))


def check_export_out(out, force: bool) -> bool:
    """Check the export folder before any work; True when an earlier export is to be replaced
    (moved aside). A file, a non-empty folder without ``force``, or a non-empty folder that no
    export wrote (even with ``force``) is one error."""
    from mlrpl.utils.files import check_writable_dir
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise MlrplError(f"{out}: --out is a file, not a folder; export writes a folder: give a "
                         f"new folder name")
    replace = False
    if out.is_dir() and any(out.iterdir()):
        earlier = is_export_dir(out)
        if not earlier:
            raise MlrplError(f"{out}: exists, is not empty and is not an mlrpl export (no "
                             f"preprocess.json written by mlrpl export); refusing to replace it"
                             f"{' even with --force' if force else ''}; choose another --out")
        if not force:
            raise MlrplError(f"{out}: exists and is not empty (an earlier export); pass --force "
                             f"to replace it (it is moved aside to {out.name}.replaced-<time>)")
        replace = True
    parent = out.parent if str(out.parent) else Path(".")
    while not parent.exists():
        parent = parent.parent
    check_writable_dir(parent, "folder of --out")
    return replace


def export_model(checkpoint, out, fmt: str = "onnx", thresholds="auto", images=None,
                 tolerance: float = 1e-4, force: bool = False, opset: int = 17,
                 backbone_weights=None, log=print, warn=None) -> dict:
    """Export `checkpoint` to folder `out` (see the module docstring); returns a report dict
    (files, max_abs_diff, seconds, replaced: where an earlier export was moved, or None).

    ``warn`` receives one-line warnings (thresholds tuned for another model, no tuned
    thresholds); by default they are Python warnings."""
    from mlrpl.utils.files import (disk_errors, make_temp_dir, move_aside, remove_stale_temps_of,
                             rename_into_place)
    from mlrpl.deploy.predict import Predictor
    from mlrpl.version import __version__
    if fmt not in FORMATS:
        raise MlrplError(f"unknown export format {fmt!r}; expected one of {list(FORMATS)}")
    out = Path(out)
    replace = check_export_out(out, force)
    t0 = time.perf_counter()
    pred = Predictor.from_checkpoint(checkpoint, "cpu", thresholds, backbone_weights, warn=warn)
    x, what = _check_images(pred, images)
    net = pred.net.eval()
    with disk_errors(out.parent):
        out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps_of(out)          # what an export of `out` killed earlier left
    tmp = make_temp_dir(out)
    replaced = None
    try:
        with torch.no_grad():
            ref_logits, ref_probs = (t.numpy() for t in net(x))
        if fmt == "onnx":
            model_file = tmp / "model.onnx"
            _export_onnx(net, pred.image_size, model_file, opset)
            logits, probs = _run_onnx(model_file, x.numpy())
        else:
            model_file = tmp / "model.pt2"
            logits, probs = _export_torch(net, pred.image_size, model_file, x)
        diff = float(np.abs(probs - ref_probs).max())
        diff_logits = float(np.abs(logits - ref_logits).max())
        log(f"checked on {what}: largest |probability difference| {diff:.2e}, largest |logit "
            f"difference| {diff_logits:.2e} ({fmt} vs PyTorch; tolerance {tolerance:g})")
        if not diff <= tolerance:
            raise MlrplError(f"the {fmt} model's probabilities differ from PyTorch's by "
                             f"{diff:.3g} > {tolerance:g}; nothing written")
        with disk_errors(tmp):
            (tmp / "classes.txt").write_text("\n".join(pred.classes) + "\n")
            pre = dict(pred.preprocess, input="image", outputs=["logits", "probabilities"],
                       backbone=pred.cfg.model.backbone, method=pred.model.method.name,
                       written_by=WRITTEN_BY, mlrpl_version=__version__)
            (tmp / "preprocess.json").write_text(json.dumps(pre, indent=1))
            (tmp / "thresholds.json").write_text(json.dumps({
                "source": pred.thresholds_source,
                "thresholds": {c: round(float(t), 6) for c, t in zip(pred.classes,
                                                                     pred.thresholds)}},
                indent=1))
        advice = pred.threshold_advice(ref_probs, "images checked")
        if advice:
            pred.warn(advice)
        if replace and out.exists():
            replaced = move_aside(out)
        try:
            rename_into_place(tmp, out)
        except MlrplError:
            if replaced is not None and not out.exists():
                rename_into_place(replaced, out)     # put the earlier export back
                replaced = None
            raise
        if replaced is not None:
            log(f"--force: the earlier export was moved to {replaced}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - t0
    files = sorted(p.name for p in out.iterdir())
    return {"out": str(out), "files": files, "max_abs_diff": diff,
            "max_abs_diff_logits": diff_logits, "seconds": seconds,
            "thresholds": pred.thresholds_source, "replaced": None if replaced is None
            else str(replaced)}


def _export_onnx(net, size: int, path: Path, opset: int) -> None:
    try:
        import onnx  # noqa: F401 - torch.onnx needs it
    except ImportError:
        raise MlrplError("ONNX export needs the packages onnx and onnxruntime: "
                         "pip install 'mlrpl[export]'") from None
    dummy = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (dummy,), str(path), input_names=["image"],
                          output_names=["logits", "probabilities"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"},
                                        "probabilities": {0: "batch"}},
                          opset_version=opset, dynamo=False)


def onnx_session(path, threads: int | None = None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise MlrplError("checking an ONNX export needs onnxruntime: "
                         "pip install 'mlrpl[export]'") from None
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run_onnx(path: Path, x: np.ndarray):
    sess = onnx_session(path)
    logits, probs = sess.run(["logits", "probabilities"], {"image": x.astype(np.float32)})
    return logits, probs


def _export_torch(net, size: int, path: Path, x: torch.Tensor):
    batch = torch.export.Dim("batch", min=1, max=4096)
    dummy = torch.zeros(2, 3, size, size)
    try:
        ep = torch.export.export(net, (dummy,), dynamic_shapes={"image": {0: batch}})
    except Exception as e:  # noqa: BLE001 - any tracing failure is reported as such
        raise MlrplError(f"torch.export could not trace this model ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]}); use --format onnx") from None
    torch.export.save(ep, str(path))
    loaded = torch.export.load(str(path))
    with torch.no_grad():
        logits, probs = loaded.module()(x)
    return logits.numpy(), probs.numpy()
