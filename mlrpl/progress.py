"""Progress bars that stay quiet when output is not a terminal (logs, CI, pipes)."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(iterable, desc: str = "", enable: bool | None = None, **kw):
    """`tqdm` over `iterable`, shown only on an interactive terminal unless `enable` says."""
    if enable is None:
        enable = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, disable=not enable, leave=False, dynamic_ncols=True, **kw)
