"""The layout's rules, checked on the source (ast), so that they hold as the code grows:

- ``catalog`` reaches the recommender only through its reads (``recommender.selectors``), its
  configuration, the retry action and the pure ML probe; the recommender depends on the catalog,
  never the reverse;
- nothing but Celery imports ``recommender.tasks`` (services publish by task name), and only
  ``recommender.publishing`` (sends), ``recommender.tasks`` (receives), ``recommender.worker``
  (the worker processes' start-up hooks) and ``config`` know about Celery;
- the pure ML modules import no Django;
- no import cycle between the project's modules, counting imports inside functions too;
- no module (benchmarks included) reaches into another module's private names;
- modules stay under ~400 lines and functions under ~60 (migrations and benchmark entry points
  aside).
"""

from __future__ import annotations

import ast
import importlib
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("catalog", "recommender", "config")

# What catalog may import from the recommender, and why.
CATALOG_MAY_IMPORT = {
    "recommender.selectors": "reads: similar items, search by photo, the active version, the backlog",
    "recommender.conf": "the typed configuration (read-only), e.g. the attempt limit in the API's help",
    "recommender.services.ingestion": "images_retry, the staff action on failed images",
    "recommender.services.events": "recording a click that arrives on a product page (buffered, write-only)",
    "recommender.backbone": "rundemo's ImageNet probe (pure ML, no Django)",
}
PURE_ML = ("recommender.backbone", "recommender.head", "recommender.evaluation", "recommender.finetune",
           "recommender.stats", "recommender.diversity")


def _bench_sources():
    for path in sorted((ROOT / "bench").glob("*.py")):
        yield _module_name(path), path


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                yield _module_name(path), path


def _imports(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (relative imports resolved)."""
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # "from recommender import services" imports the submodule recommender.services.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = dict(_sources())
    return {name: {m for m in _imports(path, name) if m in modules and m != name} for name, path in modules.items()}


@pytest.mark.parametrize("module", sorted(name for name, _ in _sources()))
def test_every_module_imports(module):
    # A name moved to another module fails here, not on the first request that reaches it.
    importlib.import_module(module)


def _allowed(target: str) -> bool:
    return any(target == allowed or target.startswith(allowed + ".") for allowed in CATALOG_MAY_IMPORT)


def test_catalog_reaches_the_recommender_only_through_its_public_reads(graph):
    offending = sorted((module, target) for module, targets in graph.items() if module.startswith("catalog")
                       for target in targets if target.startswith("recommender") and not _allowed(target))
    assert not offending, f"catalog imports recommender internals: {offending}"
    # The graph is read right: the product pages' own reads are in it.
    assert "recommender.selectors" in graph["catalog.views"]


def test_catalog_calls_only_the_retry_action_and_the_click_recorder():
    calls = set()
    for module, path in _sources():
        if module.startswith("catalog"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("recommender.services"):
                    calls.update(alias.name for alias in node.names)
    assert calls == {"images_retry", "panel_origin_record"}


def test_only_celery_imports_the_tasks_and_only_publishing_knows_celery(graph):
    assert [m for m, targets in graph.items() if "recommender.tasks" in targets] == []
    celery_users = sorted(m for m, path in _sources() if m.startswith(("recommender", "catalog"))
                          and any(t == "config.celery" or t.startswith("celery") for t in _imports(path, m)))
    assert celery_users == ["recommender.publishing", "recommender.tasks", "recommender.worker"]


def test_tasks_import_the_services_at_the_top():
    tree = ast.parse((ROOT / "recommender" / "tasks.py").read_text())
    top = {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert "recommender.services" in top
    lazy = [node for fn in tree.body if isinstance(fn, ast.FunctionDef) for node in ast.walk(fn)
            if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert not lazy, "a task is a thin wrapper: no imports inside tasks"


@pytest.mark.parametrize("module", PURE_ML)
def test_pure_ml_modules_import_no_django(module):
    path = ROOT / Path(*module.split(".")).with_suffix(".py")
    imported = _imports(path, module)
    assert not [m for m in imported if m.split(".")[0] in ("django", "rest_framework", "catalog", "config")
                or m.startswith(("recommender.models", "recommender.services", "recommender.selectors"))]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles(graph):
    # A package's __init__ re-exporting its modules is not a cycle of logic: leave those edges out.
    edges = defaultdict(set)
    for module, targets in graph.items():
        for target in targets:
            if not target.startswith(module + "."):
                edges[module].add(target)
    assert _cycles(edges) == []


def _too_long():
    modules, functions = [], []
    for module, path in _sources():
        source = path.read_text()
        if source.count("\n") > 400:
            modules.append(f"{module}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                functions.append(f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    return modules, functions


def _private_uses(module: str, path: Path, known: set[str]) -> list[str]:
    """``alias._name`` where ``alias`` is an imported project module, and ``from m import _name``."""
    tree = ast.parse(path.read_text())
    aliases, found = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({(a.asname or a.name): a.name for a in node.names if a.name in known})
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                if f"{node.module}.{a.name}" in known:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                elif node.module in known and node.module != module and a.name.startswith("_"):
                    found.append(f"{module}: from {node.module} import {a.name}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{module}:{node.lineno} {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_reaches_into_another_modules_private_names():
    sources = dict(_sources()) | dict(_bench_sources())
    found = [use for name, path in sources.items() for use in _private_uses(name, path, set(sources))]
    assert found == []


def test_private_name_check_finds_one(tmp_path):
    path = tmp_path / "user.py"
    path.write_text("from recommender import selectors\nselectors._secret()\nfrom recommender.db import _x\n")
    assert len(_private_uses("user", path, {"recommender.selectors", "recommender.db"})) == 2


@pytest.mark.parametrize("module", sorted(name for name, _ in _bench_sources()))
def test_every_benchmark_module_imports(module):
    importlib.import_module(module)


def test_modules_and_functions_stay_short():
    modules, functions = _too_long()
    assert modules == [] and functions == []
