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
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mlrpl.engine.experiment import open_checkpoint
from mlrpl.errors import DataError, MlrplError
from mlrpl.utils.optional import require

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class DeployWarning(UserWarning):
    """A prediction that runs but deserves a look: thresholds tuned for another model, or no
    tuned thresholds where the model needs them. The command line prints each as one line
    ``mlrpl: warning: ...`` on stderr."""


def python_warning(message: str) -> None:
    """The default ``warn`` of the library: a :class:`DeployWarning`."""
    warnings.warn(message, DeployWarning, stacklevel=3)


def write_bundle(checkpoint, out, force: bool = False, backbone_weights=None,
                 warn=None) -> Path:
    """A self-contained inference checkpoint: every tensor (the backbone included), the config,
    classes, preprocessing, the method's state and the tuned thresholds when there are some; no
    optimiser, RNG or history. It opens without network and without the original weight file."""
    from mlrpl.utils.torchio import atomic_save
    from mlrpl.deploy.thresholds import sidecar_path
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
        from mlrpl.deploy.thresholds import model_digest, read_thresholds, thresholds_record
        read_thresholds(side, list(ckpt["classes"]))          # a damaged file is an error here
        recorded = thresholds_record(side)["model_digest"]
        if recorded is not None and recorded != model_digest(model):
            (warn or python_warning)(
                f"{side}: tuned for another model than {checkpoint} (weights {recorded[:12]} vs "
                f"{model_digest(model)[:12]}); not put in the bundle")
        else:
            bundle["thresholds"] = json.loads(side.read_text(encoding="utf-8"))
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_save(bundle, out, keep_old=force)


# ---- thresholds -----------------------------------------------------------------------------
def resolve_thresholds(spec, checkpoint_path, ckpt: dict, model, default: float = 0.5,
                       warn=None, digest=None):
    """(per-class thresholds (C,), where they came from) for ``spec``:

    ``None`` / ``"auto"``: the model's thresholds when it has some, else `default`;
    ``"model"``: tuned thresholds saved with the model (``<ckpt>.thresholds.json`` or inside a
    bundle), else the method's learned ones (SATL), else an error; ``"tuned"``: only those;
    ``"learned"``: the method's; a number: that threshold for every class; anything else: a
    thresholds file.

    Tuned thresholds record the model they were tuned for (``model_digest``). Found beside the
    checkpoint (or in a bundle) but tuned for another model, they are not used: ``warn`` gets one
    line and the next source is taken (for ``"tuned"``: an error). A file given explicitly for
    another model is used, with a warning naming both. A tuned file without the record is used
    with a warning that it cannot be verified. ``digest``: a callable returning this model's
    :func:`~mlrpl.deploy.thresholds.model_digest` (computed when needed if None)."""
    from mlrpl.engine.evaluate import learned_thresholds
    from mlrpl.deploy.thresholds import model_digest, read_thresholds, sidecar_path, thresholds_record
    warn = warn or python_warning
    mine: list[str] = []

    def this_digest() -> str:
        if not mine:
            mine.append(digest() if digest is not None else model_digest(model))
        return mine[0]

    retune = f"mlrpl tune-thresholds --checkpoint {checkpoint_path}"
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
                rec = thresholds_record(side)
                other = rec["model_digest"]
                if other is not None and other != this_digest():
                    msg = (f"{side}: tuned for another model ({rec['checkpoint'] or '?'}, weights "
                           f"{other[:12]}), not for {checkpoint_path} (weights "
                           f"{this_digest()[:12]})")
                    if spec == "tuned":
                        raise MlrplError(f"{msg}; tune this model's: {retune}")
                    warn(f"{msg}; not used; tune this model's: {retune}")
                else:
                    arr = read_thresholds(side, classes)[0]
                    if other is None:
                        warn(f"{side}: records no model digest (written by an older mlrpl), so "
                             f"it cannot be verified that it was tuned for {checkpoint_path}; "
                             f"used; run {retune} to tune and record it again")
                        return arr, f"tuned ({side.name}, unverified)"
                    return arr, f"tuned ({side.name})"
            if isinstance(ckpt.get("thresholds"), dict):
                doc = ckpt["thresholds"]
                other = doc.get("model_digest")
                if isinstance(other, str) and other != this_digest():
                    warn(f"{checkpoint_path}: the thresholds in the bundle were tuned for another "
                         f"model ({doc.get('checkpoint') or '?'}, weights {other[:12]}; this "
                         f"one: {this_digest()[:12]}); not used")
                else:
                    table = doc["thresholds"]
                    return (np.array([float(table[k]) for k in classes]),
                            "tuned (in the bundle)")
            if spec == "tuned":
                raise MlrplError(f"{checkpoint_path}: no tuned thresholds ({side} not found); run "
                                 f"{retune}")
        learned = learned_thresholds(model.method)
        if learned is not None:
            return learned, f"learned ({model.method.name})"
        if spec in ("model", "learned"):
            raise MlrplError(f"{checkpoint_path}: the model has no thresholds of its own (run "
                             f"{retune}, or give a number or a file)")
        return np.full(c, float(default)), f"{default:g} (default)"
    arr = read_thresholds(spec, classes)[0]
    if Path(spec).suffix != ".npy":
        rec = thresholds_record(spec)
        other = rec["model_digest"]
        if other is not None and other != this_digest():
            warn(f"{spec}: tuned for another model ({rec['checkpoint'] or '?'}, weights "
                 f"{other[:12]}) than {checkpoint_path} (weights {this_digest()[:12]}); used "
                 f"as given")
        elif other is None and rec["tuned"]:
            warn(f"{spec}: records no model digest (written by an older mlrpl), so it cannot "
                 f"be verified that it was tuned for {checkpoint_path}; used as given")
    return arr, f"file {spec}"


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
def expand_inputs(inputs, recursive: bool = True, skipped: list | None = None) -> list[Path]:
    """Image files from paths and folders, in the order given.

    * a file named explicitly is always taken, whatever its suffix (an unreadable one is
      reported when it is decoded);
    * a folder is walked recursively (sub-folders too; symbolic links to folders are not
      followed), and a file under it is taken when its suffix, in any case (``.JPG`` too), is one
      of :data:`IMAGE_SUFFIXES`; the files of a folder come sorted by path;
    * under a folder, hidden files and folders (a name starting with ``.``, such as macOS
      ``._photo.jpg`` companions) and files with another suffix are skipped: ``(path, "hidden"
      | "not an image")`` is appended to `skipped` when a list is given
      (see :func:`skipped_summary`).

    A path that does not exist, or a folder without images, is an error naming it."""
    out: list[Path] = []
    for x in inputs:
        p = Path(x)
        if p.is_dir():
            found = []
            walk = p.rglob("*") if recursive else p.iterdir()
            for q in sorted(walk):
                if not q.is_file():
                    continue
                hidden = any(part.startswith(".") for part in q.relative_to(p).parts)
                if hidden or q.suffix.lower() not in IMAGE_SUFFIXES:
                    if skipped is not None:
                        skipped.append((q, "hidden" if hidden else "not an image"))
                    continue
                found.append(q)
            if not found:
                raise DataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}, in any case) in "
                                f"this folder or its sub-folders", path=p)
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DataError("image not found", path=p)
    if not out:
        raise DataError("no images given")
    return out


def skipped_summary(skipped, show: int = 3) -> str | None:
    """One line about the files a folder walk left out (the `skipped` of :func:`expand_inputs`),
    or None when there were none, e.g. ``skipped 3 files that are not images (.json, .txt):
    imgs/a.txt, imgs/b.json, imgs/c.txt``."""
    if not skipped:
        return None
    n = len(skipped)
    other = [q for q, why in skipped if why != "hidden"]
    kinds = sorted({q.suffix.lower() or "no suffix" for q in other})
    what = []
    if other:
        listed = ", ".join(kinds[:6]) + (", ..." if len(kinds) > 6 else "")
        what.append(f"not {'images' if n != 1 else 'an image'} ({listed})")
    if len(other) < n:
        what.append("hidden (a name starting with '.')")
    names = ", ".join(str(q) for q, _ in skipped[:show]) + (", ..." if n > show else "")
    return (f"skipped {n} file{'s' if n != 1 else ''} under the folders given that "
            f"{'are' if n != 1 else 'is'} {' or '.join(what)}: {names}")


class _Images(Dataset):
    def __init__(self, items, transform):
        self.items, self.transform = items, transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from PIL import Image

        from mlrpl.data.dataset import load_image, to_rgb, upright
        x = self.items[i]
        try:
            if isinstance(x, torch.Tensor):
                t = x                           # checked by _as_items: preprocessed, finite
            elif isinstance(x, Image.Image):
                try:
                    img = to_rgb(upright(x))    # the same rules as an image file's
                except (OSError, ValueError, SyntaxError, EOFError) as e:
                    raise DataError(f"input {i}: unreadable image ({type(e).__name__}: "
                                    f"{e})") from None
                t = self.transform(img)
            else:
                t = self.transform(load_image(x))
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
                 device="cpu", warn=None):
        self.model = model
        self.ckpt = ckpt
        self.cfg = cfg
        self.path = Path(checkpoint_path)
        self.device = torch.device(device)
        self.classes: list[str] = list(ckpt["classes"])
        self.image_size = int(cfg.data.image_size)
        self.transform = model.backbone.transform(False, self.image_size)
        self.net = InferenceModel(model).eval()
        self.warn = warn or python_warning
        self._digest: str | None = None
        self.thresholds, self.thresholds_source = resolve_thresholds(
            thresholds, self.path, ckpt, model, warn=self.warn, digest=lambda: self.model_digest)

    @classmethod
    def from_checkpoint(cls, path, device="cpu", thresholds="auto", backbone_weights=None,
                        warn=None):
        """``warn``: called with each one-line warning (thresholds tuned for another model...);
        by default a Python :class:`DeployWarning`."""
        model, ckpt, cfg = open_checkpoint(path, device, backbone_weights)
        return cls(model, ckpt, cfg, path, thresholds, device, warn)

    @property
    def model_digest(self) -> str:
        """sha256 of the model's weights (:func:`mlrpl.deploy.thresholds.model_digest`), the identity
        tuned thresholds record."""
        if self._digest is None:
            from mlrpl.deploy.thresholds import model_digest
            self._digest = model_digest(self.model)
        return self._digest

    @property
    def has_prior(self) -> bool:
        """Whether the model adds a class prior to its logits (``model.prior``)."""
        return getattr(self.model, "prior", None) is not None

    @property
    def thresholds_are_default(self) -> bool:
        """True when no tuned, learned or given threshold was found: every class uses 0.5."""
        return self.thresholds_source.endswith("(default)")

    def threshold_advice(self, probs, what: str = "images") -> str | None:
        """One warning line when the thresholds are the default 0.5 although the model needs
        tuned ones: it adds a class prior (``model.prior``), or fewer than half of the images
        scored (`probs`, (N, C), NaN rows ignored) pass any threshold. None otherwise."""
        if not self.thresholds_are_default:
            return None
        probs = np.asarray(probs, dtype=np.float64)
        probs = probs[~np.isnan(probs).any(axis=1)] if probs.ndim == 2 else probs[:0]
        if not len(probs):
            return None
        n = len(probs)
        passed = probs >= self.thresholds
        k = int((~passed.any(axis=1)).sum())
        if not self.has_prior and 2 * k <= n:
            return None
        every = int(passed.all(axis=1).sum())
        why = ("; a model with a class prior (model.prior) needs tuned thresholds: the prior "
               "shifts its probabilities away from 0.5" if self.has_prior else "")
        return (f"{self.path} has no tuned thresholds, so every class uses the default "
                f"{float(self.thresholds[0]):g}: {k} of {n} {what} got no label and {every} "
                f"got every label{why}; tune them on labelled data: mlrpl tune-thresholds "
                f"--checkpoint {self.path}")

    @property
    def preprocess(self) -> dict:
        pre = self.ckpt.get("preprocess") or {}
        return preprocess_spec(pre, self.image_size)

    # ---- scoring ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict_proba(self, inputs, batch_size: int = 32, show_progress=None,
                      on_error: str = "raise"):
        """Probabilities (N, C) for images given as paths, PIL images, uint8 arrays or tensors
        (see :data:`INPUTS_DOC`: all but a preprocessed float tensor (3, S, S) go through the
        same decoding and preprocessing as an image file). With ``on_error="skip"`` unreadable
        images get NaN rows; their errors are returned as a second value ``{index: message}``."""
        from mlrpl.utils.progress import progress
        items = _as_items(inputs, self.image_size)
        loader = DataLoader(_Images(items, self.transform), batch_size=batch_size,
                            collate_fn=_collate)
        out = np.full((len(items), len(self.classes)), np.nan, dtype=np.float32)
        errors: dict[int, str] = {}
        for imgs, errs, idx in progress(loader, desc="predicting", enable=show_progress, log=False):
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
        inputs : a path, PIL image, uint8 array (H, W, 3), uint8 tensor (3, H, W) as
            ``torchvision.io.read_image`` gives it, or preprocessed float tensor (3, S, S), or a
            list of them (see :data:`INPUTS_DOC`).
        thresholds : None (the predictor's), a number, (C,) values, or a file.
        topk : keep at most the `topk` highest-scored classes that pass their threshold.

        Returns
        -------
        list of dicts ``{"labels": [names], "probabilities": {class: p}}``.
        """
        thr = self.thresholds if thresholds is None else \
            resolve_thresholds(thresholds, self.path, self.ckpt, self.model, warn=self.warn,
                               digest=lambda: self.model_digest)[0]
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
        require("matplotlib", "plot", "--save-attention")
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


INPUTS_DOC = """Accepted inputs (one, or a list of them):

* a path to an image file (``str`` or ``Path``);
* a PIL image;
* a numpy ``uint8`` array (H, W, 3) RGB, as ``numpy.asarray(PIL image)`` gives it (OpenCV's
  BGR arrays need ``[..., ::-1]``), or (H, W) grayscale, (H, W, 4) RGBA; a 4-d array
  (B, H, W, 3) counts as B images;
* a torch ``uint8`` tensor (3, H, W) (or 1 or 4 channels), as
  ``torchvision.io.read_image`` gives it; (B, 3, H, W) counts as B images;

all of which are decoded by the same rules as an image file (alpha over white, grayscale to
RGB) and preprocessed as an image file is (resized to S x S, normalised), so they give the
same probabilities as the file; and

* a torch float tensor (3, S, S) or (B, 3, S, S), taken as already preprocessed (resized and
  normalised as ``.preprocess`` says); it must be finite.

Anything else (a float numpy array, a float tensor of another size, NaN or infinite values, an
integer tensor other than uint8) is an :class:`~mlrpl.errors.MlrplError` naming the shape and
type expected."""


def _as_items(inputs, size: int) -> list:
    """The inputs as a list of paths, PIL images and preprocessed float tensors (3, S, S) (see
    :data:`INPUTS_DOC`); an input of another kind is an error naming its position."""
    from PIL import Image
    if isinstance(inputs, (str, Path, Image.Image)):
        raw = [inputs]
    elif isinstance(inputs, (torch.Tensor, np.ndarray)):
        raw = _split_batch(inputs, 0)
    else:
        try:
            seq = list(inputs)
        except TypeError:
            raise MlrplError(_bad_input(0, inputs, size)) from None
        raw = []
        for x in seq:
            if isinstance(x, (torch.Tensor, np.ndarray)) and x.ndim == 4:
                raw += _split_batch(x, len(raw))
            else:
                raw.append(x)
    if not raw:
        raise MlrplError("no image given to predict")
    return [_as_item(x, i, size) for i, x in enumerate(raw)]


def _split_batch(x, start: int) -> list:
    if x.ndim == 4:
        return list(x)
    if x.ndim in (2, 3):
        return [x]
    raise MlrplError(_bad_input(start, x, None))


def _as_item(x, i: int, size: int):
    from PIL import Image
    if isinstance(x, (str, Path, Image.Image)):
        return x
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.uint8:
            if x.ndim == 3 and x.shape[0] in (1, 3, 4):
                return _pil_from_hwc(x.permute(1, 2, 0).cpu().numpy(), i)
            raise MlrplError(_bad_input(i, x, size))
        if x.is_floating_point():
            if tuple(x.shape) != (3, size, size):
                raise MlrplError(_bad_input(i, x, size))
            t = x.detach().to("cpu", torch.float32)
            if not bool(torch.isfinite(t).all()):
                raise MlrplError(f"predict input {i}: the preprocessed image tensor holds NaN or "
                                 f"infinite values; expected finite values normalised as "
                                 f".preprocess says")
            return t
        raise MlrplError(_bad_input(i, x, size))
    if isinstance(x, np.ndarray):
        if x.dtype == np.uint8 and (x.ndim == 2 or (x.ndim == 3 and x.shape[2] in (1, 3, 4))):
            return _pil_from_hwc(x, i)
        raise MlrplError(_bad_input(i, x, size))
    raise MlrplError(_bad_input(i, x, size))


def _pil_from_hwc(a: np.ndarray, i: int):
    from PIL import Image
    a = np.ascontiguousarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if min(a.shape[:2]) < 1:
        raise MlrplError(f"predict input {i}: an empty image ({a.shape[0]} x {a.shape[1]})")
    mode = "L" if a.ndim == 2 else "RGBA" if a.shape[2] == 4 else "RGB"
    return Image.fromarray(a, mode)


def _bad_input(i: int, x, size: int | None) -> str:
    s = f"{size}" if size else "S"
    if isinstance(x, (torch.Tensor, np.ndarray)):
        kind = "tensor" if isinstance(x, torch.Tensor) else "numpy array"
        got = f"a {kind} of shape {tuple(x.shape)} and dtype {str(x.dtype).replace('torch.', '')}"
    else:
        got = f"a {type(x).__name__}"
    return (f"predict input {i}: {got} is not an image this model reads; expected an image "
            f"file path, a PIL image, a uint8 array (H, W, 3) RGB, a uint8 tensor (3, H, W) "
            f"as torchvision.io.read_image gives it, or a preprocessed float tensor "
            f"(3, {s}, {s}) (batches: one more leading axis)")


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
