"""The library's own source as data: its import graph and a digest of the code a module runs.

:func:`import_graph` is read from the source (``ast``), not by importing: an edge ``a -> b`` for
every ``import`` / ``from ... import`` of a module ``b`` of the package inside ``a``, at any depth
(a function-level import counts too). :func:`code_digest` hashes a module's file and the files of
every package module it reaches, so that a change anywhere in the code a method runs changes it.
"""
from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "mlrpl"
ROOT = Path(__file__).resolve().parents[1]   # the mlrpl package


@functools.lru_cache(maxsize=1)
def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    out = {}
    for f in sorted(ROOT.rglob("*.py")):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:   # `from pkg import sub` imports the module pkg.sub
                sub = f"{mod}.{a.name}"
                found.add(sub if sub in known else mod)
    return {m for m in found if m in known and m != name}


@functools.lru_cache(maxsize=1)
def import_graph() -> dict[str, frozenset[str]]:
    """module -> the package modules it imports."""
    known = modules()
    return {n: frozenset(_imports(n, p, known)) for n, p in known.items()}


def cycles(graph: dict[str, frozenset[str]] | None = None) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    graph = import_graph() if graph is None else graph
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:   # recursion depth is bounded by the package's size
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def reachable(name: str) -> set[str]:
    """``name`` and every package module it imports, directly or not."""
    graph = import_graph()
    seen, todo = set(), [name]
    while todo:
        m = todo.pop()
        if m in seen or m not in graph:
            continue
        seen.add(m)
        todo.extend(graph[m])
    return seen


def code_digest(module: str) -> str:
    """sha256 (16 hex digits) of the code of ``module`` and every package module it reaches: of
    their syntax trees without docstrings, so that comments, docstrings and layout do not count
    (a change of documentation does not make a sweep train its runs again)."""
    h = hashlib.sha256()
    files = modules()
    for m in sorted(reachable(module)):
        h.update(m.encode() + b"\0" + _code_only(files[m]).encode() + b"\0")
    return h.hexdigest()[:16]


def _code_only(path: Path) -> str:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)
