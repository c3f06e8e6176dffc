"""mlrpl: multi-label image recognition with partial labels."""
from mlrpl.version import __version__

_API = ("load", "train", "evaluate", "Predictor")


def __getattr__(name):
    # The Python API (mlrpl.load / train / evaluate), imported on first use: `import mlrpl`
    # stays light (no torch) for the command line's startup.
    if name in _API:
        from mlrpl import api
        return getattr(api, name)
    raise AttributeError(f"module 'mlrpl' has no attribute {name!r}")
