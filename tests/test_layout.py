"""The package is the plugin: it imports nothing from the top-level tools/ and paper/, and its
modules import each other without cycles."""
import ast
import os
import unittest
from typing import Dict, List, Set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "retinafocal")


def package_modules() -> Dict[str, str]:
    """Dotted module name -> file path, for every module of retinafocal/."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                modules[dotted.removesuffix(".__init__")] = path
    return modules


def _imports(path: str, module: str, top_level_only: bool) -> Set[str]:
    """Absolute names that ``path`` (module ``module``) imports: modules, and for ``from X
    import a`` also ``X.a`` (which is a module when ``a`` is a submodule). ``from . import a``
    names ``a`` alone, not the package it comes from. With ``top_level_only``, only the module's
    own statements count (what runs while it is imported); otherwise a lazy import inside a
    function counts too."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    base = module.split(".") if path.endswith("__init__.py") else module.split(".")[:-1]
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parent = base[: len(base) - node.level + 1] if node.level else []
            stem = ".".join(parent + ([node.module] if node.module else []))
            if node.module:
                names.add(stem)
            names.update(f"{stem}.{alias.name}" for alias in node.names)
    return names


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One cycle of ``graph`` as a list of nodes (first == last), or [] when it has none."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


class TestPackageLayout(unittest.TestCase):
    def test_package_imports_no_tool_or_paper_code(self):
        for module, path in package_modules().items():
            upward = {n for n in _imports(path, module, top_level_only=False)
                      if n.split(".")[0] in ("tools", "paper", "train_net")}
            with self.subTest(module=module):
                self.assertEqual(upward, set(), f"{path} imports {sorted(upward)}")

    def test_no_import_cycles_among_package_modules(self):
        modules = package_modules()
        graph = {m: {n for n in _imports(p, m, top_level_only=True) if n in modules and n != m}
                 for m, p in modules.items()}
        # A package importing its own submodules is not a cycle; a submodule importing its
        # package back (its __init__) would be one.
        graph = {m: {n for n in deps if not n.startswith(f"{m}.")} for m, deps in graph.items()}
        self.assertEqual(find_cycle(graph), [])

    def test_find_cycle_finds_one(self):
        self.assertEqual(find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}),
                         ["a", "b", "c", "a"])
        self.assertEqual(find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}), [])


if __name__ == "__main__":
    unittest.main()
