"""The house rules a newcomer relies on, checked on the source: no import cycles, no tier names
tested outside bench/tiers/, modules of one idea (under ~400 lines)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bench"
MAX_LINES = 400
# longer modules that are one idea each (a line per exception and why)
LONG_OK: dict[str, str] = {
    "bench/kernel/cgroups.py": "one idea: limits, switches and accounting on cgroup v1 and v2 "
                               "behind one interface",
}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the bench modules it imports (anywhere in it, but not under TYPE_CHECKING)."""
    mods = modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(node.test)
                       for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                found = resolve(target) if target.startswith("bench") else None
                if found and found != name:
                    graph[name].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_module_graph_has_no_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 50 and any(graph.values())  # the graph was really read
    assert cycles(graph) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_tier_name_is_tested_outside_the_tiers() -> None:
    names = "host|ns|docker|kvm"
    compare = re.compile(rf"""tier\w*(\.name)?\s*(==|!=|in|not in)\s*\(?["']({names})["']""")
    offenders = []
    for name, path in modules().items():
        if name.startswith("bench.tiers"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if compare.search(line.split("#")[0]):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert offenders == []


def test_modules_hold_one_idea() -> None:
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert {k: v for k, v in long.items() if k not in LONG_OK} == {}


# modules that start processes themselves instead of through bench.core.procs, each for a reason
# written in bench/core/procs.py's docstring
SPAWNS_OK = {"bench/core/procs.py", "bench/tiers/docker/engine.py", "bench/tiers/kvm/libvirtd.py",
             "bench/tiers/docker/registry.py", "bench/tiers/docker/limited.py",
             "bench/tiers/host.py", "bench/tiers/base.py", "bench/tiers/docker/image.py",
             "bench/tiers/ns/runtime/native.py", "bench/tiers/ns/runtime/zygote.py",
             "bench/tiers/ns/runtime/init.py", "bench/kernel/mountns.py"}


def test_processes_start_in_one_place_or_a_documented_exception() -> None:
    spawn = re.compile(r"subprocess\.(run|Popen|call|check_output|check_call)\(|os\.posix_spawn"
                       r"|os\.fork\(|os\.exec[lv]p?e?\(")
    found = {str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
             if spawn.search(p.read_text())}
    inside = {f for f in found if f.startswith("bench/workloads/isolation/inside/")}
    assert found - inside - SPAWNS_OK == set()
    documented = (PACKAGE / "core" / "procs.py").read_text()
    for module in SPAWNS_OK - {"bench/core/procs.py"}:
        assert module.removeprefix("bench/").split("/")[-1] in documented, module
