"""Data layer: readers, the canonical label matrix, partial-label simulation, label statistics."""
from mlrpl.data.labelset import LabelSet  # noqa: F401
from mlrpl.data.readers import read_dataset  # noqa: F401
