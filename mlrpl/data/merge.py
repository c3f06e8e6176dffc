"""Annotators' answers back into a label file (``mlrpl data merge``), and label files written
with blank unknown cells.

``merge_labels(labels, answers, out)`` fills the unknown entries of a CSV label file (any of the
three layouts of :mod:`mlrpl.data.readers.tabular`: wide with blanks, long ``image,label,value``,
list ``image,labels[,unknown]``) with the answers of one or more CSV files (any layout too; the
ask file of ``mlrpl suggest`` once its ``value`` column is filled in) and writes the result, in
the layout of the label file, to a new file:

* an answer value is ``1`` (positive), ``0`` or ``-1`` (negative), or blank: still unknown, skipped;
  anything else is an error naming the file, the line and the field;
* an answer for an entry that is already known must agree with it; one that contradicts it is
  refused, naming both files and lines and the known value. Two answers for one entry that
  disagree are refused the same way; the same entry twice in one answers file is an error, as it
  is for the readers (which one would win?);
* an answer naming an image that the label file does not hold, or a class that it does not
  have, is an error naming the file, line and field. An image is matched by its path resolved from
  the answers file's folder (relative paths in a label file are relative to its folder), or else
  by its spelling in the label file;
* a list-layout answers file answers every class of its rows (a class not listed is absent), as
  the list layout reads; a wide one answers its non-blank cells, a long one its rows;
* the output keeps the label file's rows, columns and tokens: only the cells (wide), rows (long:
  filled rows replaced, new ones appended) or names (list) of the filled entries change. Relative
  image paths are rewritten relative to the output's folder when it is another folder. The text is
  read back with the same reader options before it is renamed into place, so the merged file
  always reads as the labels plus the answers. It never replaces an input, and an existing output
  is replaced only with ``force`` (moved aside, never deleted).
"""
from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlrpl.data.encoding import ENCODINGS, NEG, POS, UNK
from mlrpl.data.labelset import LabelSet
from mlrpl.data.readers.tabular import csv_rows as _csv_rows
from mlrpl.data.readers.tabular import (_LIST_HEADERS, _LONG_HEADERS, LONG_EXTRA_COLUMNS,
                                        Tokens, image_key, norm_token, read_csv)
from mlrpl.errors import DataError, MlrplError, require_file

__all__ = ["Answer", "apply_answers", "merge_labels", "read_answers", "write_labels_csv"]

# What an annotator may write in an answer's value (numbers compare by value: 1.0 is 1).
_ANSWER_POS, _ANSWER_NEG, _ANSWER_UNK = {"1"}, {"0", "-1"}, {""}
_NAME = {POS: "positive (1)", NEG: "negative (0)", UNK: "unknown"}
_IGNORED_ANSWER_COLUMNS = {"split", *LONG_EXTRA_COLUMNS}


@dataclass(frozen=True)
class Answer:
    """One answered entry: the item (row of the label file) and class index, the value (+1/-1)
    and where it was read (file, line, field)."""
    item: int
    cls: int
    value: int
    path: str
    line: int
    field: str

    @property
    def where(self) -> str:
        return f"{self.path}, line {self.line}"


# ---- reading ----------------------------------------------------------------------------------
def _layout(cols: list[str]) -> str:
    lowered = [c.strip().lower() for c in cols]
    if lowered[:3] in _LONG_HEADERS:
        return "long"
    kept = [c for c in lowered if c != "split"]
    if kept in _LIST_HEADERS:
        return "list"
    return "wide"


class _Images:
    """The label file's images, found by resolved path or by spelling."""

    def __init__(self, ls: LabelSet):
        self.ls = ls
        self.by_key = {image_key(ls.root or ".", item): n for n, item in enumerate(ls.items)}
        self.by_spelling = {item: n for n, item in enumerate(ls.items)}

    def find(self, image: str, folder: str) -> int | None:
        n = self.by_key.get(image_key(folder, image))
        return self.by_spelling.get(image) if n is None else n


def _answer_value(cell: str, path, ln: int, field: str) -> int:
    t = norm_token(cell)
    if t in _ANSWER_POS:
        return POS
    if t in _ANSWER_NEG:
        return NEG
    if t in _ANSWER_UNK:
        return UNK
    raise DataError(f"value {cell.strip()!r} is not an answer; expected 1 (present), 0 or -1 "
                    f"(absent), or a blank cell (still unknown)", path=path, line=ln, field=field)


def _class_index(name: str, classes: dict, labels_path, path, ln: int, field: str) -> int:
    if name not in classes:
        import difflib
        close = difflib.get_close_matches(name, list(classes), n=1)
        raise DataError(f"class {name!r} is not a class of {labels_path} ({len(classes)} classes)"
                        + (f"; did you mean {close[0]!r}?" if close else ""),
                        path=path, line=ln, field=field)
    return classes[name]


def read_answers(path, ls: LabelSet, labels_path=None) -> tuple[list[Answer], int]:
    """The answers of one CSV file against the label set `ls`: (answers with a value, number of
    blank answers). Errors name the file, line and field (see the module docstring)."""
    path = require_file(path, "answers file")
    labels_path = labels_path or ls.source
    cols, header_line, rows = _csv_rows(path)
    cols = [c.strip() for c in cols]
    if len(cols) < 2 or cols[0].lower() != "image":
        raise DataError(f"header {','.join(cols)!r}: expected 'image,label,value' (long layout, "
                        f"as mlrpl suggest writes), 'image,<class 1>,...' (wide) or "
                        f"'image,labels[,unknown]' (list)", path=path, line=header_line)
    images = _Images(ls)
    classes = {c: j for j, c in enumerate(ls.classes)}
    folder = str(path.parent)
    layout = _layout(cols)
    lowered = [c.lower() for c in cols]
    out: list[Answer] = []
    blank = 0
    seen: dict[tuple[int, int], int] = {}

    def item_of(image: str, ln: int) -> int:
        if not image:
            raise DataError("empty image name", path=path, line=ln, field="image")
        n = images.find(image, folder)
        if n is None:
            raise DataError(f"image {image!r} is not in {labels_path} ({ls.num_items} images; "
                            f"a relative path is read from the answers file's folder {folder})",
                            path=path, line=ln, field="image")
        return n

    def add(n: int, j: int, value: int, ln: int, field: str):
        nonlocal blank
        if (n, j) in seen:
            raise DataError(f"image {ls.items[n]!r} with class {ls.classes[j]!r} is answered "
                            f"twice (lines {seen[n, j]} and {ln}); give each entry one answer",
                            path=path, line=ln, field=field)
        seen[n, j] = ln
        if value == UNK:
            blank += 1
        else:
            out.append(Answer(n, j, value, str(path), ln, field))

    if layout == "long":
        extra = [c for c in lowered[3:] if c not in _IGNORED_ANSWER_COLUMNS]
        if extra:
            raise DataError(f"column {cols[lowered.index(extra[0])]!r} is not one an answers "
                            f"file may have beside 'image,label,value' (those ignored: "
                            f"{sorted(_IGNORED_ANSWER_COLUMNS)})", path=path, line=header_line)
        for ln, row in rows:
            _width(path, ln, row, len(cols), cols)
            n = item_of(row[0].strip(), ln)
            name = row[1].strip()
            if not name:
                raise DataError("empty class name", path=path, line=ln, field=cols[1])
            j = _class_index(name, classes, labels_path, path, ln, cols[1])
            add(n, j, _answer_value(row[2], path, ln, "value"), ln, "value")
    elif layout == "list":
        j_lab = lowered.index("labels")
        j_unk = lowered.index("unknown") if "unknown" in lowered else None
        for ln, row in rows:
            _width(path, ln, row, len(cols), cols)
            n = item_of(row[0].strip(), ln)
            value = np.full(len(classes), NEG, dtype=np.int8)   # not listed: absent
            for j_col, v in ((j_lab, POS), (j_unk, UNK)):
                if j_col is None:
                    continue
                for name in (x.strip() for x in row[j_col].split(";")):
                    if name:
                        value[_class_index(name, classes, labels_path, path, ln,
                                           cols[j_col])] = v
            for j in range(len(classes)):
                add(n, j, int(value[j]), ln, "labels")
    else:
        named = [(k, c) for k, c in enumerate(cols) if k > 0 and c.lower() != "split"]
        idx = []
        for k, c in named:
            if not c:
                raise DataError(f"empty class name in column {k + 1}", path=path,
                                line=header_line)
            idx.append((k, _class_index(c, classes, labels_path, path, header_line, c)))
        dup = [c for c, m in Counter(c for _, c in named).items() if m > 1]
        if dup:
            raise DataError(f"class {dup[0]!r} is named twice in the header", path=path,
                            line=header_line)
        for ln, row in rows:
            _width(path, ln, row, len(cols), cols)
            n = item_of(row[0].strip(), ln)
            for k, j in idx:
                add(n, j, _answer_value(row[k], path, ln, cols[k]), ln, cols[k])
    return out, blank


def _width(path, ln, row, width, cols):
    if len(row) != width:
        header = ",".join(cols) if len(cols) <= 6 else ",".join(cols[:5]) + ",..."
        raise DataError(f"{len(row)} columns, expected {width} (as the header {header!r})",
                        path=path, line=ln)


# ---- applying ---------------------------------------------------------------------------------
def _label_lines(path: Path, ls: LabelSet) -> dict:
    """Where each known value of the label file was read: (item, class) -> line (long layout)
    or item -> line (wide and list)."""
    cols, _, rows = _csv_rows(path)
    if ls.meta.get("layout") == "long":
        images = _Images(ls)
        classes = {c: j for j, c in enumerate(ls.classes)}
        where = {}
        for ln, row in rows:
            n = images.find(row[0].strip(), str(path.parent))
            j = classes.get(row[1].strip()) if len(row) > 1 else None
            if n is not None and j is not None:
                where[n, j] = ln
        return where
    return {n: ln for n, (ln, _) in enumerate(rows)}


def apply_answers(ls: LabelSet, answers: list[Answer], labels_path=None) -> tuple[np.ndarray, dict]:
    """(the labels with the answers filled in, counts). An answer that contradicts a known label,
    or another answer, is a DataError naming both places."""
    labels_path = Path(labels_path or ls.source.split(":", 1)[-1])
    new = ls.labels.copy()
    by: dict[tuple[int, int], Answer] = {}
    lines = None
    agreed = 0
    for a in answers:
        known = int(ls.labels[a.item, a.cls])
        if known != UNK:
            if known == a.value:
                agreed += 1
                continue
            if lines is None:
                lines = _label_lines(labels_path, ls)
            ln = lines.get((a.item, a.cls), lines.get(a.item))
            raise DataError(f"the answer {_NAME[a.value]} for image {ls.items[a.item]!r}, class "
                            f"{ls.classes[a.cls]!r} contradicts the known label in "
                            f"{labels_path}{f', line {ln}' if ln else ''}: {_NAME[known]}; "
                            f"correct the answer or the label file", path=a.path, line=a.line,
                            field=a.field)
        first = by.get((a.item, a.cls))
        if first is not None and first.value != a.value:
            raise DataError(f"the answer {_NAME[a.value]} for image {ls.items[a.item]!r}, class "
                            f"{ls.classes[a.cls]!r} contradicts the answer {_NAME[first.value]} "
                            f"in {first.where}; give the entry one answer", path=a.path,
                            line=a.line, field=a.field)
        by[a.item, a.cls] = a
        new[a.item, a.cls] = a.value
    filled = (ls.labels == UNK) & (new != UNK)
    counts = {"filled": int(filled.sum()), "filled_positive": int((filled & (new == POS)).sum()),
              "filled_negative": int((filled & (new == NEG)).sum()),
              "agreed_with_known": agreed,
              "unknown_before": int((ls.labels == UNK).sum()),
              "unknown_after": int((new == UNK).sum()), "entries": int(new.size)}
    return new, counts


# ---- writing ----------------------------------------------------------------------------------
def _spelling(cell: str, src_dir: str, out_dir: str) -> str:
    """An image cell of a file in `src_dir`, as a file in `out_dir` must spell it: relative
    paths that name a file are re-based; absolute paths and bare ids are kept."""
    image = cell.strip()
    if not image or os.path.isabs(image) or os.path.realpath(src_dir) == os.path.realpath(out_dir):
        return cell
    full = os.path.join(src_dir, image)
    if not os.path.exists(full):
        return cell
    return os.path.relpath(full, out_dir)


def _write_tokens(ls: LabelSet, cells: list[str], options: dict) -> tuple[str, str]:
    """The positive and negative tokens a filled cell gets: the file's encoding, else its own
    tokens (the negative the file uses most, else 0)."""
    enc = ls.meta.get("encoding")
    if enc:
        pos, neg, _ = ENCODINGS[enc]
        return str(pos), str(neg)
    tok = ls.meta.get("tokens") or Tokens(options.get("positive"), options.get("negative"),
                                          options.get("unknown")).as_options()
    positive, negative = list(tok["positive"]), list(tok["negative"])
    pos = "1" if "1" in positive else (positive[0] if positive else "1")
    used = Counter(c.strip() for c in cells if c.strip() and norm_token(c) in set(negative))
    if used:
        return pos, used.most_common(1)[0][0]
    neg = "0" if "0" in negative else "-1" if "-1" in negative else (negative[0] if negative
                                                                      else "0")
    return pos, neg


def _render(path: Path, ls: LabelSet, new: np.ndarray, out: Path, options: dict) -> str:
    cols, _, rows = _csv_rows(path)
    cols_s = [c.strip() for c in cols]
    lowered = [c.lower() for c in cols_s]
    src, dst = str(path.parent), str(out.parent if str(out.parent) else Path("."))
    layout = ls.meta.get("layout")
    filled = (ls.labels == UNK) & (new != UNK)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)

    def image_cell(row):
        return [_spelling(row[0], src, dst), *row[1:]]

    if layout == "dense":
        col = {c: k for k, c in enumerate(cols_s) if k > 0 and c.lower() != "split"}
        cells = [row[k] for _, row in rows for k in col.values()]
        pos, neg = _write_tokens(ls, cells, options)
        for n, (_, row) in enumerate(rows):
            row = image_cell(row)
            for j in np.flatnonzero(filled[n]):
                row[col[ls.classes[j]]] = pos if new[n, j] == POS else neg
            w.writerow(row)
    elif layout == "long":
        j_label, j_value = 1, 2
        pos, neg = _write_tokens(ls, [row[j_value] for _, row in rows if len(row) > 2], options)
        images = _Images(ls)
        classes = {c: j for j, c in enumerate(ls.classes)}
        j_split = lowered.index("split") if "split" in lowered else None
        split_of: dict[int, str] = {}
        done = set()
        for _, row in rows:
            n = images.find(row[0].strip(), src)
            j = classes.get(row[j_label].strip())
            if j_split is not None and n is not None:
                split_of.setdefault(n, row[j_split])
            if n is not None and j is not None and filled[n, j]:
                row = list(row)
                row[j_value] = pos if new[n, j] == POS else neg
                done.add((n, j))
            w.writerow(image_cell(row))
        for n, j in zip(*np.nonzero(filled)):
            if (n, j) in done:
                continue
            row = [""] * len(cols)
            row[0] = _spelling(ls.items[n], src, dst)
            row[j_label], row[j_value] = ls.classes[j], pos if new[n, j] == POS else neg
            if j_split is not None:
                row[j_split] = split_of.get(n, "")
            w.writerow(row)
    elif layout == "list":
        j_lab = lowered.index("labels")
        j_unk = lowered.index("unknown") if "unknown" in lowered else None
        negatives = filled & (new == NEG)
        if ls.meta.get("absent") == "unknown" and negatives.any():
            n, j = (int(x) for x in np.argwhere(negatives)[0])
            raise DataError(f"a list-layout file read with absent=unknown (positives only) holds "
                            f"no negatives, and {int(negatives.sum())} answers are negatives "
                            f"(the first: image {ls.items[n]!r}, class {ls.classes[j]!r}); "
                            f"merge into a wide or long copy of it (mlrpl data convert), or "
                            f"give only positive answers", path=path)
        for n, (_, row) in enumerate(rows):
            row = image_cell(row)
            add = [ls.classes[j] for j in np.flatnonzero(filled[n] & (new[n] == POS))]
            if add:
                have = [x for x in (s.strip() for s in row[j_lab].split(";")) if x]
                row[j_lab] = ";".join(have + add)
            if j_unk is not None and filled[n].any():
                answered = {ls.classes[j] for j in np.flatnonzero(filled[n])}
                row[j_unk] = ";".join(x for x in (s.strip() for s in row[j_unk].split(";"))
                                      if x and x not in answered)
            w.writerow(row)
    else:  # pragma: no cover - read_csv names every layout it reads
        raise MlrplError(f"{path}: layout {layout!r} cannot be merged into")
    return buf.getvalue()


def merge_labels(labels, answers, out, force: bool = False, **reader_options) -> dict:
    """Fill the unknown entries of the CSV label file `labels` with `answers` (a path or a list of
    paths) and write the result to `out` in the label file's layout (see the module docstring).

    `reader_options` read the label file as training does (``encoding``, ``positive``,
    ``negative``, ``unknown``, ``absent``, ``classes``). Returns the counts (``filled``,
    ``filled_positive``, ``filled_negative``, ``agreed_with_known``, ``blank_answers``,
    ``unknown_before``, ``unknown_after``, ``entries``) and ``out``.
    """
    from mlrpl.utils.files import atomic_write, check_output, temp_name
    labels = require_file(labels, "label file")
    answers = [answers] if isinstance(answers, (str, Path)) else list(answers)
    if not answers:
        raise MlrplError("no answers file given")
    out = Path(out)
    for k, src in enumerate((labels, *answers)):
        if os.path.realpath(src) == os.path.realpath(out) or (
                out.exists() and Path(src).exists() and os.path.samefile(src, out)):
            what = "the label file" if k == 0 else "an answers file"
            raise DataError(f"--out is {what} of the merge; its inputs are never overwritten: "
                            f"give a new file name, e.g. "
                            f"{Path(labels).with_name(Path(labels).stem + '.v2.csv')}", path=out)
    check_output(out, force, "merged label file")
    ls = read_csv(labels, **reader_options)
    every, blank = [], 0
    for a in answers:
        got, b = read_answers(a, ls, labels)
        every += got
        blank += b
    new, counts = apply_answers(ls, every, labels)
    text = _render(labels, ls, new, out, reader_options)

    def check():  # the written text reads back as the labels plus the answers
        back = read_csv(temp_name(out), **reader_options)
        # rows keep their order (a long file's new rows follow its images' first rows)
        if back.classes != ls.classes or back.num_items != ls.num_items or \
                not np.array_equal(back.labels, new):
            raise MlrplError(f"{out}: the merged file does not read back as the labels plus the "
                             f"answers (a bug: please report it with the two files); nothing "
                             f"was written")

    atomic_write(out, lambda fh: fh.write(text), mode="w", keep_old=force, before_rename=check,
                 newline="", encoding="utf-8")
    counts.update(blank_answers=blank, out=str(out), answers_files=len(answers),
                  layout={"dense": "wide"}.get(ls.meta.get("layout"), ls.meta.get("layout")))
    return counts


def write_labels_csv(ls: LabelSet, out, force: bool = False) -> Path:
    """Write `ls` as a wide CSV with blank unknown cells (1 positive, 0 negative), the images as
    paths relative to the file's folder (absolute ones kept): a label file that
    ``read_dataset("csv", out)`` and training read as `ls`'s labels."""
    from mlrpl.utils.files import atomic_write, check_output
    out = check_output(out, force, "label file")
    dst = str(out.parent if str(out.parent) else Path("."))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", *ls.classes])
    token = {POS: "1", NEG: "0", UNK: ""}
    for item, p, row in zip(ls.items, ls.paths(), ls.labels):
        image = os.path.relpath(os.path.abspath(p), dst) if os.path.exists(p) else item
        w.writerow([image, *(token[int(v)] for v in row)])
    text = buf.getvalue()
    return atomic_write(out, lambda fh: fh.write(text), mode="w", keep_old=force, newline="",
                        encoding="utf-8")
