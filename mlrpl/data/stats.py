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
