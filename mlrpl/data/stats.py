"""Label statistics computed from partial labels: the co-occurrence graph used by the SARL trunk."""
from __future__ import annotations

import numpy as np

from mlrpl.data.encoding import POS


def cooccurrence_graph(partial: np.ndarray) -> np.ndarray:
    """Conditional co-occurrence of known positives (docs/methods/sarl.md#equations, "Label graph";
    the zero row: docs/methods/sarl.md D1).

    ``A[i, j] = #(images where i and j are both known positive) / #(images where i is known
    positive)``, ``A[i, i] = 1``. A class with no known positive gets a zero row with a unit
    diagonal (the published code produced NaN there).

    Parameters
    ----------
    partial : int array (N, C), internal encoding (+1 / -1 / 0)

    Returns
    -------
    float32 array (C, C)

    >>> cooccurrence_graph(np.array([[1, 1, 0], [1, -1, 0]]))
    array([[1. , 0.5, 0. ],
           [1. , 1. , 0. ],
           [0. , 0. , 1. ]], dtype=float32)
    """
    pos = (np.asarray(partial) == POS).astype(np.float64)
    both = pos.T @ pos
    count = np.diag(both).copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        graph = np.where(count[:, None] > 0, both / np.maximum(count[:, None], 1), 0.0)
    np.fill_diagonal(graph, 1.0)
    return graph.astype(np.float32)


def top_k_neighbours(graph: np.ndarray, k: int | None) -> np.ndarray:
    """Each class's ``k`` neighbours in the label graph: (C, C) bool, True at (i, j) when j is
    among the ``k`` classes i co-occurs with most (``graph[i, j]`` largest; the diagonal is never
    a neighbour). A row with fewer than ``k`` non-zero entries is filled up with classes it never
    co-occurs with, lowest index first, so that every class has exactly ``min(k, C - 1)``
    neighbours. ``k`` None or ``k >= C - 1``: every other class (the dense graph).

    >>> g = np.array([[1, .2, .5, 0], [.1, 1, 0, 0], [.3, .3, 1, .9], [0, 0, 0, 1]])
    >>> top_k_neighbours(g, 1).astype(int)
    array([[0, 0, 1, 0],
           [1, 0, 0, 0],
           [0, 0, 0, 1],
           [1, 0, 0, 0]])
    """
    g = np.asarray(graph, dtype=np.float64)
    c = g.shape[0]
    if g.ndim != 2 or g.shape[1] != c:
        raise ValueError(f"expected a square label graph, got shape {g.shape}")
    if k is not None and int(k) < 1:
        raise ValueError(f"expected k >= 1 neighbours, got {k}")
    off = ~np.eye(c, dtype=bool)
    if k is None or int(k) >= c - 1:
        return off
    k = int(k)
    # Sort each row by value, largest first; a stable sort keeps the lower index first on ties.
    order = np.argsort(-np.where(off, g, -np.inf), axis=1, kind="stable")[:, :k]
    mask = np.zeros((c, c), dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def sparse_graph(graph: np.ndarray, k: int | None) -> np.ndarray:
    """The label graph with each row kept at its diagonal and its :func:`top_k_neighbours`, zero
    elsewhere (``k`` None or ``>= C - 1``: the graph itself)."""
    g = np.asarray(graph, dtype=np.float32)
    keep = top_k_neighbours(g, k) | np.eye(g.shape[0], dtype=bool)
    return np.where(keep, g, np.float32(0)).astype(np.float32)
