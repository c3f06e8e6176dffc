"""mlrpl: multi-label image recognition with partial labels.

The Python API (:mod:`mlrpl.api`) and the method factory (:mod:`mlrpl.methods.base`) are
re-exported here, imported on first use so that ``import mlrpl`` stays light (no torch) for the
command line's startup::

    mlrpl.load(path) / mlrpl.train(cfg) / mlrpl.evaluate(checkpoint)
    mlrpl.create_method(name, ctx, **cfg) / mlrpl.list_methods()
"""
from mlrpl.version import __version__

_EXPORTS = {"load": "mlrpl.api", "train": "mlrpl.api", "evaluate": "mlrpl.api",
            "Predictor": "mlrpl.api", "create_method": "mlrpl.methods.base",
            "list_methods": "mlrpl.methods.base", "list_plugins": "mlrpl.plugins.registry"}

# annotation: which labels to ask next (mlrpl suggest), the answers back in (mlrpl data merge)
_EXPORTS.update({"suggest": "mlrpl.api", "merge_labels": "mlrpl.api"})

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mlrpl' has no attribute {name!r}")
