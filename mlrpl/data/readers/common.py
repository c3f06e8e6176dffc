"""Small text-file helpers shared by the readers."""
from __future__ import annotations

from pathlib import Path

from mlrpl.errors import DataError, require_file


def resolve(root: Path, path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


def read_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """Non-blank lines of a text file, stripped, with their 1-based line numbers."""
    path = require_file(path, what)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e})", path=path) from None
    return [(ln, line.strip()) for ln, line in enumerate(text.splitlines(), 1) if line.strip()]


def read_names(path: Path, what: str = "class-name file") -> list[str]:
    lines = read_lines(path, what)
    seen: dict[str, int] = {}
    for ln, name in lines:
        if name in seen:
            raise DataError(f"duplicate class name {name!r} (first on line {seen[name]})",
                            path=path, line=ln)
        seen[name] = ln
    if not lines:
        raise DataError("no class names (expected one name a line)", path=path)
    return [name for _, name in lines]
