"""Tests for the package's architecture: imports go one way (no cycle), and no module reaches into another's private names.

Both checks read the source with ``ast``; nothing is imported. Each is also run on small planted packages, so a
check that stopped finding what it looks for would fail here too.
"""

import ast
import pathlib
import textwrap
from typing import Dict, Iterator, List, Set, Tuple

import tinkex_persist

PACKAGE = pathlib.Path(tinkex_persist.__file__).parent


# --------------------------------------------------------------------------- reading a package


def _modules(root: pathlib.Path) -> Dict[str, ast.Module]:
    """Map each module's dotted name (the package's own ``__init__`` is the package name) to its parsed source."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name] + list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return found


def _is_package(name: str, root: pathlib.Path) -> bool:
    return (root.parent.joinpath(*name.split(".")) / "__init__.py").is_file()


def _imports(name: str, tree: ast.Module, modules: Dict[str, ast.Module], root: pathlib.Path) -> Iterator[Tuple[str, str, int]]:
    """Yield ``(imported module, imported name, line)`` for every import of a package module, at any depth.

    ``from . import x`` of a submodule imports that submodule; ``from .m import name`` imports ``m``.
    """
    here = name if _is_package(name, root) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield alias.name, "", node.lineno
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = here
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = base + "." + node.module if node.module else base
        else:
            target = node.module or ""
        if target not in modules:
            continue
        for alias in node.names:
            sub = target + "." + alias.name
            yield (sub, "", node.lineno) if sub in modules else (target, alias.name, node.lineno)


def import_graph(root: pathlib.Path) -> Dict[str, Set[str]]:
    """Return the package's intra-package import graph: module -> modules it imports (anywhere in its body)."""
    modules = _modules(root)
    graph: Dict[str, Set[str]] = {name: set() for name in modules}
    for name, tree in modules.items():
        for target, _, _ in _imports(name, tree, modules, root):
            if target != name:
                graph[name].add(target)
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Return the strongly connected components of more than one module (each an import cycle), sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm; the graph is small, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined(tree: ast.Module) -> Set[str]:
    """Names a module defines: functions, classes, assigned names, its own attributes (``self._x = ...``) and slots."""
    names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _owner(node.value):
            names.add(node.attr)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets):
            names.update(c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant) and isinstance(c.value, str))
    return names


def _owner(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id in ("self", "cls")


def private_uses(root: pathlib.Path) -> List[str]:
    """Return ``module:line: name`` for each use of another package module's underscore-prefixed name.

    Counted: ``from .m import _name`` (``_name`` not a submodule), and ``expr._name`` (``expr`` not ``self``/``cls``)
    where ``_name`` is defined by some other package module and not by the module using it.
    """
    modules = _modules(root)
    defined = {name: _defined(tree) for name, tree in modules.items()}
    offenders = []
    for name, tree in modules.items():
        elsewhere = set().union(*(d for other, d in defined.items() if other != name))
        for _, imported, line in _imports(name, tree, modules, root):
            if _private(imported):
                offenders.append("%s:%d: %s" % (name, line, imported))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and _private(node.attr)
                and not _owner(node.value)
                and node.attr not in defined[name]
                and node.attr in elsewhere
            ):
                offenders.append("%s:%d: %s" % (name, node.lineno, node.attr))
    return sorted(set(offenders))


def _plant(tmp_path: pathlib.Path, files: Dict[str, str]) -> pathlib.Path:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


# --------------------------------------------------------------------------- the package


class TestPackageArchitecture:
    """The package's modules import one way and use only each other's public or named internal interfaces."""

    def test_no_import_cycle(self):
        """No module imports (at module level or inside a function) a module that imports it back, directly or not."""
        assert [] == cycles(import_graph(PACKAGE))

    def test_no_private_names_across_modules(self):
        """No module uses another package module's underscore-prefixed names or members."""
        assert [] == private_uses(PACKAGE)

    def test_flat_functions_delegate_to_the_clients(self):
        """``api`` imports ``client``, never the reverse: the clients own the behaviour."""
        graph = import_graph(PACKAGE)
        assert (True, False) == ("tinkex_persist.client" in graph["tinkex_persist.api"],
                                 "tinkex_persist.api" in graph["tinkex_persist.client"])

    def test_ordering_needs_no_transport(self):
        """Ordered submission imports nothing of the package but its errors and the retry history (a module
        that itself imports nothing of the package): the sender is injected."""
        graph = import_graph(PACKAGE)
        assert {"tinkex_persist.exceptions", "tinkex_persist._retry"} == graph["tinkex_persist._ordering"]
        assert set() == graph["tinkex_persist._retry"]


class TestChecksFindViolations:
    """The two checks find what they look for in planted packages (so they cannot pass vacuously)."""

    def test_function_level_cycle_is_found(self, tmp_path):
        """Two modules importing each other, one of them inside a function, form a cycle."""
        root = _plant(tmp_path, {
            "__init__.py": "from .a import f\n",
            "a.py": "from .b import g\n\ndef f():\n    return g()\n",
            "b.py": "def g():\n    from .a import f\n    return f\n",
        })
        assert [["pkg.a", "pkg.b"]] == cycles(import_graph(root))

    def test_longer_cycle_through_a_subpackage_is_found(self, tmp_path):
        """A cycle of three modules across a subpackage (``from .. import x``) is found."""
        root = _plant(tmp_path, {
            "__init__.py": "",
            "a.py": "from .sub import c\n",
            "b.py": "from . import a\n",
            "sub/__init__.py": "",
            "sub/c.py": "from .. import b\n",
        })
        assert [["pkg.a", "pkg.b", "pkg.sub.c"]] == cycles(import_graph(root))

    def test_one_way_imports_have_no_cycle(self, tmp_path):
        """Submodules importing their package's names (``from . import x``) and each other one way are no cycle."""
        root = _plant(tmp_path, {
            "__init__.py": "from .a import f\n__version__ = '1'\n",
            "a.py": "from . import _b\n\ndef f():\n    return _b.g()\n",
            "_b.py": "def g():\n    return 1\n",
            "cli.py": "from . import __version__, a\n",
        })
        assert [] == cycles(import_graph(root))

    def test_private_members_and_imports_are_found(self, tmp_path):
        """``obj._member``, ``module._helper`` and ``from .m import _name`` of another module are found; own ones are not."""
        root = _plant(tmp_path, {
            "__init__.py": "",
            "client.py": """
                class Client:
                    def __init__(self):
                        self._transport = object()

                    def _submit(self, fn):
                        return fn(self._transport)

                def _helper():
                    return 1
                """,
            "api.py": """
                from . import client
                from .client import _helper

                def call(c):
                    return c._submit(client._helper) + c._transport + _helper()
                """,
        })
        assert ["pkg.api:3: _helper", "pkg.api:6: _helper", "pkg.api:6: _submit", "pkg.api:6: _transport"] == private_uses(root)

    def test_private_module_imports_are_allowed(self, tmp_path):
        """Importing an underscore *module* (``from . import _wire``) and its public names is not a private use."""
        root = _plant(tmp_path, {
            "__init__.py": "",
            "_wire.py": "class Request:\n    pass\n",
            "api.py": "from . import _wire\nfrom ._wire import Request\n\nx = _wire.Request()\n",
        })
        assert [] == private_uses(root)
