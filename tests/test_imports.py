"""The package's structure: no import cycles, no lazy imports on the model's path, and imports that only go
down the layers of docs/architecture.md.

A lazy import (``import`` inside a function) is how an import cycle hides: the cycle is still there, it only
fails later, in whatever order a user happens to import things. So the checks are static (every import in
every file, module level or not) plus one dynamic check: each module imported alone, first, into an
interpreter that holds no dslearn module yet.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "dslearn"

# The layers of docs/architecture.md, bottom (0) to top. A module may import from its own package and from
# packages of a LOWER rank only.
RANK = {
    "config": 0, "devices": 0, "paths": 0,
    "layers": 1, "data": 1, "scaling": 1,
    "fp8": 2,
    "attention": 3, "moe": 3,
    "model": 4,
    "generate": 5, "train": 5, "parallel": 5, "export": 5,
    "rl": 6, "plot": 6, "diagrams": 6, "speculative": 6,
    "studies": 7, "capstone": 7, "exercises": 7, "envcheck": 7, "cli": 8, "__main__": 9, "__init__": 9,
}
# Packages the model is built from: no import inside a function there (optional third-party code excepted).
MODEL_PATH = ("config", "layers", "fp8", "attention", "moe", "model")
# Files that are programs, not modules: run by ``python -m`` or inside the code sandbox, never imported.
SCRIPTS = {"dslearn.__main__", "dslearn.rl._harness"}
LAZY_ALLOWED = {
    # Triton is optional (Linux wheels only): its kernels load on first use, as a compiled or an interpreted copy
    ("fp8/backend.py", "dslearn.fp8.kernels"),
    ("fp8/kernels.py", "numpy"),
}


def _modules() -> list[tuple[Path, str, bool]]:
    out = []
    for f in sorted(PKG.rglob("*.py")):
        parts = f.relative_to(ROOT).with_suffix("").parts
        is_pkg = parts[-1] == "__init__"
        out.append((f, ".".join(parts[:-1] if is_pkg else parts), is_pkg))
    return out


def _imports(f: Path, mod: str, is_pkg: bool):
    """(target module, lineno, inside a function?) for every import in file f."""
    tree = ast.parse(f.read_text(encoding="utf-8"))
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inner = {id(n) for fn in funcs for n in ast.walk(fn) if n is not fn}
    for node in ast.walk(tree):
        lazy = id(node) in inner
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno, lazy
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None:  # from . import a, b: each name may be a module
                for a in node.names:
                    yield f"{target}.{a.name}", node.lineno, lazy
            else:
                yield target, node.lineno, lazy


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_import_goes_down_the_layers():
    bad = []
    for f, mod, is_pkg in _modules():
        a = _package(mod)
        assert a in RANK, f"dslearn.{a} has no place in the layers: add it to RANK here and to docs/architecture.md"
        for target, line, _ in _imports(f, mod, is_pkg):
            if not target.startswith("dslearn.") or (b := _package(target)) == a or b not in RANK:
                continue
            if RANK[b] >= RANK[a]:
                bad.append(f"{f.relative_to(ROOT)}:{line} imports {target} (dslearn.{a} rank {RANK[a]} → "
                           f"dslearn.{b} rank {RANK[b]})")
    assert not bad, "imports that go up or sideways:\n" + "\n".join(bad)


def test_no_module_import_cycle():
    """Module-level graph, lazy imports included (they hide cycles, not remove them)."""
    mods = {mod: (f, is_pkg) for f, mod, is_pkg in _modules()}
    graph = {}
    for mod, (f, is_pkg) in mods.items():
        deps = set()
        for target, _, _ in _imports(f, mod, is_pkg):
            while target and target not in mods:  # `from pkg import name` where name is not a module
                target = target.rpartition(".")[0]
            if target and target != mod and not mod.startswith(target + "."):  # a module may import its package
                deps.add(target)
        graph[mod] = deps
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in graph[m]:
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_no_lazy_imports_on_the_model_path():
    bad = []
    for f, mod, is_pkg in _modules():
        rel = str(f.relative_to(PKG))
        if _package(mod) not in MODEL_PATH:
            continue
        for target, line, lazy in _imports(f, mod, is_pkg):
            if lazy and (rel, target) not in LAZY_ALLOWED:
                bad.append(f"dslearn/{rel}:{line} imports {target} inside a function")
    assert not bad, "\n".join(bad)


def test_every_module_imports_alone_in_a_fresh_interpreter():
    """One interpreter (torch imported once), but before each module every dslearn module is dropped, so each is
    imported first and alone — the order in which a cycle fails."""
    names = [mod for _, mod, _ in _modules() if mod not in SCRIPTS]
    script = f"""
import importlib, sys, traceback
import torch  # noqa: F401  (shared, to keep this fast)
failed = []
for name in {names!r}:
    for m in [m for m in sys.modules if m == "dslearn" or m.startswith("dslearn.")]:
        del sys.modules[m]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ":\\n" + traceback.format_exc(limit=3))
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
