"""The repository's text points only at what it contains: no citation of documents that are not in
it (a private specification, issue trackers, work logs), and every reference to the method
documentation (docs/methods/<page>.md, its headings and its numbered differences D1, D2, ...)
resolves."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
METHODS = REPO / "docs" / "methods"
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini", ".rst", ".json"}

# A citation of a document the repository does not hold: the old private specification
# ("SPEC §8", "SPEC.md"), its design notes ("DESIGN"), issue numbers ("issue 15") and work-log
# stops ("stop 17"). Whole words only: code names such as SWEEP_FILE or CLASS_SHAPES are fine.
FORBIDDEN = re.compile(r"\bSPEC\b|\bDESIGN\b|[Ii]ssue [0-9]+|\bstop [0-9]+")
# Section signs cite numbered sections, which only a paper has; outside docs/methods/ (where a
# page may cite a paper's section) a bare "§" is a leftover of the old specification.
SECTION_SIGN = re.compile(r"§")


def _text_files():
    """Every text file of mlrpl/, docs/, configs/, README.md and pyproject.toml, once each
    (configs/ is a link to mlrpl/configs/)."""
    seen, out = set(), []
    roots = [REPO / "mlrpl", REPO / "docs", REPO / "configs", REPO / "README.md",
             REPO / "pyproject.toml"]
    for root in roots:
        if not root.exists():
            continue
        files = [root] if root.is_file() else sorted(root.rglob("*"))
        for f in files:
            if (not f.is_file() or f.suffix not in TEXT_SUFFIXES
                    or "__pycache__" in f.parts):
                continue
            real = f.resolve()
            if real not in seen:
                seen.add(real)
                out.append(real)
    return out


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _lines(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return
    yield from enumerate(text.splitlines(), 1)


def test_no_reference_to_documents_outside_the_repository():
    hits = []
    for f in _text_files():
        in_methods = METHODS in f.parents
        for n, line in _lines(f):
            if FORBIDDEN.search(line) or (not in_methods and SECTION_SIGN.search(line)):
                hits.append(f"{_rel(f)}:{n}: {line.strip()}")
    assert not hits, "references to documents the repository does not hold:\n" + "\n".join(hits)


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _page_index(page: Path):
    """(anchors, D-numbers) of a Markdown page."""
    text = page.read_text(encoding="utf-8")
    anchors = {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}
    numbers = {int(m.group(1)) for m in re.finditer(r"^- \*\*D(\d+)\.", text, re.M)}
    return anchors, numbers


# docs/methods/<page>.md[#anchor][ D1[, D2 | -D3 ...]]
METHOD_REF = re.compile(
    r"docs/methods/(?P<page>[\w.-]+?\.md)(?:#(?P<anchor>[\w-]+))?"
    r"(?P<numbers>(?:,?\s?D\d+(?:\s?[-–]\s?D?\d+)?)+)?")


def _numbers(spec: str) -> list[int]:
    out = []
    for m in re.finditer(r"D(\d+)(?:\s?[-–]\s?D?(\d+))?", spec):
        a, b = int(m.group(1)), m.group(2)
        out.extend(range(a, int(b) + 1) if b else [a])
    return out


def test_the_method_pages_hold_what_is_cited():
    assert (METHODS / "README.md").is_file()
    indexes, problems, refs = {}, [], 0
    for f in _text_files():
        for n, line in _lines(f):
            for m in METHOD_REF.finditer(line):
                refs += 1
                where = f"{_rel(f)}:{n}: {m.group(0).strip()}"
                page = METHODS / m.group("page")
                if not page.is_file():
                    problems.append(f"{where}: no such page")
                    continue
                anchors, numbers = indexes.setdefault(page, _page_index(page))
                if m.group("anchor") and m.group("anchor") not in anchors:
                    problems.append(f"{where}: no heading #{m.group('anchor')} on the page")
                for d in _numbers(m.group("numbers") or ""):
                    if d not in numbers:
                        problems.append(f"{where}: the page has no D{d}")
    assert refs > 0
    assert not problems, "\n".join(problems)


MD_LINK = re.compile(r"\]\((?!https?:|mailto:)(?P<target>[^)#\s]*)(?:#(?P<anchor>[^)\s]+))?\)")


@pytest.mark.parametrize("doc", sorted(_rel(p) for p in [REPO / "README.md",
                                                          *(REPO / "docs").rglob("*.md")]))
def test_relative_markdown_links_resolve(doc):
    path = REPO / doc
    problems = []
    for n, line in _lines(path):
        for m in MD_LINK.finditer(line):
            target = path if not m.group("target") else (path.parent / m.group("target"))
            if not target.exists():
                problems.append(f"{doc}:{n}: {m.group(0)}: no such file")
            elif m.group("anchor") and target.suffix == ".md" and target.is_file():
                if m.group("anchor") not in _page_index(target)[0]:
                    problems.append(f"{doc}:{n}: {m.group(0)}: no such heading")
    assert not problems, "\n".join(problems)
