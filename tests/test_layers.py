"""The layering, read from the import graph (every `import`, function-local ones included):

    core/  <-  pefts/, tasks/  <-  runners/  <-  run.py, scripts/

core/ imports nothing of ours; pefts/ and tasks/ never import runners/ or scripts/ (nor each other);
runners/ never imports scripts/; no import cycles between modules; re-scoring a predictions file imports
no PEFT method.

    .venv/bin/python -m pytest tests/test_layers.py -q
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

from tests.conftest import ROOT

PACKAGES = ("core", "pefts", "tasks", "runners", "scripts")
ALLOWED = {  # package -> project packages it may import
    "core": set(),
    "pefts": {"core"},
    "tasks": {"core"},
    "runners": {"core", "pefts", "tasks"},
    "scripts": {"core", "pefts", "tasks", "runners"},
}


def module_graph() -> dict[str, set[str]]:
    """module -> project modules it imports (resolved to the longest existing module name)."""
    files = {}
    for pkg in PACKAGES:
        for folder, _, names in os.walk(os.path.join(ROOT, pkg)):
            for n in names:
                if n.endswith(".py"):
                    path = os.path.join(folder, n)
                    mod = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                    files[mod] = path
    graph = {}
    for mod, path in files.items():
        deps = set()
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != mod and name.split(".")[0] in PACKAGES:
                    deps.add(name)
        graph[mod] = deps
    return graph


def test_packages_import_only_downwards():
    bad = sorted(f"{m} -> {d}" for m, deps in module_graph().items() for d in deps
                 if d.split(".")[0] != m.split(".")[0] and d.split(".")[0] not in ALLOWED[m.split(".")[0]])
    assert not bad, "imports against the layering (core <- pefts, tasks <- runners <- scripts):\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = module_graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    # a package's __init__ importing its own submodules (registration) is not a cycle of concern
    real = [c for c in cycles if len({p.split(".")[0] for p in c.split(" -> ")}) > 1 or
            not any(p in PACKAGES for p in c.split(" -> "))]
    assert not real, "import cycles:\n" + "\n".join(real)


def test_graph_sees_function_local_imports():
    """The checks above must see imports inside functions (the way layering usually breaks)."""
    deps = module_graph()["runners.score"]
    assert "core.config" in deps, deps  # imported inside compose_task()


def test_rescoring_imports_no_method(tmp_path):
    preds = tmp_path / "p.jsonl"
    preds.write_text("\n".join(json.dumps({"id": str(i), "prediction": p, "reference": "entailment"})
                               for i, p in enumerate(["entailment", "not entailment"])) + "\n")
    code = ("import sys, runners.score as s; s.main(['task=rte', 'predictions=%s']); "
            "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('pefts', 'runners', 'tasks')}))")
    out = subprocess.run([sys.executable, "-c", code % preds], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    metrics, loaded = out.stdout.strip().splitlines()[-2:]
    assert json.loads(metrics), metrics
    assert loaded == "['runners', 'tasks']", f"re-scoring imported {loaded}"


def test_readme_layout_names_every_module():
    """README's Layout table names every module of core/, runners/ and scripts/ (a package under scripts/ by
    its folder and each of its modules), so a new module cannot land without its line."""
    import re

    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    layout = readme[readme.index("## Layout"):]
    layout = layout[: layout.index("\n## ", 1)]
    named = set(re.findall(r"`([\w/.]+)`", layout))
    missing = []
    for package in ("core", "runners", "scripts"):
        for folder, dirs, files in os.walk(os.path.join(ROOT, package)):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
            sub = os.path.relpath(folder, os.path.join(ROOT, package))
            if sub != "." and f"{sub}/" not in named:
                missing.append(f"{package}/{sub}/")
            missing += [f"{package}/{os.path.join(sub, f) if sub != '.' else f}" for f in sorted(files)
                        if f.endswith(".py") and not f.startswith("__") and f not in named]
    assert not missing, f"README.md's Layout table does not name {missing}: add a line for each"
