"""Label encodings.

Internally a label matrix is ``int8`` of shape (N, C) in the HCP encoding:
``+1`` known positive, ``-1`` known negative, ``0`` unknown. Full (ground-truth) label matrices use
the same encoding, ``0`` then meaning "ignored" (for example a VOC class present only as difficult
when difficult objects are ignored).

Two encodings are in circulation and are converted explicitly at the library's edges:

========  ================  ================  ===========
name      positive          negative          unknown
========  ================  ================  ===========
``hcp``   +1                -1                0
``asl``   1                 0                 -1
========  ================  ================  ===========

Example
-------
>>> import numpy as np
>>> to_internal(np.array([[1, 0, -1]]), "asl")
array([[ 1, -1,  0]], dtype=int8)
>>> from_internal(np.array([[1, -1, 0]], dtype=np.int8), "asl")
array([[ 1,  0, -1]], dtype=int8)
"""
from __future__ import annotations

import numpy as np

from mlrpl.errors import DataError

POS, NEG, UNK = 1, -1, 0

# encoding -> (positive, negative, unknown) values
ENCODINGS: dict[str, tuple[int, int, int]] = {
    "hcp": (1, -1, 0),
    "asl": (1, 0, -1),
}


def check_encoding(name: str) -> tuple[int, int, int]:
    try:
        return ENCODINGS[name]
    except KeyError:
        raise DataError(f"unknown label encoding {name!r}; expected one of {sorted(ENCODINGS)}",
                        field="encoding") from None


def _validate_values(values: np.ndarray, allowed: tuple[int, ...], encoding: str, path=None):
    if values.size == 0:
        return
    if not np.issubdtype(values.dtype, np.number) and values.dtype != bool:
        raise DataError(f"label values must be numbers, got dtype {values.dtype}", path=path)
    bad = ~np.isin(values, allowed)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"value {values[idx]!r} at index {idx} is outside the {encoding!r} encoding "
            f"(expected one of {sorted(set(allowed))})", path=path)


def to_internal(values: np.ndarray, encoding: str, path=None) -> np.ndarray:
    """Convert a matrix in `encoding` to the internal int8 matrix (+1 / -1 / 0)."""
    pos, neg, unk = check_encoding(encoding)
    values = np.asarray(values)
    _validate_values(values, (pos, neg, unk), encoding, path)
    out = np.zeros(values.shape, dtype=np.int8)
    out[values == pos] = POS
    out[values == neg] = NEG
    return out


def from_internal(labels: np.ndarray, encoding: str) -> np.ndarray:
    """Convert the internal matrix to `encoding` (int8)."""
    pos, neg, unk = check_encoding(encoding)
    labels = np.asarray(labels)
    _validate_values(labels, (POS, NEG, UNK), "hcp")
    out = np.full(labels.shape, unk, dtype=np.int8)
    out[labels == POS] = pos
    out[labels == NEG] = neg
    return out


def convert(values: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Convert between two named encodings."""
    return from_internal(to_internal(values, src), dst)


def infer_encoding(values: np.ndarray, path=None) -> str:
    """Name the encoding of a matrix when only one reading is possible, else raise.

    A matrix of two values is fully labelled, its negative being whichever of -1 and 0 it uses:
    ``{+1, -1}`` reads as ``hcp``, ``{1, 0}`` as ``asl`` (0 = negative, the common 0/1 matrix).
    One that holds 1, 0 and -1 reads differently in the two encodings (``hcp``: 0 unknown;
    ``asl``: -1 unknown), so the user must say which.
    """
    present = set(np.unique(np.asarray(values)).tolist())
    if present <= {1, -1}:
        return "hcp"
    if present <= {1, 0}:
        return "asl"
    raise DataError(f"the label encoding is ambiguous (values {sorted(present)}): 0 means "
                    f"'unknown' in the 'hcp' encoding (1/-1/0) and 'negative' in the 'asl' "
                    f"encoding (1/0/-1, where -1 is unknown); name it with --encoding hcp or "
                    f"--encoding asl", path=path)
