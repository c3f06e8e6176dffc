"""Inference from a checkpoint: opening a model offline, thresholds, predicting images.

A checkpoint opens with no network. When it holds the backbone's weights (a *bundle*, written by
``mlrpl model bundle``, or any checkpoint of a backbone that trained), nothing else is read. A
checkpoint of a frozen pretrained backbone references those weights by digest only: they are
rebuilt from their source (the installed EfficientNet-Lite0 package, a weight file, the torch
hub cache), and when that source is missing the error names the file and where it must be.

:class:`Predictor` is what :func:`mlrpl.load` returns.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mlrpl.engine.experiment import open_checkpoint
from mlrpl.errors import DataError, MlrplError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def write_bundle(checkpoint, out, force: bool = False, backbone_weights=None) -> Path:
    """A self-contained inference checkpoint: every tensor (the backbone included), the config,
    classes, preprocessing, the method's state and the tuned thresholds when there are some; no
    optimiser, RNG or history. It opens without network and without the original weight file."""
    from mlrpl.engine.checkpoint import atomic_save
    from mlrpl.thresholds import sidecar_path
    out = Path(out)
    if out.exists() and not force:
        raise MlrplError(f"{out}: refusing to overwrite an existing file (pass --force)")
    model, ckpt, _ = open_checkpoint(checkpoint, "cpu", backbone_weights)
    keep = ("format", "mlrpl_version", "config", "classes", "encoding", "preprocess",
            "mask_hash", "label_hash", "epoch", "metrics")
    bundle = {k: ckpt[k] for k in keep if k in ckpt}
    bundle.update(model=model.state_dict(), backbone_digest=None, bundle=True,
                  bundled_from=str(checkpoint))
    side = sidecar_path(checkpoint)
    if side.is_file():
        bundle["thresholds"] = json.loads(side.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_save(bundle, out)


# ---- thresholds -----------------------------------------------------------------------------
def resolve_thresholds(spec, checkpoint_path, ckpt: dict, model, default: float = 0.5):
    """(per-class thresholds (C,), where they came from) for ``spec``:

    ``None`` / ``"auto"``: the model's thresholds when it has some, else `default`;
    ``"model"``: tuned thresholds saved with the model (``<ckpt>.thresholds.json`` or inside a
    bundle), else the method's learned ones (SATL), else an error; ``"learned"``: the method's;
    a number: that threshold for every class; anything else: a thresholds file."""
    from mlrpl.engine.evaluate import learned_thresholds
    from mlrpl.thresholds import read_thresholds, sidecar_path
    classes = list(ckpt["classes"])
    c = len(classes)
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        spec = float(spec)
    elif isinstance(spec, str):
        try:
            spec = float(spec)
        except ValueError:
            pass
    if isinstance(spec, float):
        if not 0.0 < spec < 1.0:
            raise MlrplError(f"threshold {spec} is not a probability in (0, 1)")
        return np.full(c, spec), f"{spec:g}"
    if isinstance(spec, (list, tuple, np.ndarray)):
        arr = np.asarray(spec, dtype=np.float64).reshape(-1)
        if arr.shape[0] != c:
            raise MlrplError(f"{arr.shape[0]} thresholds given for {c} classes")
        return arr, "given"
    if spec in (None, "auto", "model", "tuned", "learned"):
        if spec in (None, "auto", "model", "tuned"):
            side = sidecar_path(checkpoint_path)
            if side.is_file():
                return read_thresholds(side, classes)[0], f"tuned ({side.name})"
            if isinstance(ckpt.get("thresholds"), dict):
                table = ckpt["thresholds"]["thresholds"]
                return np.array([float(table[k]) for k in classes]), "tuned (in the bundle)"
            if spec == "tuned":
                raise MlrplError(f"{checkpoint_path}: no tuned thresholds ({side} not found); run "
                                 f"mlrpl tune-thresholds --checkpoint {checkpoint_path}")
        learned = learned_thresholds(model.method)
        if learned is not None:
            return learned, f"learned ({model.method.name})"
        if spec in ("model", "learned"):
            raise MlrplError(f"{checkpoint_path}: the model has no thresholds of its own (run "
                             f"mlrpl tune-thresholds --checkpoint {checkpoint_path}, or give a "
                             f"number or a file)")
        return np.full(c, float(default)), f"{default:g} (default)"
    return read_thresholds(spec, classes)[0], f"file {spec}"


# ---- the inference module -------------------------------------------------------------------
class InferenceModel(nn.Module):
    """Images (B, 3, S, S), normalised -> (logits (B, C), probabilities (B, C)): the backbone,
    the method's inference path and the class prior, if any (no banks, prototypes or losses are
    touched)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        logits = self.model.head(self.model.backbone(image), None)["logits"].float()
        return logits, torch.sigmoid(logits)


# ---- images ---------------------------------------------------------------------------------
def expand_inputs(inputs, recursive: bool = True) -> list[Path]:
    """Image files from paths and folders (folders: the image files under them, sorted). A path
    that does not exist, or a folder without images, is an error naming it."""
    out: list[Path] = []
    for x in inputs:
        p = Path(x)
        if p.is_dir():
            found = sorted(q for q in (p.rglob("*") if recursive else p.iterdir())
                           if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder",
                                path=p)
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DataError("image not found", path=p)
    if not out:
        raise DataError("no images given")
    return out


class _Images(Dataset):
    def __init__(self, items, transform):
        self.items, self.transform = items, transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from mlrpl.data.dataset import load_image
        x = self.items[i]
        try:
            if isinstance(x, torch.Tensor):
                t = x.float()
            else:
                img = x.convert("RGB") if hasattr(x, "convert") else load_image(x)
                t = self.transform(img)
            return t, "", i
        except DataError as e:
            return None, str(e), i


def _collate(batch):
    ok = [b for b in batch if b[0] is not None]
    imgs = torch.stack([b[0] for b in ok]) if ok else None
    return imgs, [b[1] for b in batch], torch.tensor([b[2] for b in batch])


class Predictor:
    """A trained model ready to predict: ``mlrpl.load(path)`` returns one.

    Attributes
    ----------
    classes : list of str, length C
    thresholds : ndarray (C,) of per-class probability thresholds in use
    thresholds_source : str, where they came from (tuned, learned, a number, a file)
    preprocess : dict, the input size, mean, std and resize rule

    Example
    -------
    >>> p = Predictor.from_checkpoint(checkpoint)          # doctest: +SKIP
    >>> p.predict([image_path])[0]["labels"]               # doctest: +SKIP
    ['red_circle']
    """

    def __init__(self, model, ckpt: dict, cfg, checkpoint_path, thresholds="auto",
                 device="cpu"):
        self.model = model
        self.ckpt = ckpt
        self.cfg = cfg
        self.path = Path(checkpoint_path)
        self.device = torch.device(device)
        self.classes: list[str] = list(ckpt["classes"])
        self.image_size = int(cfg.data.image_size)
        self.transform = model.backbone.transform(False, self.image_size)
        self.net = InferenceModel(model).eval()
        self.thresholds, self.thresholds_source = resolve_thresholds(thresholds, self.path, ckpt,
                                                                     model)

    @classmethod
    def from_checkpoint(cls, path, device="cpu", thresholds="auto", backbone_weights=None):
        model, ckpt, cfg = open_checkpoint(path, device, backbone_weights)
        return cls(model, ckpt, cfg, path, thresholds, device)

    @property
    def preprocess(self) -> dict:
        pre = self.ckpt.get("preprocess") or {}
        return preprocess_spec(pre, self.image_size)

    # ---- scoring ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict_proba(self, inputs, batch_size: int = 32, show_progress=None,
                      on_error: str = "raise"):
        """Probabilities (N, C) for images given as paths, PIL images or tensors.

        A tensor is an already preprocessed image (3, S, S) or batch (B, 3, S, S). With
        ``on_error="skip"`` unreadable images get NaN rows; their errors are returned as a
        second value ``{index: message}``."""
        from mlrpl.progress import progress
        items = _as_items(inputs)
        loader = DataLoader(_Images(items, self.transform), batch_size=batch_size,
                            collate_fn=_collate)
        out = np.full((len(items), len(self.classes)), np.nan, dtype=np.float32)
        errors: dict[int, str] = {}
        for imgs, errs, idx in progress(loader, desc="predicting", enable=show_progress):
            for e, i in zip(errs, idx.tolist()):
                if e:
                    if on_error == "raise":
                        raise DataError(e) if not isinstance(items[i], (str, Path)) else \
                            MlrplError(e)
                    errors[i] = e
            if imgs is None:
                continue
            ok = torch.tensor([not e for e in errs])
            _, probs = self.net(imgs.to(self.device))
            out[idx[ok].numpy()] = probs.float().cpu().numpy()
        return (out, errors) if on_error == "skip" else out

    @torch.no_grad()
    def predict_proba_cached(self, paths, cache_dir=None, batch_size: int = 32,
                             show_progress=None):
        """Probabilities (N, C) of image files through the feature cache of a frozen backbone
        (``model.cache_dir``): the backbone runs once per image set, later calls read the maps.
        Returns (probabilities with NaN rows for unreadable images, {index: message})."""
        from mlrpl.data.cache import cached_features
        if not self.model.backbone.is_frozen:
            raise MlrplError(f"{self.path}: the feature cache needs a frozen backbone "
                             f"(model.freeze=all); predict without --cache")
        paths = [str(p) for p in paths]
        feats, valid, _ = cached_features(
            paths, self.model.backbone, self.transform, cache_dir or self.cfg.model.cache_dir,
            backbone_name=self.cfg.model.backbone, batch_size=batch_size, device=self.device,
            on_bad_image="skip", show_progress=show_progress)
        out = np.full((len(paths), len(self.classes)), np.nan, dtype=np.float32)
        for start in range(0, len(paths), batch_size):
            sl = slice(start, start + batch_size)
            f = torch.from_numpy(np.asarray(feats[sl], dtype=np.float32)).to(self.device)
            logits = self.model.head(f, None)["logits"].float()
            out[sl] = torch.sigmoid(logits).cpu().numpy()
        out[~valid] = np.nan
        return out, {i: f"{paths[i]}: unreadable image" for i in np.flatnonzero(~valid)}

    def predict(self, inputs, thresholds=None, topk: int | None = None, batch_size: int = 32):
        """Predicted class names and every class's probability, one dict per input.

        Parameters
        ----------
        inputs : a path, PIL image or tensor, or a list of them (a tensor (B, 3, S, S) counts
            as B images, preprocessed).
        thresholds : None (the predictor's), a number, (C,) values, or a file.
        topk : keep at most the `topk` highest-scored classes that pass their threshold.

        Returns
        -------
        list of dicts ``{"labels": [names], "probabilities": {class: p}}``.
        """
        thr = self.thresholds if thresholds is None else \
            resolve_thresholds(thresholds, self.path, self.ckpt, self.model)[0]
        probs = self.predict_proba(inputs, batch_size=batch_size)
        return [{"labels": decide(p, thr, self.classes, topk),
                 "probabilities": {c: float(v) for c, v in zip(self.classes, p)}}
                for p in probs]

    # ---- attention ----------------------------------------------------------------------------
    @property
    def has_attention(self) -> bool:
        """Whether the model computes per-class attention maps (the SARL trunk)."""
        return hasattr(self.model.method, "trunk")

    @torch.no_grad()
    def attention(self, image: torch.Tensor) -> torch.Tensor:
        """Per-class attention of one preprocessed image (3, S, S): (C, h, w) on the backbone's
        grid, each map a softmax over positions (it sums to 1)."""
        if not self.has_attention:
            raise MlrplError(f"{self.path}: method {self.model.method.name!r} computes no "
                             f"per-class attention (the SARL-trunk methods do)")
        maps = self.model.backbone(image[None].to(self.device))
        out = self.model.method(maps, None)
        return type(self.model.method.trunk).attention_maps(out)[0].float().cpu()

    def save_attention(self, path, labels: list[str], out_dir) -> list[Path]:
        """Overlay the attention map of each class in ``labels`` on the image at ``path`` (the
        image as the model sees it, S x S) and write ``<out_dir>/<stem>__<class>.png``."""
        from matplotlib import colormaps
        from PIL import Image

        from mlrpl.data.dataset import load_image
        img = load_image(path)
        att = self.attention(self.transform(img))
        size = self.image_size
        base = np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC), np.float32)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in labels:
            a = att[self.classes.index(name)].numpy()
            a = (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
            heat = Image.fromarray((a * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
            colour = colormaps["jet"](np.asarray(heat) / 255.0)[..., :3] * 255
            blend = (0.55 * base + 0.45 * colour).clip(0, 255).astype(np.uint8)
            dest = out_dir / f"{Path(path).stem}__{_safe(name)}.png"
            Image.fromarray(blend).save(dest)
            written.append(dest)
        return written

    def __repr__(self):
        return (f"Predictor({self.path}, method={self.model.method.name!r}, "
                f"{len(self.classes)} classes, thresholds={self.thresholds_source})")


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _as_items(inputs) -> list:
    if isinstance(inputs, (str, Path)) or hasattr(inputs, "convert"):
        return [inputs]
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() == 3:
            return [inputs]
        if inputs.dim() == 4:
            return list(inputs)
        raise MlrplError(f"an image tensor must be (3, S, S) or (B, 3, S, S), got "
                         f"{tuple(inputs.shape)}")
    items = []
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            items += list(x)
        else:
            items.append(x)
    return items


def decide(probs: np.ndarray, thresholds: np.ndarray, classes: list[str],
           topk: int | None = None) -> list[str]:
    """The names of the classes whose probability passes its threshold, highest first (at
    most `topk`)."""
    idx = [j for j in np.argsort(-probs, kind="stable") if probs[j] >= thresholds[j]]
    if topk is not None:
        idx = idx[:topk]
    return [classes[j] for j in idx]


def preprocess_spec(pre: dict, size: int) -> dict:
    """What a deployment must do to an image before the model (``preprocess.json``)."""
    interp = pre.get("interpolation", "bicubic")
    return {"size": [size, size], "resize": f"resize the whole image to {size}x{size} "
                                             f"({interp}), no crop, no aspect ratio kept",
            "interpolation": interp, "color": "RGB", "scale": "pixel values / 255",
            "mean": pre.get("mean"), "std": pre.get("std"),
            "layout": "NCHW float32, (x / 255 - mean) / std per channel"}
