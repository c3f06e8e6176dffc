"""Errors raised on bad user input.

Every error about a file names the file, and where it can, the line and the field, and says what
was expected, so that the command line can print it as is and exit non-zero.
"""
from __future__ import annotations

from pathlib import Path


class MlrplError(Exception):
    """Base class: a problem the user can fix (bad input, bad configuration)."""


class DataError(MlrplError):
    """Bad data: a missing or malformed file, an unknown class, a value outside an encoding."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None,
                 field: str | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        where = ""
        if self.path is not None:
            where = self.path
            if line is not None:
                where += f", line {line}"
            if field is not None:
                where += f", field {field!r}"
            where += ": "
        elif field is not None:
            where = f"{field}: "
        super().__init__(where + message)


class ConfigError(MlrplError):
    """Bad configuration: an unknown key, a value of the wrong type or range."""


def require_file(path: str | Path, what: str = "file") -> Path:
    """Return `path` as a Path, or raise DataError if it is not an existing file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} not found" if not p.exists() else f"{what} is not a file", path=p)
    return p


def require_dir(path: str | Path, what: str = "directory") -> Path:
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"{what} not found" if not p.exists() else f"{what} is not a directory", path=p)
    return p


def check_value_in(key: str, value, allowed) -> None:
    """One ConfigError unless `value` is one of `allowed` for the setting `key`, suggesting the
    closest allowed name: ``bad value for 'model.freeze': 'hpc'; expected one of [...]; did you
    mean 'hcp'?``."""
    if value in allowed:
        return
    import difflib
    close = difflib.get_close_matches(str(value), [a for a in allowed if isinstance(a, str)], n=1)
    raise ConfigError(f"bad value for '{key}': {value!r}; expected one of {list(allowed)}"
                      + (f"; did you mean {close[0]!r}?" if close else ""))
