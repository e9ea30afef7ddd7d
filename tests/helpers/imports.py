"""The package's own imports as a graph, read from the source (every ``import`` statement, also those inside
functions), for the layering test."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Edge:
    source: str  # importing module, dotted
    target: str  # imported module, dotted
    names: tuple[str, ...]  # the names taken from it (``from x import a, b``), () for ``import x``
    line: int


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_module(root: Path, dotted: str) -> bool:
    p = root.joinpath(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def edges_of(root: Path, path: Path, package: str) -> list[Edge]:
    """The imports of ``package``'s modules that one file makes (``root``: the folder holding the package)."""
    me = module_name(root, path)
    here = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != package:
                continue
            plain = []
            for a in node.names:  # ``from pkg import module`` imports a module, not a name
                if is_module(root, f"{target}.{a.name}"):
                    out.append(Edge(me, f"{target}.{a.name}", (), node.lineno))
                else:
                    plain.append(a.name)
            if plain:
                out.append(Edge(me, target, tuple(plain), node.lineno))
        elif isinstance(node, ast.Import):
            out += [Edge(me, a.name, (), node.lineno) for a in node.names if a.name.split(".")[0] == package]
    return out


def package_edges(root: Path, package: str) -> list[Edge]:
    return [e for p in sorted((root / package).rglob("*.py")) for e in edges_of(root, p, package)]


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if e.source != e.target and not e.source.startswith(e.target + "."):  # a package's own __init__ is no circle
            graph.setdefault(e.source, set()).add(e.target)
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out
