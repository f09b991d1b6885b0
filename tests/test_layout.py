"""The package's shape, checked from its source (ast, nothing imported): no import circles, no private
name used across modules, the shared vocabulary below the stages, the trainer below the planner and the
launcher, CLIs imported only by CLIs, modules of a readable size, and nothing that points outside the
repository."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "scaling"
MAX_LINES = 500
LONGER = {"scaling.flops": 800}
"""Every FLOP, parameter and memory formula lives in one module, derived in its docstring (a project
standard that outranks the size guide)."""
SHARED = ("scaling.errors", "scaling.config", "scaling.io", "scaling.arch", "scaling.flops",
          "scaling.runspec", "scaling.provenance")  # fmt: skip
"""The vocabulary every stage speaks: it imports no stage."""
STAGES = ("scaling.methods", "scaling.sweep", "scaling.launch", "scaling.train", "scaling.fit",
          "scaling.cli")  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@dataclass
class Imports:
    """What one module imports: edges of the import graph, and the private names it reaches for."""

    edges: dict[str, int] = field(default_factory=dict)  # module → first line
    private: list[tuple[int, str]] = field(default_factory=list)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _targets(importer: str, module: str) -> list[str]:
    """``module`` and the packages Python initialises first to import it, except the importer's own
    (already being initialised when it runs)."""
    parts = module.split(".")
    chain = [".".join(parts[:i]) for i in range(2, len(parts) + 1)]
    return [m for m in chain if m in MODULES and not within(importer, m)]


def imports_of(name: str, source: str | None = None) -> Imports:
    tree = ast.parse(MODULES[name].read_text() if source is None else source)
    skip = _type_checking_lines(tree)  # `if TYPE_CHECKING:` imports never run
    out = Imports()
    aliases: dict[str, str] = {}  # local name → scaling module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("scaling"):
                    if a.asname:
                        aliases[a.asname] = a.name
                    if node.lineno not in skip:
                        for t in _targets(name, a.name):
                            out.edges.setdefault(t, node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scaling"):
            assert node.level == 0, f"{name}: relative import"
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                target = sub if sub in MODULES else node.module
                if target == sub:
                    aliases[a.asname or a.name] = sub
                elif a.name.startswith("_"):
                    out.private.append((node.lineno, f"from {node.module} import {a.name}"))
                if node.lineno not in skip:
                    for t in _targets(name, target):
                        out.edges.setdefault(t, node.lineno)
    for node in ast.walk(tree):  # module._private through an imported scaling module
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__")):  # fmt: skip
            out.private.append((node.lineno, f"{aliases[node.value.id]}.{node.attr}"))
    return out


GRAPH = {name: imports_of(name) for name in MODULES}


def test_the_package_is_laid_out_as_the_pipeline():
    """One subpackage per stage, and the shared vocabulary at the top level (a rename must be
    deliberate: README, docs and notebooks name these paths)."""
    for stage in ("methods", "sweep", "launch", "train", "fit"):
        assert (PACKAGE / stage / "__init__.py").is_file(), stage
        assert (PACKAGE / stage / "cli.py").is_file(), f"{stage} has no cli module"
    assert set(SHARED) <= set(MODULES)
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top <= {"__init__", "cli", "measure", *(m.split(".")[1] for m in SHARED)}, top


def _cycle() -> list[str] | None:
    """One import circle (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node].edges):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(GRAPH):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circles():
    cycle = _cycle()
    assert cycle is None, "import circle: " + " → ".join(cycle)


def test_the_cycle_finder_finds_a_circle(monkeypatch):
    """The check above can fail: a planted circle is reported."""
    a, b = "scaling.errors", "scaling.config"
    planted = {**GRAPH, a: Imports(edges={**GRAPH[a].edges, b: 1})}
    monkeypatch.setitem(globals(), "GRAPH", planted)
    assert b in GRAPH[a].edges and a in GRAPH[b].edges
    cycle = _cycle()
    assert cycle is not None and cycle[0] == cycle[-1] and {a, b} <= set(cycle)


def test_no_private_name_is_used_across_modules():
    found = [f"{name}:{line}: {what}" for name, imp in GRAPH.items() for line, what in imp.private]
    assert not found, "\n".join(found)


def test_the_private_name_finder_sees_both_forms():
    source = (
        "from scaling.fit.report import _g\n"
        "from scaling.fit import report\n"
        "import scaling.fit.compare as cmp\n"
        "report._ratio(1, 2), cmp._num(1.0), report.__name__\n"
    )
    found = sorted(what for _, what in imports_of("scaling.fit.cli", source).private)
    assert found == ["from scaling.fit.report import _g", "scaling.fit.compare._num",
                     "scaling.fit.report._ratio"]  # fmt: skip


def test_the_shared_vocabulary_imports_no_stage():
    for name in SHARED:
        stages = [t for t in GRAPH[name].edges if any(within(t, s) for s in STAGES)]
        assert not stages, f"{name} imports {stages}"


def test_the_trainer_never_reaches_back_into_planner_launcher_or_fitter():
    for name, imp in GRAPH.items():
        if within(name, "scaling.train") or within(name, "scaling.methods"):
            up = [t for t in imp.edges if any(within(t, s) for s in
                  ("scaling.sweep", "scaling.launch", "scaling.fit", "scaling.cli"))]  # fmt: skip
            assert not up, f"{name} imports {up}"


def test_command_lines_are_imported_only_by_command_lines():
    """``scaling.cli`` imports each stage's CLI and nothing imports it; a stage CLI is imported only
    by another CLI (``sweep --submit`` takes ``launch``'s options)."""
    for name, imp in GRAPH.items():
        assert "scaling.cli" not in imp.edges, f"{name} imports scaling.cli"
        is_cli = name == "scaling.cli" or name.endswith(".cli")
        clis = [t for t in imp.edges if t.endswith(".cli")]
        assert is_cli or not clis, f"library module {name} imports {clis}"
    stage_clis = {f"scaling.{s}.cli" for s in ("methods", "sweep", "launch", "train", "fit")}
    assert stage_clis <= set(GRAPH["scaling.cli"].edges)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_readable(name):
    lines = len(MODULES[name].read_text().splitlines())
    limit = LONGER.get(name, MAX_LINES)
    assert lines <= limit, f"{name}: {lines} lines (> {limit}): split it by responsibility"


def test_documented_imports_resolve():
    """Every ``from scaling... import ...`` in the README's and docs' code blocks names something that
    exists (the Python API a user copies must not point at moved modules)."""
    import importlib.util

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = 0
    for page in pages:
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.splitlines():
                m = re.match(r"\s*from (scaling[\w.]*) import ([\w, ]+)", line)
                if m is None:
                    continue
                module = importlib.import_module(m[1])
                for name in (n.strip() for n in m[2].split(",")):
                    found += 1
                    assert hasattr(module, name) or importlib.util.find_spec(f"{m[1]}.{name}"), (
                        f"{page.name}: {line.strip()}"
                    )
    assert found >= 8


# Pieces, so that this file does not match itself.
OUTSIDE = re.compile("|".join([r"shared/" + "notes", r"(?<![\w.])/" + "work/", r"/" + "root/",
                               r"/" + "home/[a-z]"]))  # fmt: skip


def test_nothing_points_outside_the_repository():
    """A user who clones the repository has only the repository: no notes of ours, no absolute path
    of a development machine (reference data that may not be shipped is looked up beside the
    repository by the one test that uses it, and skipped with a reason when absent)."""
    files = [ROOT / "README.md", ROOT / "Makefile", *(ROOT / ".ci").glob("*")]
    for folder in ("scaling", "tests", "bench", "docs", "ci", "notebooks", "sweeps", "analysis"):
        files += [p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix not in
                  (".png", ".pdf", ".parquet", ".pyc")]  # fmt: skip
    hits = []
    for path in files:
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)
