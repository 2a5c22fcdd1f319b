"""The gateway's shape (issue 17): HTTP resources (blueprint modules) are leaves that
only the app factory wires together, and no module reads another object's private
attributes. Read from the source with ast, so a new module is held to it too."""

from __future__ import annotations

import ast
from pathlib import Path

import ocho.gateway

GATEWAY = Path(ocho.gateway.__file__).parent
FACTORY = "app"


def _modules() -> dict[str, ast.Module]:
    """Each module by its name under ocho.gateway (a package by its own name)."""
    paths = {path.stem: path for path in GATEWAY.glob("*.py")}
    paths |= {path.parent.name: path for path in GATEWAY.glob("*/__init__.py")}
    paths |= {f"{path.parent.name}.{path.stem}": path for path in GATEWAY.glob("*/*.py")
              if path.stem != "__init__"}
    return {name: ast.parse(path.read_text(), str(path)) for name, path in paths.items()}


def _imported(tree: ast.Module) -> set[str]:
    """The ocho.gateway modules a module imports (`from ocho.gateway import x` too)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "ocho.gateway":
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ocho.gateway."):
            names.add(node.module.split(".")[2])  # type: ignore[union-attr]
        elif isinstance(node, ast.Import):
            names |= {alias.name.split(".")[2] for alias in node.names
                      if alias.name.startswith("ocho.gateway.")}
    return names


def _is_blueprint_module(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.Assign) and any(
        isinstance(target, ast.Name) and target.id == "blueprint" for target in node.targets)
        for node in tree.body)


def test_only_the_app_factory_imports_a_blueprint_module() -> None:
    modules = _modules()
    blueprints = {name for name, tree in modules.items() if _is_blueprint_module(tree)}
    assert {"jobs", "shell", "web", "tools", "health", "openapi"} <= blueprints
    for name, tree in modules.items():
        if name != FACTORY:
            own_package = {name.split(".")[0]}  # openapi.refine may import openapi.*
            assert not (_imported(tree) - own_package) & blueprints, name


def test_no_module_reads_another_objects_private_attributes() -> None:
    """`x._name` only on self or cls (waitress' own server map is the one outside read)."""
    allowed = {("serving", "server", "_map")}
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__")
                    and not _own(node.value)):
                assert (name, ast.unparse(node.value), node.attr) in allowed, (
                    name, ast.unparse(node))


def _own(value: ast.expr) -> bool:
    """self, cls or super(): the object's own attributes."""
    if isinstance(value, ast.Call):
        value = value.func
    return isinstance(value, ast.Name) and value.id in ("self", "cls", "super")
