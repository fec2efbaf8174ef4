"""The package's layers (docs/architecture.md), checked on its import graph: no import
circle (function-level imports count), nothing imports a layer above its own, and no
module imports another module's private (underscore) names."""

from __future__ import annotations

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parents[2] / "aclnn_fag"

# Lower layers first; a module may import its own layer and the layers below it.
LAYERS = [
    ("shared", ["constants", "errors", "spec", "blas", "progress", "_env"]),
    ("semantics", ["seqlens", "softmax_layout", "semantics", "masks", "releases", "call"]),
    ("backends", ["reference", "acl"]),
    ("rules", ["rules", "validate"]),
    ("operands", ["operands"]),
    ("public", ["api", "device_run", "__init__"]),
    ("torch", ["torch", "torch_ops"]),
    ("tools", ["tools", "__main__"]),
]
# the two backends never import each other
APART = {("reference", "acl"), ("acl", "reference")}


def _modules() -> dict:
    mods = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        mods[".".join(("aclnn_fag",) + parts)] = path
    return mods


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(module: str) -> int:
    top = _top(module)
    for i, (_, tops) in enumerate(LAYERS):
        if top in tops:
            return i
    raise AssertionError(f"{module} is in no layer of docs/architecture.md")


def _from_target(node: ast.ImportFrom, base: str) -> str:
    """The absolute module a ``from ... import`` in package ``base`` names."""
    root = base
    for _ in range(max(node.level - 1, 0)):
        root = root.rsplit(".", 1)[0]
    return (root + ("." + node.module if node.module else "")) if node.level \
        else (node.module or "")


def _imports(mods: dict):
    """(importer, imported module, names) for every import inside the package."""
    for name, path in mods.items():
        base = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                target = _from_target(node, base)
                if not target.startswith("aclnn_fag"):
                    continue
                subs = [target + "." + a.name for a in node.names if target + "." + a.name in mods]
                for s in subs:
                    yield name, s, ()
                rest = tuple(a.name for a in node.names if target + "." + a.name not in mods)
                if rest and target in mods:
                    yield name, target, rest
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("aclnn_fag") and a.name in mods:
                        yield name, a.name, ()


def test_every_module_has_a_layer():
    for name in _modules():
        _layer(name)


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(f"{a} -> {b}" for a, b, _ in _imports(_modules())
                    if _layer(b) > _layer(a) or (_top(a), _top(b)) in APART)
    assert upward == []


def _cycles(imports) -> list:
    """Import circles among the modules of ``imports`` (package faces -- ``aclnn_fag``,
    ``acl``, ``rules``, ``tools``, which only re-export -- are not followed)."""
    edges: dict = {}
    for a, b, _ in imports:
        edges.setdefault(a, set())
        if a != b and not b.endswith(("aclnn_fag", ".acl", ".rules", ".tools")):
            edges[a].add(b)
    state, cycles = {}, []

    def visit(node, path):
        state[node] = 1
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for m in list(edges):
        if m not in state:
            visit(m, [m])
    return cycles


def test_no_import_circle():
    assert _cycles(_imports(_modules())) == []


def test_the_circle_check_sees_a_circle():
    extra = list(_imports(_modules())) + [("aclnn_fag.torch_ops", "aclnn_fag.torch", ())]
    assert ["aclnn_fag.torch", "aclnn_fag.torch_ops", "aclnn_fag.torch"] in _cycles(extra) or \
        ["aclnn_fag.torch_ops", "aclnn_fag.torch", "aclnn_fag.torch_ops"] in _cycles(extra)


def test_no_private_name_crosses_a_module():
    crossing = sorted(f"{a} imports {n} from {b}" for a, b, names in _imports(_modules())
                      for n in names if n.startswith("_") and not n.startswith("__"))
    assert crossing == []


def _private_attributes(mods: dict):
    """(module, "alias._name") for every ``alias._name`` read where ``alias`` is another
    package module bound by an import of this one (``from . import runtime``)."""
    for name, path in mods.items():
        base = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bound = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _from_target(node, base)
                for a in node.names:
                    if target + "." + a.name in mods:
                        bound[a.asname or a.name] = target + "." + a.name
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname and a.name in mods:
                        bound[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in bound and bound[node.value.id] != name
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                yield name, f"{node.value.id}.{node.attr}"


def test_no_private_attribute_of_another_module_is_read():
    assert sorted(set(_private_attributes(_modules()))) == []


def test_the_private_attribute_check_sees_one(tmp_path):
    pkg = tmp_path / "aclnn_fag"
    pkg.mkdir()
    (pkg / "a.py").write_text("x = 1\n_y = 2\n")
    (pkg / "b.py").write_text("from . import a\nz = a.x + a._y\n")
    mods = {"aclnn_fag.a": pkg / "a.py", "aclnn_fag.b": pkg / "b.py"}
    assert list(_private_attributes(mods)) == [("aclnn_fag.b", "a._y")]


@pytest.mark.parametrize("edge", [("aclnn_fag.acl.plan", "aclnn_fag.rules"),
                                  ("aclnn_fag.seqlens", "aclnn_fag.tools.cli")])
def test_the_checks_see_an_upward_import(edge, monkeypatch):
    """The layer check is not blind: an upward edge added to the graph is reported."""
    extra = list(_imports(_modules())) + [(edge[0], edge[1], ())]
    upward = [f"{a} -> {b}" for a, b, _ in extra if _layer(b) > _layer(a)]
    assert f"{edge[0]} -> {edge[1]}" in upward
