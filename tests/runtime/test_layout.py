"""The Python package's layout: no import cycle inside kbit, and kbit.nn / kbit.optim use only public names or
the explicitly shared internal modules. Both are read from the modules' own source (ast), not from imports."""
from __future__ import annotations

import ast
from pathlib import Path

import kbit

PACKAGE = Path(kbit.__file__).resolve().parent
# internal modules whose __all__ is shared with kbit.nn and kbit.optim
SHARED = {"kbit._abi", "kbit._checks", "kbit._dispatch", "kbit._errors"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_at_import_time(module: str, tree: ast.Module, known: set[str]) -> list[tuple[str, list[str]]]:
    """(imported kbit module, names) for every import that runs when the module is imported: module level,
    including under `if`/`try`, but not inside functions (those run later, after every import finished)."""
    found = []
    is_package = module in {m for m in known if any(k.startswith(m + ".") for k in known)} or module == "kbit"

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.ClassDef):
                visit(node.body)
            elif isinstance(node, ast.Import):
                found.extend((a.name, []) for a in node.names if a.name.startswith("kbit"))
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(module, node, is_package)
                if not target.startswith("kbit"):
                    continue
                for alias in node.names:  # `from kbit import _abi` imports the module kbit._abi
                    sub = f"{target}.{alias.name}"
                    found.append((sub, []) if sub in known else (target, [alias.name]))
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(node, field, []) or [])
    visit(tree.body)
    return found


def import_graph() -> dict[str, set[str]]:
    trees = modules()
    known = set(trees) | {"kbit._version"}
    graph = {}
    for name, tree in trees.items():
        parts = name.split(".")
        ancestors = {".".join(parts[:i]) for i in range(1, len(parts))}  # imported (and running) before `name`
        edges = set()
        for target, names in imports_at_import_time(name, tree, known):
            # importing kbit.a.b imports kbit.a first (its __init__); an ancestor of `name` is already being
            # imported, which is no cycle unless names are taken from it while it is half initialised
            t = target.split(".")
            edges |= {".".join(t[:i]) for i in range(1, len(t) + 1)} - ancestors
            if target in ancestors and names:
                edges.add(target)
        graph[name] = (edges & set(trees)) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def test_no_import_cycle_inside_kbit():
    graph = import_graph()
    assert {"kbit._quant4", "kbit._quant_state", "kbit._blockwise8", "kbit._checks"} <= graph.keys()
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_functional_only_re_exports():
    tree = modules()["kbit.functional"]
    kinds = {type(node).__name__ for node in tree.body}
    assert kinds <= {"Expr", "ImportFrom", "Assign"}, kinds  # docstring, imports, __all__
    assert [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets] == ["__all__"]


def test_nn_and_optim_import_only_public_or_shared_names():
    trees = modules()
    known = set(trees)
    bad = []
    for name, tree in trees.items():
        if not name.startswith(("kbit.nn", "kbit.optim")):
            continue
        own = name.split(".")[1]  # nn or optim: its own private modules are its business
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            pairs = imports_at_import_time(name, ast.Module(body=[node], type_ignores=[]), known)
            for target, names in pairs:
                if target.startswith(f"kbit.{own}"):
                    continue
                private_module = any(p.startswith("_") for p in target.split(".")[1:])
                if private_module and target not in SHARED:
                    bad.append(f"{name} imports {target}")
                shared = getattr(__import__(target, fromlist=["_"]), "__all__", None) if target in SHARED else None
                for n in names:
                    if n.startswith("_") or (shared is not None and n not in shared):
                        bad.append(f"{name} imports {n} from {target}")
    assert bad == []
