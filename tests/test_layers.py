"""The package's layering, checked from its imports: no import circle, no module taking another module's
private name, and no import from a lower floor up to a higher one. The floors (lowest first):

0. base: errors, store, streams, the plug-in registry and the scores' vocabulary (no framework);
1. core: configuration, data, model folders, the embedded assets, reports, the backend interface, app;
2. stages: class pool, training, sampling, evaluation, loggers (they call a backend and the registry);
3. plug-ins: the backends' implementations, the evaluation suites, the pocket world;
4. the run: the pipeline and its worker processes (core and stages only: plug-ins come through the registry
   and the backend interface);
5. commands: the entrypoints;
6. tools: benchmarks and weight conversion (may use anything; nothing uses them).
"""

from __future__ import annotations

import ast
import re

import pytest

from helpers import REPO
from helpers.imports import Edge, cycles, edges_of, package_edges

FLOORS = [
    ("base", ["specs", "errors", "faults", "devices", "store", "streams", "registry", "scoring"]),
    ("core", ["config", "data", "models", "embedded", "report", "card", "backends", "app"]),
    ("stages", ["prior", "feed", "sample", "train", "evaluate", "loggers", "inject", "control", "validate"]),
    ("plug-ins", ["backends.torch", "backends.jittor", "metrics", "world"]),
    ("run", ["run", "shard"]),
    ("commands", ["main", "__main__", "compare", "export", "search", "study", "world.__main__"]),
    ("tools", ["tools"]),
]


def floor_of(module: str) -> int:
    """The floor of the longest declared prefix of ``module`` (``stylexfer.`` dropped)."""
    name = module.removeprefix("stylexfer").lstrip(".")
    if not name:  # the package's own __init__: its version, nothing else
        return 0
    best, floor = -1, None
    for k, (_, prefixes) in enumerate(FLOORS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > best:
                best, floor = len(p), k
    if floor is None:
        raise AssertionError(f"{module}: on no floor; add it to FLOORS in {__file__}")
    return floor


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return package_edges(REPO, "stylexfer")


def test_the_import_reader_sees_relative_function_level_and_module_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n\ndef f():\n    from .sub import c\n    from . import b\n")
    (pkg / "b.py").write_text("import pkg.a\nx = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from ..a import _private\n")
    got = {(e.source, e.target, e.names) for e in package_edges(tmp_path, "pkg")}
    assert got == {
        ("pkg.a", "pkg.b", ("x",)),
        ("pkg.a", "pkg.sub.c", ()),
        ("pkg.a", "pkg.b", ()),
        ("pkg.b", "pkg.a", ()),
        ("pkg.sub.c", "pkg.a", ("_private",)),
    }
    assert cycles(package_edges(tmp_path, "pkg")) == [["pkg.a", "pkg.b", "pkg.sub.c"]]


def test_no_import_circle(edges):
    assert cycles(edges) == []


def _private(names) -> list[str]:
    return [n for n in names if re.match(r"_[^_]", n)]


def test_no_module_imports_another_modules_private_names(edges):
    bad = [f"{e.source}:{e.line} takes {_private(e.names)} from {e.target}" for e in edges if _private(e.names)]
    assert bad == []


def test_the_tests_import_no_private_names():
    tests = [e for p in sorted((REPO / "tests").rglob("*.py")) for e in edges_of(REPO, p, "stylexfer")]
    bad = [f"{e.source}:{e.line} takes {_private(e.names)} from {e.target}" for e in tests if _private(e.names)]
    assert tests and bad == []


def test_no_import_runs_up_a_floor(edges):
    up = [
        f"{e.source} ({FLOORS[floor_of(e.source)][0]}) imports {e.target} ({FLOORS[floor_of(e.target)][0]})"
        for e in edges
        if floor_of(e.target) > floor_of(e.source)
    ]
    assert up == []


def test_the_run_reaches_plug_ins_only_through_the_registry_and_the_backend_interface(edges):
    plug = FLOORS.index(next(f for f in FLOORS if f[0] == "plug-ins"))
    run = FLOORS.index(next(f for f in FLOORS if f[0] == "run"))
    bad = [f"{e.source} imports {e.target}" for e in edges if floor_of(e.source) == run and floor_of(e.target) == plug]
    assert bad == []


def test_every_module_is_on_a_floor(edges):
    for p in sorted((REPO / "stylexfer").rglob("*.py")):
        floor_of(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"))


def test_below_the_stages_nothing_takes_the_run_config():
    """The backends, the data feed and the sampling stage get typed specs (:mod:`stylexfer.specs`) or explicit
    arguments: no function there has a ``cfg`` parameter, nor a name ``cfg`` at all (the whole config would be a way
    around the spec, and what a stage's key hashes would drift from what its work reads)."""
    files = sorted((REPO / "stylexfer" / "backends").rglob("*.py")) + [
        REPO / "stylexfer" / name for name in ("feed.py", "sample.py")
    ]
    bad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.arg) and node.arg == "cfg" or isinstance(node, ast.Name) and node.id == "cfg":
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert len(files) > 20 and bad == []
