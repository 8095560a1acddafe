"""The house stays as built: imports in harness/ point only down its layers (docs/developing.md).

Read with `ast`, so nothing is imported: every `import` and `from ... import` of every module,
at the top or inside a function, is checked against the layer map below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. A module may import from a lower layer, or from its own group; never from a
# higher layer, and never from another group of its own layer.
LAYERS: list[dict[str, tuple[str, ...]]] = [
    {"errors": ("harness", "harness.errors", "harness.modes")},
    {
        "store": ("harness.store", "harness.manifest", "harness.provenance", "harness.lease", "harness.compact"),
        "data": ("harness.data",),
        "eval": ("harness.eval",),
    },
    {"spec": ("harness.spec",)},
    {"engine": ("harness.engine",)},
    {"executors": ("harness.executors",)},
    {"status": ("harness.status",)},
    {
        "combine": ("harness.combine",),
        "profile": ("harness.profile",),
        "report": ("harness.report",),
        "human_parsing": ("harness.human_parsing",),
        "cue_tools": ("harness.cue_tools",),
    },
    {"runner": ("harness.runner",)},
    {"cli": ("harness.cli",)},
]
# Beyond the layers: reports read only the store.
ONLY = {"report": {"errors", "store", "report"}}
# Where a function-local import of our own modules is fine: the command line, for start-up time.
LOCAL_IMPORTS_ALLOWED = ("harness.cli",)


def _group(module: str) -> tuple[int, str] | None:
    """(layer, group) of a module name; the longest matching prefix wins ("harness" is layer 0)."""
    best = None
    for layer, groups in enumerate(LAYERS):
        for group, prefixes in groups.items():
            for prefix in prefixes:
                if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[2]):
                    best = (layer, group, len(prefix))
    return None if best is None else best[:2]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str], int, bool]]:
    """(module imported, names taken from it, line, inside a function) for each import of a file."""
    tree = ast.parse(path.read_text())
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, [], child.lineno, local) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                found.append((base, [a.name for a in child.names], child.lineno, local))
            visit(child, inner)

    visit(tree, False)
    return found


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _problems() -> list[str]:
    problems = []
    for path in _sources("harness"):
        module = _module_name(path)
        mine = _group(module)
        assert mine is not None, f"{module} is in no layer of tests/test_layers.py: add it to LAYERS"
        for imported, names, line, local in _imports(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            # `from harness import data` imports the module harness.data; `from x import f`, x itself.
            targets = [f"{imported}.{n}" if _is_module(f"{imported}.{n}") else imported for n in names] or [imported]
            for target in targets:
                theirs = _group(target) if target.startswith("harness") else None
                if theirs is None or target == module:
                    continue
                if theirs[0] > mine[0]:
                    problems.append(
                        f"{where}: {module} (layer {mine[0]}) imports {target} from a higher layer ({theirs[0]})"
                    )
                elif theirs[0] == mine[0] and theirs[1] != mine[1]:
                    problems.append(f"{where}: {module} imports {target}, a sibling of its own layer ({theirs[1]})")
                if mine[1] in ONLY and theirs[1] not in ONLY[mine[1]]:
                    problems.append(f"{where}: {module} may import only {sorted(ONLY[mine[1]])}, not {target}")
                if local and not module.startswith(LOCAL_IMPORTS_ALLOWED):
                    problems.append(f"{where}: {module} imports {target} inside a function; import it at the top")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and (imported.startswith(("harness", "methods"))) and imported != module:
                problems.append(f"{where}: {module} imports private name(s) {private} of {imported}")
    for path in _sources("methods"):
        for imported, _, line, _ in _imports(path):
            if imported == "harness" or imported.startswith("harness."):
                problems.append(
                    f"{path.relative_to(ROOT)}:{line}: methods/ imports {imported}; models import nothing of harness"
                )
    return problems


def test_imports_point_down_the_layers():
    problems = _problems()
    assert not problems, "imports that break the layer rules (docs/developing.md):\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from harness.runner import run_grid\n", "from a higher layer"),
        ("from harness.eval import metrics\n", "a sibling of its own layer"),
        ("from harness.store import _private\n", "private name"),
        ("def f():\n    from harness.spec import load_spec\n", "inside a function"),
    ],
)
def test_the_layer_check_catches_each_kind_of_problem(tmp_path, monkeypatch, source, expected):
    """The checker itself fails on an upward, a sideways, a private and a function-local import."""
    planted = ROOT / "harness" / "data" / "_layer_probe.py"
    planted.write_text(source)
    try:
        problems = _problems()
    finally:
        planted.unlink()
    assert any("_layer_probe" in p and expected in p for p in problems), problems
