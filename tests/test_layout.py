"""The code's shape: no import circles in ``kvgraph/`` and ``models/``, no module importing another
module's ``_private`` names, no function over ~80 lines without the reason in its docstring.

The import graph is built from the source (every ``import`` a module executes, those inside
functions included; ``if TYPE_CHECKING:`` blocks excluded, they never run) with networkx.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kvgraph", "models")
#: a function longer than this says why in its docstring, with the words "Long because"
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _executed(tree: ast.AST):
    """Every node of ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                todo.extend(child.orelse)
            else:
                todo.append(child)


def _source_of(node: ast.ImportFrom, here: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = here.split(".") if is_package else here.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def scan(mods: dict[str, Path]):
    """``(graph, private)``: the import graph between ``mods`` and every cross-module use of a
    private name as ``(module, line, "source._name")``."""
    graph = nx.DiGraph()
    graph.add_nodes_from(mods)
    private = []
    for here, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        aliases: dict[str, str] = {}  # local name -> an internal module it is bound to
        nodes = list(_executed(tree))
        for node in nodes:
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in mods:
                        graph.add_edge(here, a.name)
                        if a.asname:
                            aliases[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom):
                src = _source_of(node, here, path.name == "__init__.py")
                for a in node.names:
                    target = f"{src}.{a.name}"
                    if target in mods:  # a module imported from its package
                        graph.add_edge(here, target)
                        aliases[a.asname or a.name] = target
                    elif src in mods:
                        graph.add_edge(here, src)
                        if _is_private(a.name) and src != here:
                            private.append((here, node.lineno, f"{src}.{a.name}"))
        for node in nodes:
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and _is_private(node.attr)
                and aliases[node.value.id] != here
            ):
                private.append((here, node.lineno, f"{aliases[node.value.id]}.{node.attr}"))
    graph.remove_edges_from(nx.selfloop_edges(graph))
    return graph, private


def long_functions(mods: dict[str, Path]) -> list[str]:
    out = []
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and "Long because" not in (ast.get_docstring(node) or ""):
                    out.append(f"{name}.{node.name} (line {node.lineno}): {lines} lines")
    return out


@pytest.fixture(scope="module")
def scanned():
    return scan(modules())


def test_the_scan_sees_every_package_module():
    mods = modules()
    assert {
        "kvgraph",
        "kvgraph.ir",
        "kvgraph.max.runtime",
        "models.whisper",
        "models.whisper.engine.batched",
    } <= set(mods)


def test_no_import_circles(scanned):
    graph, _ = scanned
    cycles = [" -> ".join([*c, c[0]]) for c in nx.simple_cycles(graph)]
    assert not cycles, "import circles:\n  " + "\n  ".join(sorted(cycles))


def test_no_private_names_across_modules(scanned):
    _, private = scanned
    found = [f"{m}:{line} uses {name}" for m, line, name in private]
    assert not found, "private names imported across modules:\n  " + "\n  ".join(found)


def test_long_functions_say_why():
    found = long_functions(modules())
    assert not found, (
        f"functions over {MAX_FUNCTION_LINES} lines with no 'Long because' in their docstring:\n  "
        + "\n  ".join(found)
    )


# ------------------------------------------------------------------ the checks can fail


def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return {module_name_at(tmp_path, p): p for p in sorted(tmp_path.rglob("*.py"))}


def module_name_at(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_a_circle_through_a_lazy_import_is_found(tmp_path):
    mods = _tree(
        tmp_path,
        {
            "kvgraph/__init__.py": "",
            "kvgraph/a.py": "from kvgraph.b import thing\n",
            "kvgraph/b.py": "def thing():\n    from . import a\n",
            "kvgraph/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from kvgraph import d\n",
            "kvgraph/d.py": "import kvgraph.c\n",
        },
    )
    graph, _ = scan(mods)
    assert [sorted(c) for c in nx.simple_cycles(graph)] == [["kvgraph.a", "kvgraph.b"]]


def test_private_names_across_modules_are_found(tmp_path):
    mods = _tree(
        tmp_path,
        {
            "models/__init__.py": "",
            "models/a.py": "_x = 1\ndef _f():\n    return _x\n",
            "models/b.py": "from models.a import _x\n",
            "models/c.py": "import models.a as a\nprint(a._f, a.__name__)\n",
            "models/d.py": "from models import a\nfrom models.a import _x as y  # noqa\n",
        },
    )
    _, private = scan(mods)
    assert sorted((m, n) for m, _, n in private) == [
        ("models.b", "models.a._x"),
        ("models.c", "models.a._f"),
        ("models.d", "models.a._x"),
    ]


def test_a_long_function_needs_its_reason(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    mods = _tree(
        tmp_path,
        {
            "kvgraph/__init__.py": "",
            "kvgraph/a.py": f"def plain():\n{body}\n\ndef said():\n    '''Long because: a table.'''\n{body}",
        },
    )
    assert [s.split(" ")[0] for s in long_functions(mods)] == ["kvgraph.a.plain"]


# ------------------------------------------------------------------ the old paths, one release

OLD_NAMES = {
    "models.serve": (
        "main",
        "serve",
        "create_app",
        "make_engine",
        "SequentialEngine",
        "ServedModel",
        "EngineClosed",
    ),
    "models.transcribe_cli": (
        "main",
        "build_parser",
        "render",
        "write_outputs",
        "USER_ERRORS",
        "OUTPUT_FORMATS",
    ),
    "models.whisper_decode": ("transcribe", "WhisperAdapter", "DecodeTimings", "BackendInference"),
    "models.batching": ("BatchedTranscriber", "transcribe_many", "Scheduler", "StreamBackend"),
    "models.audio": ("load_audio", "decode_audio", "AudioError"),
    "models.whisper_weights": ("load_checkpoint",),
    "models.plugin": ("register",),
    "models.prepare_cli": ("main",),
}

PROBE = r"""
import importlib, json, sys, warnings
import models.compat
names = json.loads(sys.argv[1])
out = {}
for old in models.compat.MOVED:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    got = {}
    for name in names.get(old, ()):
        value = getattr(module, name)
        home = next(h for h in models.compat.MOVED[old] if hasattr(importlib.import_module(h), name))
        got[name] = value is getattr(importlib.import_module(home), name)
    out[old] = dict(warned=[str(w.message) for w in caught if w.category is DeprecationWarning], names=got)
print(json.dumps(out))
"""


def test_the_old_flat_paths_still_import_with_a_warning():
    import json
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(OLD_NAMES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    from models.compat import MOVED

    for old in MOVED:
        assert any(old in m and "moved to" in m for m in out[old]["warned"]), (old, out[old])
        assert all(out[old]["names"].values()), (old, out[old]["names"])
    for old, names in OLD_NAMES.items():
        assert set(out[old]["names"]) == set(names)
