"""Partial-label simulation: hide part of a fully labelled training set, reproducibly.

Every protocol takes the full label matrix (internal encoding; 0 = ignored stays 0) and returns the
*partial* label matrix: known entries keep their full value, hidden ones become 0. A provenance
record says how it was made, so that a mask can be traced and regenerated.

Protocols
---------
``hcp`` (default)
    The HCP-MLR-PL protocol, bit-exact: ``numpy.random.seed(seed)``, one
    ``numpy.random.random((N, C))`` draw in dataset order, keep an entry where the draw is below
    ``p``. Positives and negatives are dropped at the same rate; known sets are nested across p.
``rps``
    Random per-entry drop (CSL's "rps"): each entry kept independently with probability ``p``,
    drawn from ``numpy.random.default_rng(seed)`` (the same law as ``hcp``, another generator, so
    not the published masks).
``fpc``
    Fixed per class (CSL's "fpc"): for every class, ``n`` known positives and ``n`` known negatives
    drawn uniformly (all of them when a class has fewer).
``single-positive``
    SPML: each image keeps exactly one of its positives, drawn uniformly; everything else unknown.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from mlrpl.data.encoding import NEG, POS, UNK
from mlrpl.data.labelset import label_hash, label_summary
from mlrpl.errors import DataError

PROTOCOLS = ("hcp", "rps", "fpc", "single-positive")


def _check_p(p: float) -> float:
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise DataError(f"known proportion {p!r} is not a number", field="known") from None
    if not (0.0 < p <= 1.0):
        raise DataError(f"known proportion must lie in (0, 1], got {p}", field="known")
    return p


def hcp_mask(shape: tuple[int, int], p: float, seed: int = 0) -> np.ndarray:
    """Boolean known-mask of the HCP protocol (global NumPy RNG, as the published code does).

    The global RNG state is saved and restored, so calling this has no side effect.

    >>> hcp_mask((2, 3), 0.5, seed=0)
    array([[False, False, False],
           [False,  True, False]])
    """
    p = _check_p(p)
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        draw = np.random.random(shape)
    finally:
        np.random.set_state(state)
    return draw < p


def simulate(full: np.ndarray, protocol: str = "hcp", p: float | None = None, seed: int = 0,
             n: int | None = None) -> np.ndarray:
    """Return the partial label matrix (int8, internal encoding) for `full` under `protocol`.

    Parameters
    ----------
    full : int8 array (N, C)
        Full labels (+1 / -1, 0 = ignored).
    protocol : one of ``PROTOCOLS``
    p : float in (0, 1]
        Known proportion (``hcp``, ``rps``).
    n : int
        Positives and negatives per class (``fpc``).
    """
    full = np.asarray(full, dtype=np.int8)
    if protocol == "hcp":
        keep = hcp_mask(full.shape, p, seed)
    elif protocol == "rps":
        p = _check_p(p)
        keep = np.random.default_rng(seed).random(full.shape) < p
    elif protocol == "fpc":
        if n is None or int(n) < 1:
            raise DataError(f"protocol 'fpc' needs n >= 1 (positives and negatives per class), "
                            f"got {n!r}", field="n")
        rng = np.random.default_rng(seed)
        keep = np.zeros(full.shape, dtype=bool)
        for c in range(full.shape[1]):
            for value in (POS, NEG):
                rows = np.flatnonzero(full[:, c] == value)
                take = rows if len(rows) <= n else rng.choice(rows, size=int(n), replace=False)
                keep[take, c] = True
    elif protocol == "single-positive":
        rng = np.random.default_rng(seed)
        keep = np.zeros(full.shape, dtype=bool)
        pos = full == POS
        counts = pos.sum(1)
        # One uniform draw per image picks the k-th of its positives.
        pick = np.floor(rng.random(full.shape[0]) * np.maximum(counts, 1)).astype(int)
        order = np.cumsum(pos, axis=1) - 1
        keep = pos & (order == pick[:, None])
    else:
        raise DataError(f"unknown protocol {protocol!r}; expected one of {list(PROTOCOLS)}",
                        field="protocol")
    return np.where(keep, full, UNK).astype(np.int8)


def check_consistent(partial: np.ndarray, full: np.ndarray, path=None) -> None:
    """Refuse a partial matrix whose shape differs from `full` or whose known entries contradict it."""
    if partial.shape != full.shape:
        raise DataError(f"mask has shape {partial.shape}, but the labels have shape {full.shape} "
                        f"(images x classes)", path=path)
    bad = (partial != UNK) & (partial != full)
    if bad.any():
        i, c = (int(x) for x in np.argwhere(bad)[0])
        raise DataError(f"the mask contradicts the full labels at {int(bad.sum())} entries; first "
                        f"at row {i + 1} (image {i}), column {c + 1}: mask says {int(partial[i, c])}, "
                        f"labels say {int(full[i, c])}", path=path, line=i + 1)


def provenance(partial: np.ndarray, full: np.ndarray, classes: list[str], protocol: str,
               p=None, seed=None, n=None, source: str = "", imported_from=None) -> dict:
    """The record written beside every mask."""
    s = label_summary(partial, classes)
    return {
        "protocol": protocol,
        "p": p,
        "n": n,
        "seed": seed,
        "imported_from": imported_from,
        "source": source,
        "shape": list(partial.shape),
        "classes": list(classes),
        "source_label_hash": label_hash(full, classes),
        "partial_label_hash": label_hash(partial, classes),
        "known_entries": s["known_entries"],
        "known_positives": s["known_positives"],
        "known_negatives": s["known_negatives"],
        "images_without_known_label": s["images_without_known_label"],
        "images_without_known_positive": s["images_without_known_positive"],
        "images_without_unknown_label": s["images_without_unknown_label"],
        "hidden_positives": int(((full == POS) & (partial == UNK)).sum()),
        "per_class_known": {c: {"positive": v["positive"], "negative": v["negative"]}
                            for c, v in s["per_class"].items()},
        **unlearnable_classes(partial, classes),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def unlearnable_classes(partial: np.ndarray, classes: list[str]) -> dict:
    """The classes a model cannot learn from `partial`: ``classes_without_known_label`` (every
    entry unknown) and ``classes_without_known_positive`` (no known positive, these included)."""
    partial = np.asarray(partial)
    known = (partial != UNK).any(0)
    positive = (partial == POS).any(0)
    return {"classes_without_known_label": [c for c, k in zip(classes, known) if not k],
            "classes_without_known_positive": [c for c, p in zip(classes, positive) if not p]}


# ---- files ------------------------------------------------------------------------------------
def hcp_txt(partial: np.ndarray) -> str:
    """Comma-separated rows of 1,-1,0 in dataset order (the published train_proportion_*.txt)."""
    return "\n".join(",".join(str(int(v)) for v in row) for row in np.asarray(partial)) + "\n"


def read_mask_file(path, num_classes: int | None = None, encoding: str = "hcp") -> np.ndarray:
    """Read a published mask: ``.npy`` (int, `encoding`) or text rows of comma- or
    space-separated ``1,-1,0`` (HCP encoding)."""
    from mlrpl.data.encoding import to_internal
    path = Path(path)
    if not path.is_file():
        raise DataError("mask file not found", path=path)
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise DataError(f"not a readable .npy array ({e})", path=path) from None
        if arr.ndim != 2:
            raise DataError(f"expected a 2-D (images x classes) array, got shape {arr.shape}",
                            path=path)
        return to_internal(arr, encoding, path=path)
    from mlrpl.data.readers.common import read_lines
    rows = []
    for ln, line in read_lines(path, "mask file"):
        fields = line.replace(",", " ").split()
        width = num_classes if num_classes is not None else (len(rows[0]) if rows else len(fields))
        if len(fields) != width:
            raise DataError(f"expected {width} values, got {len(fields)}", path=path, line=ln)
        vals = []
        for col, x in enumerate(fields, 1):
            v = _mask_value(x)
            if v is None:
                # Never round: 0.99 truncated to 0 would turn a known positive into unknown.
                raise DataError(f"value {x!r} in column {col} is outside the 'hcp' encoding "
                                f"(expected 1, -1 or 0)", path=path, line=ln)
            vals.append(v)
        rows.append(vals)
    if not rows:
        raise DataError("mask file is empty", path=path)
    return to_internal(np.array(rows), "hcp", path=path)


def _mask_value(text: str) -> int | None:
    """1, -1 or 0 from a text field ("1", "-1", "0", "1.0", "-0"...); None for anything else."""
    try:
        v = float(text)
    except ValueError:
        return None
    return int(v) if v in (1.0, -1.0, 0.0) else None


def write_outputs(partial: np.ndarray, record: dict, out, fmt: str = "npy",
                  overwrite: bool = False, keep_old: bool = False) -> tuple[Path, Path]:
    """Write the partial labels and ``<out stem>.provenance.json`` atomically; refuse to
    overwrite existing files unless asked (`keep_old`: a replaced file is moved aside, for a
    user's files). Returns the two paths."""
    out = Path(out)
    if fmt not in ("npy", "hcp"):
        raise DataError(f"unknown mask format {fmt!r}; expected npy or hcp", field="format")
    if fmt == "npy" and out.suffix != ".npy":
        out = out.with_suffix(out.suffix + ".npy") if out.suffix else out.with_suffix(".npy")
    prov = out.with_name(out.stem + ".provenance.json")
    for f in (out, prov):
        if f.exists() and not overwrite:
            raise DataError("refusing to overwrite an existing file (pass --force to replace it)",
                            path=f)
    if not out.parent.exists():
        raise DataError("output directory does not exist", path=out.parent)
    record = dict(record, file=out.name, format=fmt)
    from mlrpl.utils.files import atomic_write, atomic_write_text
    if fmt == "npy":
        atomic_write(out, lambda fh: np.save(fh, np.asarray(partial, dtype=np.int8),
                                             allow_pickle=False), keep_old=keep_old)
    else:
        atomic_write_text(out, hcp_txt(partial), keep_old=keep_old)
    atomic_write_text(prov, json.dumps(record, indent=2) + "\n", keep_old=keep_old)
    return out, prov


def load_partial(path, full: np.ndarray, encoding: str = "hcp") -> np.ndarray:
    """Read a mask written by `simulate` (or a published one) and check it against `full`."""
    partial = read_mask_file(path, full.shape[1], encoding)
    check_consistent(partial, full, path)
    return partial
