"""Imports run one way: foundation → jobs → squad → server → CLI (docs/architecture.md).

An AST walk over the four packages (imports inside functions included, since a deferred import
still ties the modules together): no module imports a module of a higher layer, and the import
graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("aligners", "inspectors", "synth", "serve")
LAYERS = ("foundation", "jobs", "squad", "server", "cli")

# module (or package prefix) → layer; the longest matching prefix wins
LAYER_OF = {
    "aligners": "foundation",  # records, configs, offline models, backends, LoRA primitives, Pair I/O
    "aligners.train": "jobs",
    "aligners.importance": "jobs",
    "aligners.analysis": "jobs",
    "aligners.artifact": "jobs",  # a trained aligner folder: manifest checks, TAIA view, merged export
    "synth": "jobs",
    "inspectors": "jobs",
    "serve.config": "squad",
    "serve.pipeline": "squad",
    "serve.degenerate": "squad",
    "serve.cutting": "squad",
    "serve.declines": "squad",
    "serve": "server",  # the OpenAI-compatible server, batch correction, evaluation reports
    "aligners.cli": "cli",
    "aligners.commands": "cli",
    "aligners.demo": "cli",
    "synth.commands": "cli",
    "inspectors.commands": "cli",
    "serve.commands": "cli",
}


def layer(module: str) -> str:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYER_OF:
            return LAYER_OF[prefix]
    raise KeyError(module)


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Our modules that `path` imports, resolved to modules (`from pkg import mod` → pkg.mod)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES and n in known}
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(p, known) - {m} for m, p in known.items()}


def test_no_module_imports_a_higher_layer():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = sorted(
        f"{m} ({layer(m)}) imports {d} ({layer(d)})"
        for m, deps in graph().items() for d in deps if rank[layer(d)] > rank[layer(m)]
    )
    assert not upward, "\n".join(upward)


def cycles_in(edges: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[str] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                cycles.append(" → ".join([*path[path.index(d):], d]))
            elif d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    return cycles


def test_the_import_graph_has_no_cycle():
    cycles = cycles_in(graph())
    assert not cycles, "\n".join(cycles)


def test_the_walk_sees_deferred_imports():
    """The checks above are only as good as the walk: it must see imports inside functions."""
    deps = graph()
    assert "aligners.importance" in deps["aligners.train"]  # imported inside resolve_layers
    assert "serve.pipeline" in deps["aligners.demo"]
    assert layer("aligners.backends.openai_http") == "foundation" and layer("serve.app") == "server"
    # and the cycle search finds the one train ↔ importance ↔ analysis used to have
    old = {"aligners.train": {"aligners.importance"}, "aligners.importance": {"aligners.analysis"},
           "aligners.analysis": {"aligners.importance", "aligners.train"}}
    assert cycles_in(old) == ["aligners.analysis → aligners.importance → aligners.analysis"]
    assert cycles_in({m: deps - {"aligners.importance"} for m, deps in old.items()}) == []
