"""The shape of the code: no import cycle between modules, no oversized module, and web processes without torch.

import-linter checks the layer order; these check what it does not: cycles inside a layer (through function-level
imports too), the size at which a module should become a package, and what ``triage.asgi`` actually loads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 500
# The task body loads the pipeline (and torch) lazily so that a web process, which only enqueues, never loads torch;
# the pipeline enqueues follow-up tasks, so this one edge would otherwise close a cycle.
LAZY_TORCH_EDGE = ("triage.ingest.tasks", "triage.ingest.pipeline")


def import_graph() -> grimp.ImportGraph:
    graph = grimp.build_graph("triage", "worklist", exclude_type_checking_imports=True)
    importer, imported = LAZY_TORCH_EDGE
    if graph.direct_import_exists(importer=importer, imported=imported):
        graph.remove_import(importer=importer, imported=imported)
    return graph


def strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """Tarjan's algorithm: the groups of modules that reach each other through imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == module:
                    break
            groups.append(group)

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return groups


def one_cycle(graph: grimp.ImportGraph, group: set[str]) -> list[str]:
    """A concrete cycle through the group's first module, for the failure message."""
    start = min(group)
    back = min(group & graph.find_modules_directly_imported_by(start))
    return [start, *graph.find_shortest_chain(importer=back, imported=start)]


def test_the_import_graph_has_no_cycle_besides_the_lazy_torch_edge():
    graph = import_graph()

    cycles = [one_cycle(graph, group) for group in strongly_connected(graph) if len(group) > 1]

    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_no_module_is_over_500_lines():
    modules = [
        path
        for package in ("triage", "worklist", "inference")
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.relative_to(ROOT).parts
    ]

    oversized = {
        str(path.relative_to(ROOT)): lines
        for path in modules
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }

    assert modules
    assert not oversized, f"modules over {MAX_MODULE_LINES} lines (make them packages): {oversized}"


def test_the_asgi_application_loads_without_torch():
    probe = "import sys, triage.asgi; print(','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')))"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "triage.settings", "TRIAGE_DEBUG": "1"}

    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"triage.asgi loaded torch modules: {done.stdout.strip()[:500]}"
