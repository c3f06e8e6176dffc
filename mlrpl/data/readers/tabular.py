"""Generic tabular label files: CSV (three layouts) and dense ``.npy`` matrices.

CSV (reader ``csv``)
--------------------
``root`` is the csv file, or a directory holding ``<split>.csv``. The layout is told by the
header (first line):

* **wide layout** -- header ``image,<class 1>,<class 2>,...``, one cell per class and row. A
  cell is a *token*: a positive, a negative or an unknown. By default the unknown token is the
  blank cell, the positive ``1`` and the negatives ``0`` and ``-1`` (a file holding both ``0`` and
  ``-1`` beside blanks is ambiguous and needs ``negative=``). ``positive=``, ``negative=`` and
  ``unknown=`` (a token or a list of tokens; e.g. ``unknown="?"``, ``"-1"``, ``"NaN"``) name them
  explicitly; a cell that is none of them is an error naming the line and the class. Numeric
  tokens compare as numbers (``1.0`` is ``1``), others without case (``NaN`` is ``nan``).
  ``encoding=`` (``hcp``: +1/-1/0, ``asl``: 1/0/-1; see :mod:`mlrpl.data.encoding`) reads the
  cells as one of the two integer encodings instead (blank cells are then unknown too). A file
  without blanks is fully labelled: one of only 1 and 0 reads 0 as negative (``asl``, said in
  ``meta["encoding_rule"]``, which training logs and records), one of only 1 and -1 as ``hcp``;
  one that holds both 0 and -1 is ambiguous (one of them must mean unknown) and needs
  ``encoding=``. With ``classes=`` given, the header must name the same classes; the columns are
  put in the order of ``classes``.
* **long layout** -- header ``image,label,value`` (``label`` may be called ``class``): one row per
  annotated (image, class) pair, the value a positive or negative token as above (an explicit
  unknown token is allowed too). A pair that has no row is unknown: the OpenImages convention.
  Columns ``rank``, ``score`` and ``reason`` after these three (the ask file of ``mlrpl suggest``)
  are ignored.
* **list layout** -- header ``image,labels`` or ``image,labels,unknown``. ``labels`` holds the
  ``;``-separated names of the positive classes, ``unknown`` (optional) the ``;``-separated names
  of the classes whose label is unknown; every other class is a negative, or with
  ``absent="unknown"`` an unknown (lists of positives only).

For the long and list layouts the classes are ``classes=`` (a list, or a text file with one name a
line, or a YAML with ``names:``) or else the sorted union of the names seen in the file; with
``classes=`` given, a name outside them is an error (with a close-match suggestion).

Any layout may carry a ``split`` column (e.g. ``train`` / ``val``): ``split=`` then keeps the rows
of that split. A split given for a single file without that column is an error (the file is one
split: hold part of it out, or give the evaluation file separately). An image listed twice (an
(image, class) pair, in the long layout) is an error naming both lines; two spellings of one file
(``./img/a.jpg``, ``img/a.jpg``, its absolute path) are the same image. Blank lines are skipped.
Items are the ``image`` column, relative to the csv's directory (or to ``image_root=``).

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
import os
from pathlib import Path

import numpy as np

from mlrpl.data.encoding import ENCODINGS, NEG, POS, UNK, check_encoding, to_internal
from mlrpl.data.labelset import LabelSet
from mlrpl.data.readers.registry import register_reader
from mlrpl.data.readers.common import read_lines, read_names
from mlrpl.errors import DataError, require_file

_LIST_HEADERS = (["image", "labels"], ["image", "labels", "unknown"])
# How a wide file of 1 and 0 cells without blanks (the common fully labelled spreadsheet) reads.
DENSE_01_RULE = ("no blank cell and no -1: every label is known, 1 = positive, 0 = negative "
                 "(read as encoding 'asl'; blank cells would be unknown)")
_LONG_HEADERS = (["image", "label", "value"], ["image", "class", "value"])
# Columns a long-layout file may carry after image,label,value, ignored by the reader: the ask
# file of `mlrpl suggest` (rank, score and reason of each entry), read back once filled in.
LONG_EXTRA_COLUMNS = ("rank", "score", "reason")
_ALL_VALUES = sorted({v for enc in ENCODINGS.values() for v in enc})
ABSENT_CHOICES = ("negative", "unknown")


# ---- shared helpers --------------------------------------------------------------------------
def _find_file(root, split: str | None, suffix: str, what: str) -> tuple[Path, bool]:
    """The file to read and whether it was picked by `split` (``<root>/<split><suffix>``)."""
    root = Path(root)
    if root.is_dir():
        if not split:
            raise DataError(f"{root} is a directory: give split= to read <split>{suffix} from it, "
                            f"or give the {what} itself", path=root)
        name = split if split.endswith(suffix) else f"{split}{suffix}"
        return require_file(root / name, what), True
    return require_file(root, what), False


def single_file_split_error(path, split: str) -> DataError:
    return DataError(
        f"split {split!r} given for a dataset that is one file without a 'split' column: the file "
        f"is a single split. Set data.train_split=null and data.val_split=null to evaluate on a "
        f"seeded holdout (data.holdout), give the evaluation labels as a second file "
        f"(data.val_root=FILE), or add a 'split' column to the file", path=path, field="split")


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


# ---- tokens ---------------------------------------------------------------------------------
def norm_token(text) -> str:
    """A cell as a comparable token: numbers by value (``1.0`` -> ``1``), text without case."""
    t = str(text).strip()
    try:
        v = float(t)
    except ValueError:
        return t.lower()
    if math.isnan(v):
        return "nan"
    if math.isfinite(v) and v == int(v):
        return str(int(v))
    return t.lower()


def _token_set(value, what: str) -> set[str] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple, set)):
        return {norm_token(v) for v in value}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {norm_token(value)}
    text = str(value)
    # "?,NaN" names two tokens; a lone "" is the blank cell.
    return {norm_token(v) for v in text.split(",")} if "," in text else {norm_token(text)}


class Tokens:
    """Which cell tokens mean positive, negative and unknown (see the module docstring)."""

    def __init__(self, positive=None, negative=None, unknown=None):
        self.explicit = any(v is not None for v in (positive, negative, unknown))
        self.unknown = _token_set(unknown, "unknown") if unknown is not None else {""}
        self.positive = (_token_set(positive, "positive") if positive is not None
                         else {"1"} - self.unknown)
        self.negative = (_token_set(negative, "negative") if negative is not None
                         else {"0", "-1"} - self.unknown)
        for a, b in (("positive", "negative"), ("positive", "unknown"), ("negative", "unknown")):
            both = getattr(self, a) & getattr(self, b)
            if both:
                raise DataError(f"token {sorted(both)[0]!r} is named both {a} and {b}",
                                field=f"--{a}")

    def as_options(self) -> dict:
        """Reader options that read another file (an evaluation split) the same way."""
        return {"positive": sorted(self.positive), "negative": sorted(self.negative),
                "unknown": sorted(self.unknown)}

    def describe(self) -> str:
        def show(s):
            return ", ".join(repr(t) if t else "'' (blank)" for t in sorted(s)) or "none"
        return (f"positive ({show(self.positive)}), negative ({show(self.negative)}) nor "
                f"unknown ({show(self.unknown)})")

    def value(self, cell: str, path, ln: int, field: str) -> int:
        t = norm_token(cell)
        if t in self.positive:
            return POS
        if t in self.negative:
            return NEG
        if t in self.unknown:
            return UNK
        raise DataError(f"value {cell.strip()!r} is neither {self.describe()}; name the tokens "
                        f"with --positive/--negative/--unknown (reader options positive=, "
                        f"negative=, unknown=)", path=path, line=ln, field=field)


# ---- csv ------------------------------------------------------------------------------------
def csv_rows(path) -> tuple[list[str], int, list[tuple[int, list[str]]]]:
    """(header cells, header line, [(line, cells)]) of a label CSV, blank lines skipped; one
    DataError naming the file for text that is not UTF-8, malformed CSV or an empty file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header, rows = None, []
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                if header is None:
                    header = (row, reader.line_num)
                else:
                    rows.append((reader.line_num, row))
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e})", path=path) from None
    except csv.Error as e:
        raise DataError(f"malformed CSV ({e})", path=path) from None
    if header is None:
        raise DataError("empty file; expected a header 'image,labels', 'image,label,value' or "
                        "'image,<class>,...'", path=path)
    return header[0], header[1], rows


def read_csv(root, split: str | None = None, classes=None, encoding: str | None = None,
             image_root=None, positive=None, negative=None, unknown=None,
             absent: str = "negative") -> LabelSet:
    """Read a label CSV (wide, long or list layout, see the module docstring).

    Parameters
    ----------
    root : path
        The csv file, or a directory with ``<split>.csv``.
    split : str, optional
        With a directory: the file ``<split>.csv``. With a file: the rows whose ``split`` column
        holds it (an error when the file has no such column).
    classes : list of str or path, optional
        The classes (long/list layouts: the set of names allowed, else the union seen; wide
        layout: the header must name them, columns are reordered to them).
    encoding : {"hcp", "asl"}, optional
        Read the cells as integers in this encoding (wide and long layouts).
    positive, negative, unknown : str or list of str, optional
        The cell tokens of each kind (default ``1``; ``0`` and ``-1``; the blank cell).
    absent : {"negative", "unknown"}
        List layout: what a class that is not listed is.
    image_root : path, optional
        What the items are relative to; default the csv's directory.

    Returns
    -------
    LabelSet
        ``labels`` (N, C) int8: +1 positive, -1 negative, 0 unknown. ``meta`` has the layout,
        the encoding or tokens, and ``splits`` (the split column's values) when there is one.
    """
    path, by_split = _find_file(root, split, ".csv", "label CSV")
    if encoding is not None:
        check_encoding(encoding)
    if absent not in ABSENT_CHOICES:
        raise DataError(f"absent={absent!r}; expected one of {list(ABSENT_CHOICES)}",
                        field="absent")
    tokens = Tokens(positive, negative, unknown)
    if encoding is not None and (positive is not None or negative is not None):
        raise DataError("give either encoding= or positive=/negative= tokens, not both",
                        path=path, field="encoding")
    raw, header_line, rows = csv_rows(path)
    header = ([c.strip() for c in raw], header_line)
    cols, header_line = header
    if len(cols) < 2 or cols[0].lower() != "image":
        raise DataError(f"header {','.join(cols)!r}: expected 'image,<class 1>,<class 2>,...' "
                        f"(wide layout), 'image,label,value' (long layout) or "
                        f"'image,labels[,unknown]' (list layout)", path=path, line=header_line)

    # An optional split column: take it out, keep the rows of the split asked for.
    lowered = [c.lower() for c in cols]
    splits = None
    if "split" in lowered[1:]:
        j = lowered.index("split", 1)
        header_text = ",".join(cols)
        for ln, row in rows:
            _check_width(path, ln, row, len(cols), header_text)
        splits = [row[j].strip() for _, row in rows]
        rows = [(ln, row[:j] + row[j + 1:]) for ln, row in rows]
        cols = cols[:j] + cols[j + 1:]
        lowered = lowered[:j] + lowered[j + 1:]
        if split is not None and not by_split:
            present = sorted(set(splits))
            if split not in present:
                raise DataError(f"split {split!r} not found in the 'split' column (it holds "
                                f"{present})", path=path, field="split")
            rows = [r for r, s in zip(rows, splits) if s == split]
            splits = [split] * len(rows)
    elif split is not None and not by_split:
        raise single_file_split_error(path, split)

    if lowered[:3] in _LONG_HEADERS and len(lowered) > 3 and \
            set(lowered[3:]) <= set(LONG_EXTRA_COLUMNS):
        # the ask file of `mlrpl suggest`: its rank, score and reason columns are not labels
        header_text = ",".join(cols)
        for ln, row in rows:
            _check_width(path, ln, row, len(cols), header_text)
        rows = [(ln, row[:3]) for ln, row in rows]
        cols, lowered = cols[:3], lowered[:3]

    root_dir = str(Path(image_root) if image_root is not None else path.parent)
    meta: dict = {}
    if lowered in _LIST_HEADERS:
        items, names, labels = _read_list_layout(path, rows, len(cols), classes, absent, root_dir)
        meta.update(layout="list", encoding=None, absent=absent)
    elif lowered in _LONG_HEADERS:
        items, names, labels = _read_long_layout(path, rows, classes, encoding, tokens, root_dir)
        meta.update(layout="long", encoding=encoding)
    else:
        items, names, labels, used = _read_wide_layout(path, cols, header_line, rows, classes,
                                                       encoding, tokens, root_dir)
        if isinstance(used, Tokens):
            meta.update(layout="dense", encoding=None, tokens=used.as_options())
        else:
            meta.update(layout="dense", encoding=used)
            if encoding is None and used == "asl":
                meta["encoding_rule"] = DENSE_01_RULE
    if splits is not None and lowered not in _LONG_HEADERS:
        meta["splits"] = splits
    elif splits is not None:
        first = {}
        for (ln, row), s in zip(rows, splits):
            first.setdefault(row[0].strip(), s)
        meta["splits"] = [first[i] for i in items]
    return LabelSet(items, names, labels, root=root_dir, source=f"csv:{path}", meta=meta)


def _check_width(path: Path, ln: int, row: list[str], width: int, header: str):
    if len(row) != width:
        raise DataError(f"{len(row)} columns, expected {width} (as the header {header!r})",
                        path=path, line=ln)


def _image_cell(path: Path, ln: int, row: list[str]) -> str:
    image = row[0].strip()
    if not image:
        raise DataError("empty image name", path=path, line=ln, field="image")
    return image


def image_key(root_dir: str, image: str) -> str:
    """One spelling for every way of naming the same image file: the path resolved against
    `root_dir` (``./img/a.jpg``, ``img/a.jpg``, ``img/../img/a.jpg`` and the absolute path are one
    key; so are two symbolic links to one file)."""
    return os.path.normcase(os.path.realpath(os.path.join(root_dir, image)))


def _twice(image: str, first: str, first_ln: int, ln: int) -> str:
    same = "" if image == first else f" (as {first!r} on line {first_ln}: the same file)"
    return f"image {image!r} is listed twice (lines {first_ln} and {ln}){same}"


def _check_unique_images(path: Path, parsed_images: list[tuple[int, str]], root_dir: str):
    """An image listed twice, under any spelling of its path, is an error naming it and both
    lines (which labels would win?)."""
    seen: dict[str, tuple[int, str]] = {}
    for ln, image in parsed_images:
        key = image_key(root_dir, image)
        if key in seen:
            first_ln, first = seen[key]
            raise DataError(f"{_twice(image, first, first_ln, ln)}; give each image one row",
                            path=path, line=ln, field="image")
        seen[key] = (ln, image)


def _read_list_layout(path: Path, rows, width: int, classes, absent: str, root_dir: str):
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
    _check_unique_images(path, [(ln, image) for ln, image, _, _ in parsed], root_dir)
    if classes is not None:
        names = _class_list(classes)
    else:
        names = sorted({c for _, _, pos, unk in parsed for c in pos + unk})
    col = {c: j for j, c in enumerate(names)}
    fill = NEG if absent == "negative" else UNK
    labels = np.full((len(parsed), len(names)), fill, dtype=np.int8)
    for n, (ln, _, pos, unk) in enumerate(parsed):
        for field, group, value in (("labels", pos, POS), ("unknown", unk, UNK)):
            for c in group:
                if c not in col:
                    raise DataError(f"unknown class name {c!r}{_suggest(c, names)} (the classes "
                                    f"are the {len(names)} names given by classes=)",
                                    path=path, line=ln, field=field)
                labels[n, col[c]] = value
    return [image for _, image, _, _ in parsed], names, labels


def _read_long_layout(path: Path, rows, classes, encoding, tokens: Tokens, root_dir: str):
    header = "image,label,value"
    order: dict[str, int] = {}    # image key -> item index
    spelling: dict[str, str] = {}  # image key -> the item (its first spelling)
    entries = []
    seen: dict[tuple[str, str], tuple[int, str]] = {}
    for ln, row in rows:
        _check_width(path, ln, row, 3, header)
        image = _image_cell(path, ln, row)
        name = row[1].strip()
        if not name:
            raise DataError("empty class name", path=path, line=ln, field="label")
        key = image_key(root_dir, image)
        if (key, name) in seen:
            first_ln, first = seen[key, name]
            raise DataError(f"{_twice(image, first, first_ln, ln)} with class {name!r}; give each "
                            f"(image, class) pair one row", path=path, line=ln, field="label")
        seen[key, name] = (ln, image)
        if encoding is not None and norm_token(row[2]) not in tokens.unknown:
            pos, neg, _ = ENCODINGS[encoding]
            v = _parse_value(row[2], path, ln, "value")
            if v not in ENCODINGS[encoding]:
                raise DataError(f"value {v} is outside the {encoding!r} encoding (expected one "
                                f"of {sorted(set(ENCODINGS[encoding]))})", path=path, line=ln,
                                field="value")
            value = POS if v == pos else NEG if v == neg else UNK
        else:
            value = tokens.value(row[2], path, ln, "value")
        order.setdefault(key, len(order))
        spelling.setdefault(key, image)
        entries.append((ln, key, name, value))
    if classes is not None:
        names = _class_list(classes)
    else:
        names = sorted({name for _, _, name, _ in entries})
    col = {c: j for j, c in enumerate(names)}
    labels = np.zeros((len(order), len(names)), dtype=np.int8)  # an absent pair is unknown
    for ln, key, name, value in entries:
        if name not in col:
            raise DataError(f"unknown class name {name!r}{_suggest(name, names)} (the classes "
                            f"are the {len(names)} names given by classes=)", path=path, line=ln,
                            field="label")
        labels[order[key], col[name]] = value
    return [spelling[k] for k in order], names, labels


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


def _read_wide_layout(path: Path, cols: list[str], header_line: int, rows, classes, encoding,
                      tokens: Tokens, root_dir: str):
    names = cols[1:]
    if any(not c for c in names):
        raise DataError(f"empty class name in column {names.index('') + 2}", path=path,
                        line=header_line)
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise DataError(f"duplicate class names {dup} in the header", path=path, line=header_line)
    width = len(cols)
    header = ",".join(cols) if width <= 6 else ",".join(cols[:5]) + ",..."
    items, cells, lines = [], [], []
    for ln, row in rows:
        _check_width(path, ln, row, width, header)
        items.append(_image_cell(path, ln, row))
        cells.append(row[1:])
        lines.append(ln)
    _check_unique_images(path, list(zip(lines, items)), root_dir)
    normed = [[norm_token(v) for v in r] for r in cells]
    has_unknown_token = any(t in tokens.unknown for r in normed for t in r)

    if encoding is None and not tokens.explicit and not has_unknown_token:
        # No blanks: every cell is known. 1/-1 and 1/0 each have one reading (the negative is
        # whichever of -1 and 0 the file uses); 1/0/-1 has two, told apart only by the user.
        values = _int_matrix(path, cells, lines, names)
        if (values == 0).any() and (values == -1).any():
            i, j = (int(x) for x in np.argwhere(values == 0)[0])
            k, m = (int(x) for x in np.argwhere(values == -1)[0])
            raise DataError(
                f"dense labels are ambiguous: the file has no blank cell and holds both 0 (first "
                f"at line {lines[i]}, class {names[j]!r}) and -1 (first at line {lines[k]}, "
                f"class {names[m]!r}), so one of them means unknown: 'hcp' reads 1/-1/0 as "
                f"positive/negative/unknown, 'asl' reads 1/0/-1 as positive/negative/unknown; "
                f"name the encoding with encoding='hcp' or encoding='asl' (--encoding; "
                f"data.reader_options.encoding when training)", path=path)
        encoding = "asl" if (values == 0).any() else "hcp"
    if encoding is not None:
        values = _int_matrix(path, cells, lines, names, unknown=tokens.unknown)
        pos, neg, unk = ENCODINGS[encoding]
        values[values == _BLANK] = unk
        allowed = ENCODINGS[encoding]
        bad = ~np.isin(values, allowed)
        if bad.any():
            i, j = (int(x) for x in np.argwhere(bad)[0])
            raise DataError(f"value {int(values[i, j])} is outside the {encoding!r} encoding "
                            f"(expected one of {sorted(set(allowed))})", path=path, line=lines[i],
                            field=names[j])
        labels = to_internal(values, encoding, path=path)
        used = encoding
    else:
        if not tokens.explicit:
            # Blanks are the unknowns; the negative is whichever of 0 and -1 the file uses.
            seen = {t for r in normed for t in r}
            if {"0", "-1"} <= seen:
                i, j = next((i, j) for i, r in enumerate(normed) for j, t in enumerate(r)
                            if t in ("0", "-1"))
                raise DataError(
                    "the file holds blank (unknown) cells and both 0 and -1: which of them is a "
                    "negative? name the tokens with negative= and unknown= (e.g. --negative 0 "
                    "--unknown -1 --unknown '')", path=path, line=lines[i], field=names[j])
            tokens = Tokens(negative=sorted(tokens.negative & seen) or None,
                            unknown=sorted(tokens.unknown))
        labels = np.empty((len(cells), len(names)), dtype=np.int8)
        for n, (ln, r) in enumerate(zip(lines, cells)):
            labels[n] = [tokens.value(v, path, ln, c) for v, c in zip(r, names)]
        used = tokens

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
    return items, list(names), labels, used


_BLANK = -128  # a cell holding an unknown token, while reading an integer encoding


def _int_matrix(path, cells, lines, names, unknown=()) -> np.ndarray:
    values = np.empty((len(cells), len(names)), dtype=np.int64)
    for n, (ln, r) in enumerate(zip(lines, cells)):
        values[n] = [_BLANK if norm_token(v) in unknown else _parse_value(v, path, ln, c)
                     for v, c in zip(r, names)]
    return values


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
    path, by_split = _find_file(root, split, ".npy", "label matrix (.npy)")
    if split is not None and not by_split:
        raise single_file_split_error(path, split)
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
