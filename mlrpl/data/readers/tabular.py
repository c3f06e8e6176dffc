"""Generic tabular label files: CSV (two layouts) and dense ``.npy`` matrices.

CSV (reader ``csv``)
--------------------
``root`` is the csv file, or a directory holding ``<split>.csv``. The layout is told by the
header (first line):

* **list layout** -- header ``image,labels`` or ``image,labels,unknown``. ``labels`` holds the
  ``;``-separated names of the positive classes, ``unknown`` (optional) the ``;``-separated names
  of the classes whose label is unknown (0); every other class is a negative. The classes are
  ``classes=`` (a list, or a text file with one name a line, or a YAML with ``names:``) or else
  the sorted union of the names seen in the file. With ``classes=`` given, a name outside them is
  an error (with a close-match suggestion).
* **dense layout** -- header ``image,<class 1>,<class 2>,...``, one value per class and row, in
  the encoding named by ``encoding=`` (``hcp``: +1/-1/0, ``asl``: 1/0/-1; see
  :mod:`mlrpl.data.encoding`). Both encodings use the values {1, 0, -1} and differ in what 0 and
  -1 mean, so a file holding any 0 is ambiguous and ``encoding=`` is required for it; a file of
  only 1 and -1 is read as ``hcp`` (+1 positive, -1 negative) when ``encoding=`` is not given.
  With ``classes=`` given, the header must name the same classes; the columns are put in the
  order of ``classes``.

A header of exactly ``image,labels`` is always the list layout. Blank lines are skipped. Items
are the ``image`` column, relative to the csv's directory (or to ``image_root=``).

NPY (reader ``npy``)
--------------------
``root`` is the ``.npy`` file (or a directory holding ``<split>.npy``): a numeric (N, C) matrix
in the encoding ``encoding=`` (required). Class names: ``classes=`` (list or text file, one a
line), by default ``<stem>.names.txt`` beside the matrix (required). Items: ``items=`` (list or
text file, one a line), by default ``<stem>.items.txt`` beside the matrix, else ``"0".."N-1"``.
Items are relative to the matrix's directory (or to ``image_root=``).
"""
from __future__ import annotations

import csv
import difflib
import math
from pathlib import Path

import numpy as np

from mlrpl.data.encoding import ENCODINGS, check_encoding, to_internal
from mlrpl.data.labelset import LabelSet
from mlrpl.data.readers import register_reader
from mlrpl.data.readers.common import read_lines, read_names
from mlrpl.errors import DataError, require_file

_LIST_HEADERS = (["image", "labels"], ["image", "labels", "unknown"])
_ALL_VALUES = sorted({v for enc in ENCODINGS.values() for v in enc})


# ---- shared helpers --------------------------------------------------------------------------
def _find_file(root, split: str | None, suffix: str, what: str) -> Path:
    root = Path(root)
    if root.is_dir():
        if not split:
            raise DataError(f"{root} is a directory: give split= to read <split>{suffix} from it, "
                            f"or give the {what} itself", path=root)
        name = split if split.endswith(suffix) else f"{split}{suffix}"
        return require_file(root / name, what)
    return require_file(root, what)


def _class_list(classes) -> list[str]:
    """`classes` as a list: a list/tuple as is, a path read as names (text, or YAML names:)."""
    if isinstance(classes, (str, Path)):
        p = Path(classes)
        if p.suffix.lower() in (".yaml", ".yml"):
            from mlrpl.data.readers.yolo import read_class_yaml
            return read_class_yaml(p)
        return read_names(p)
    names = [str(c) for c in classes]
    if len(set(names)) != len(names):
        dup = sorted({x for x in names if names.count(x) > 1})
        raise DataError(f"duplicate class names {dup}", field="classes")
    return names


def _suggest(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _split_names(cell: str) -> list[str]:
    return [x.strip() for x in cell.split(";") if x.strip()]


# ---- csv ------------------------------------------------------------------------------------
def read_csv(root, split: str | None = None, classes=None, encoding: str | None = None,
             image_root=None) -> LabelSet:
    """Read a label CSV (list or dense layout, see the module docstring).

    Parameters
    ----------
    root : path
        The csv file, or a directory with ``<split>.csv``.
    classes : list of str or path, optional
        The classes (list layout: required set of names, else the union seen; dense layout: the
        header must name them, columns are reordered to them).
    encoding : {"hcp", "asl"}, optional
        The dense layout's encoding; required when the file holds 0 values. Unused by the list
        layout.
    image_root : path, optional
        What the items are relative to; default the csv's directory.
    """
    path = _find_file(root, split, ".csv", "label CSV")
    if encoding is not None:
        check_encoding(encoding)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            rows = []
            header = None
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                if header is None:
                    header = ([c.strip() for c in row], reader.line_num)
                else:
                    rows.append((reader.line_num, row))
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e})", path=path) from None
    except csv.Error as e:
        raise DataError(f"malformed CSV ({e})", path=path) from None
    if header is None:
        raise DataError("empty file; expected a header 'image,labels' or 'image,<class>,...'",
                        path=path)
    cols, header_line = header
    if len(cols) < 2 or cols[0].lower() != "image":
        raise DataError(f"header {','.join(cols)!r}: expected 'image,labels[,unknown]' (list "
                        f"layout) or 'image,<class 1>,<class 2>,...' (dense layout)", path=path,
                        line=header_line)
    lowered = [c.lower() for c in cols]
    root_dir = str(Path(image_root) if image_root is not None else path.parent)
    if lowered in _LIST_HEADERS:
        items, names, labels = _read_list_layout(path, rows, len(cols), classes)
        layout = "list"
        used_encoding = None
    else:
        items, names, labels, used_encoding = _read_dense_layout(path, cols, header_line, rows,
                                                                 classes, encoding)
        layout = "dense"
    return LabelSet(items, names, labels, root=root_dir, source=f"csv:{path}",
                    meta={"layout": layout, "encoding": used_encoding})


def _check_width(path: Path, ln: int, row: list[str], width: int, header: str):
    if len(row) != width:
        raise DataError(f"{len(row)} columns, expected {width} (as the header {header!r})",
                        path=path, line=ln)


def _image_cell(path: Path, ln: int, row: list[str]) -> str:
    image = row[0].strip()
    if not image:
        raise DataError("empty image name", path=path, line=ln, field="image")
    return image


def _read_list_layout(path: Path, rows, width: int, classes):
    header = "image,labels" + (",unknown" if width == 3 else "")
    parsed = []
    for ln, row in rows:
        _check_width(path, ln, row, width, header)
        pos = _split_names(row[1])
        unk = _split_names(row[2]) if width == 3 else []
        both = sorted(set(pos) & set(unk))
        if both:
            raise DataError(f"class {both[0]!r} listed both in 'labels' and in 'unknown'",
                            path=path, line=ln)
        parsed.append((ln, _image_cell(path, ln, row), pos, unk))
    if classes is not None:
        names = _class_list(classes)
    else:
        names = sorted({c for _, _, pos, unk in parsed for c in pos + unk})
    col = {c: j for j, c in enumerate(names)}
    labels = np.full((len(parsed), len(names)), -1, dtype=np.int8)
    for n, (ln, _, pos, unk) in enumerate(parsed):
        for field, group, value in (("labels", pos, 1), ("unknown", unk, 0)):
            for c in group:
                if c not in col:
                    raise DataError(f"unknown class name {c!r}{_suggest(c, names)} (the classes "
                                    f"are the {len(names)} names given by classes=)",
                                    path=path, line=ln, field=field)
                labels[n, col[c]] = value
    return [image for _, image, _, _ in parsed], names, labels


def _parse_value(text: str, path: Path, ln: int, field: str) -> int:
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        pass
    try:
        v = float(t)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v != int(v):
        raise DataError(f"value {t!r} is not an integer label (expected one of {_ALL_VALUES})",
                        path=path, line=ln, field=field)
    return int(v)


def _read_dense_layout(path: Path, cols: list[str], header_line: int, rows, classes, encoding):
    names = cols[1:]
    if any(not c for c in names):
        raise DataError(f"empty class name in column {names.index('') + 2}", path=path,
                        line=header_line)
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise DataError(f"duplicate class names {dup} in the header", path=path, line=header_line)
    width = len(cols)
    header = ",".join(cols) if width <= 6 else ",".join(cols[:5]) + ",..."
    items, values, lines = [], np.empty((len(rows), len(names)), dtype=np.int64), []
    for n, (ln, row) in enumerate(rows):
        _check_width(path, ln, row, width, header)
        items.append(_image_cell(path, ln, row))
        values[n] = [_parse_value(v, path, ln, c) for v, c in zip(row[1:], names)]
        lines.append(ln)

    if encoding is None:
        if (values == 0).any():
            i, j = (int(x) for x in np.argwhere(values == 0)[0])
            raise DataError(
                f"dense labels are ambiguous: both encodings use the values 1, 0, -1 ('hcp': "
                f"+1/-1/0 = positive/negative/unknown, 'asl': 1/0/-1 = positive/negative/unknown), "
                f"and this file holds 0 (first at line {lines[i]}, class {names[j]!r}); name the "
                f"encoding with encoding='hcp' or encoding='asl'", path=path)
        encoding = "hcp"
    allowed = ENCODINGS[encoding]
    bad = ~np.isin(values, allowed)
    if bad.any():
        i, j = (int(x) for x in np.argwhere(bad)[0])
        raise DataError(f"value {int(values[i, j])} is outside the {encoding!r} encoding "
                        f"(expected one of {sorted(set(allowed))})", path=path, line=lines[i],
                        field=names[j])
    labels = to_internal(values, encoding, path=path)

    if classes is not None:
        want = _class_list(classes)
        missing = [c for c in want if c not in names]
        extra = [c for c in names if c not in want]
        if missing or extra:
            msg = "the header's classes differ from classes="
            if missing:
                msg += (f"; classes= names {missing} that the header lacks"
                        f"{_suggest(missing[0], extra)}")
            if extra:
                msg += f"; the header names {extra} that classes= lacks"
            raise DataError(msg, path=path, line=header_line)
        order = [names.index(c) for c in want]
        labels = labels[:, order]
        names = want
    return items, list(names), labels, encoding


# ---- npy ------------------------------------------------------------------------------------
def read_npy(root, split: str | None = None, encoding: str | None = None, classes=None,
             items=None, image_root=None) -> LabelSet:
    """Read a dense (N, C) ``.npy`` label matrix (see the module docstring).

    Parameters
    ----------
    encoding : {"hcp", "asl"}
        The matrix's encoding (required).
    classes : list of str or path, optional
        Default ``<stem>.names.txt`` beside the matrix.
    items : list of str or path, optional
        Default ``<stem>.items.txt`` beside the matrix, else ``"0".."N-1"``.
    image_root : path, optional
        What the items are relative to; default the matrix's directory.
    """
    path = _find_file(root, split, ".npy", "label matrix (.npy)")
    if encoding is None:
        raise DataError("a .npy label matrix needs its encoding: give encoding='hcp' "
                        "(+1/-1/0) or encoding='asl' (1/0/-1)", path=path, field="encoding")
    check_encoding(encoding)
    try:
        values = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"not a readable .npy array ({e})", path=path) from None
    if not isinstance(values, np.ndarray) or values.ndim != 2:
        raise DataError(f"expected a 2-D (N, C) matrix, got shape {np.shape(values)}", path=path)
    n, c = values.shape

    stem = path.with_suffix("")
    if classes is None:
        default = Path(f"{stem}.names.txt")
        if not default.is_file():
            raise DataError("class-name file not found (give classes= a list of names or a text "
                            "file with one name a line)", path=default)
        names, names_src = read_names(default), str(default)
    else:
        names = _class_list(classes)
        names_src = str(classes) if isinstance(classes, (str, Path)) else "the given list"
    if len(names) != c:
        raise DataError(f"matrix has {c} columns but {len(names)} class names are given "
                        f"({names_src})", path=path)
    if items is None:
        default = Path(f"{stem}.items.txt")
        items = default if default.is_file() else [str(i) for i in range(n)]
    if isinstance(items, (str, Path)):
        items_src = str(items)
        item_list = [s for _, s in read_lines(Path(items), "item list")]
    else:
        items_src = "the given list"
        item_list = [str(i) for i in items]
    if len(item_list) != n:
        raise DataError(f"matrix has {n} rows but {len(item_list)} items are given "
                        f"({items_src})", path=path)

    if values.dtype == bool or not np.issubdtype(values.dtype, np.number):
        raise DataError(f"label values must be integers, got dtype {values.dtype}", path=path)
    allowed = ENCODINGS[encoding]
    bad = ~np.isin(values, allowed)
    if bad.any():
        i, j = (int(x) for x in np.argwhere(bad)[0])
        raise DataError(f"value {values[i, j].item()!r} at row {i}, column {j} ({names[j]!r}) is "
                        f"outside the {encoding!r} encoding (expected one of "
                        f"{sorted(set(allowed))})", path=path)
    labels = to_internal(values, encoding, path=path)
    root_dir = str(Path(image_root) if image_root is not None else path.parent)
    return LabelSet(item_list, names, labels, root=root_dir, source=f"npy:{path}",
                    meta={"encoding": encoding})


@register_reader("csv")
def _csv_reader(root, split=None, **options):
    return read_csv(root, split, **options)


@register_reader("npy")
def _npy_reader(root, split=None, **options):
    return read_npy(root, split, **options)
