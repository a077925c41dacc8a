"""The house's layers (README, Layout): entry points → analysis → run → learners → models → data → shared.
No module imports one above it. Imports are read from the source with ast, so a lazy import inside a
function counts as much as one at the top; a `_target_` in a YAML is no import, which is how a hook in
the analysis attaches to the runner without the runner naming it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Top down. A module belongs to the layer of the longest prefix naming it or a package above it;
# "=name" names that one module only (the package `kml` itself is shared, its subpackages are not).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entry point", ("launch", "kml.bench", "kml.report", "kml.study")),
    ("analysis", ("kml.analysis",)),
    ("run", ("kml.run",)),
    ("learners", ("kml.learners", "kml.mapper")),  # the meta-mapper: its network, its MAML and its tasks
    ("models", ("kml.models",)),
    ("data", ("kml.data",)),
    ("shared", ("=kml", "=kml.config", "=kml.registry", "=kml.errors", "=kml.inner_loop")),
]


def layer_of(module: str) -> int | None:
    """The rank (0 = top) of the layer `module` belongs to, or None when no layer names it."""
    best, rank = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            exact = prefix.startswith("=")
            name = prefix.lstrip("=")
            if (module == name or (not exact and module.startswith(name + "."))) and len(name) > best:
                best, rank = len(name), index
    return rank


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path) -> dict[str, Path]:
    files = [root / "launch.py", *sorted((root / "kml").rglob("*.py"))]
    return {module_name(path, root): path for path in files if path.exists()}


def imports(path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, module) of every import of a project module in `path`; `from kml import x` is module kml.x
    when x is one."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known
                       else node.module) for alias in node.names]
    return sorted({(line, name) for line, name in found if name == "kml" or name.startswith("kml.")})


def violations(root: Path) -> list[str]:
    """One line per module without a layer and per import of a module from a layer above the importer's."""
    modules = project_modules(root)
    problems = [f"{name} ({path.relative_to(root)}) belongs to no layer; add it to LAYERS in tests/test_layers.py"
                for name, path in modules.items() if layer_of(name) is None]
    for name, path in modules.items():
        own = layer_of(name)
        for line, imported in imports(path, set(modules)):
            theirs = layer_of(imported)
            if own is not None and theirs is not None and theirs < own:
                problems.append(f"{path.relative_to(root)}:{line} imports {imported} ({LAYERS[theirs][0]}) from "
                                f"the {LAYERS[own][0]} layer below it")
    return problems


def test_no_module_imports_a_layer_above_it():
    problems = violations(REPO)
    assert not problems, "\n".join(problems)


def test_the_layers_cover_the_runner_and_the_analysis():
    assert layer_of("kml.run.train") == 2 and layer_of("kml.analysis.transference") == 1
    assert layer_of("kml.report") == 0 and layer_of("kml.analysis.report") == 1
    assert layer_of("kml") == 6 and layer_of("kml.nowhere") is None


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("source, offending", [
    ("from kml.analysis.transference import Transference\n", "kml/run/train.py:1 imports kml.analysis.transference"),
    ("def f():\n    from kml.analysis import report\n", "kml/run/train.py:2 imports kml.analysis.report"),
    ("import kml.analysis.report\n", "kml/run/train.py:1 imports kml.analysis.report"),
])
def test_an_upward_import_is_reported_with_its_line(tmp_path, source, offending):
    write(tmp_path, "kml/__init__.py", "")
    write(tmp_path, "kml/analysis/__init__.py", "")
    write(tmp_path, "kml/analysis/transference.py", "from kml.run import train\n")  # downward: fine
    write(tmp_path, "kml/analysis/report.py", "")
    write(tmp_path, "kml/run/__init__.py", "")
    write(tmp_path, "kml/run/train.py", source)
    assert [p.split(" (")[0] for p in violations(tmp_path)] == [offending]


def test_a_module_outside_every_layer_is_reported(tmp_path):
    write(tmp_path, "kml/__init__.py", "")
    write(tmp_path, "kml/train.py", "")  # where the runner sat before it had a package
    assert violations(tmp_path) == ["kml.train (kml/train.py) belongs to no layer; add it to LAYERS in "
                                    "tests/test_layers.py"]
