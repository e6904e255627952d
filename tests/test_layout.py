"""The house's map stays true: subpackages import downward only and never in a circle, every module has a docstring,
a row in docs/architecture.md's "who owns what" and a place in its subpackage's docstring, and no code reaches another
module's private (`_x`) names."""

import ast
import json
import re
from pathlib import Path

import distildp

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib" / "distildp"
# the subpackages from the bottom up: each may import only itself and those before it
LAYERS = ("core", "data", "lm", "dp", "distill", "reporting", "pipeline", "audit", "teaching", "runner")
MODULES = sorted(  # "package.module" for every module of the library
    ".".join(p.relative_to(LIB).with_suffix("").parts)
    for p in LIB.rglob("*.py")
    if p.stem not in ("__init__", "__main__")
)
# files that still reach a private name, and why (remove an entry once its module offers a public seam)
KNOWN: dict[str, str] = {}  # file -> why it must reach a private name (none today)


def _owners_section(package: str) -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    owners = text[text.index("## Who owns what") : text.index("## The artifact store")]
    start = owners.index(f"### `{package}`")
    end = owners.find("### `", start + 1)
    return owners[start : end if end > 0 else None]


def test_the_layers_are_the_subpackages():
    packages = sorted(p.parent.name for p in LIB.glob("*/__init__.py"))
    assert packages == sorted(LAYERS)
    assert not [p.name for p in LIB.glob("*.py") if p.name != "__init__.py"], "modules belong in a subpackage"
    for package in LAYERS:
        assert f"`{package}`" in distildp.__doc__, f"{package} is missing from distildp's package docstring"


def test_every_module_has_a_docstring_an_owner_row_and_a_place_in_its_package_docstring():
    for dotted in MODULES:
        package, module = dotted.split(".")
        path = LIB / package / f"{module}.py"
        assert ast.get_docstring(ast.parse(path.read_text())), f"{package}/{module}.py has no docstring"
        where = f"docs/architecture.md's {package}"
        assert f"`{package}/{module}.py`" in _owners_section(package), f"{package}/{module}.py has no row in {where}"
        package_doc = ast.get_docstring(ast.parse((LIB / package / "__init__.py").read_text()))
        assert f"`{module}`" in package_doc, f"{module} is missing from distildp.{package}'s docstring"


def test_each_package_docstring_names_only_its_own_modules():
    for package in LAYERS:
        doc = ast.get_docstring(ast.parse((LIB / package / "__init__.py").read_text()))
        named = set(re.findall(r"`([a-z_0-9]+)`", doc))
        own = {m.split(".")[1] for m in MODULES if m.startswith(f"{package}.")}
        assert named <= own | {"python -m distildp.runner", "python -m distildp.pipeline"}, (package, named - own)


def imports_of(source: str) -> set[str]:
    """The distildp modules ("package.module") that `source` imports, at any depth (in functions too)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "distildp":
            parts = node.module.split(".")[1:]
            if len(parts) == 1:  # from distildp.package import module
                found |= {f"{parts[0]}.{a.name}" for a in node.names}
            elif len(parts) >= 2:
                found.add(".".join(parts[:2]))
        elif isinstance(node, ast.Import):
            found |= {".".join(a.name.split(".")[1:3]) for a in node.names if a.name.count(".") >= 2}
    return {m for m in found if m in MODULES}


def import_graph() -> dict[str, set[str]]:
    return {m: imports_of((LIB / f"{m.replace('.', '/')}.py").read_text()) - {m} for m in MODULES}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    layer = {package: i for i, package in enumerate(LAYERS)}
    return sorted(
        f"{m} -> {d}" for m, deps in graph.items() for d in deps if layer[d.split(".")[0]] > layer[m.split(".")[0]]
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle a depth-first walk meets (one per back edge)."""
    state, found = {}, []

    def walk(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt) :] + [node, nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                walk(nxt, path + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node, [])
    return found


def test_the_checks_find_an_upward_import_and_a_circle():
    graph = {"core.a": {"dp.b"}, "dp.b": {"dp.c"}, "dp.c": {"dp.b"}}
    assert upward_imports(graph) == ["core.a -> dp.b"]
    assert cycles(graph) == [["dp.b", "dp.c", "dp.b"]]
    source = "from distildp.dp import privacy\nimport distildp.lm.models as m\n"
    assert imports_of(source) == {"dp.privacy", "lm.models"}


def test_modules_import_downward_only_and_never_in_a_circle():
    graph = import_graph()
    assert upward_imports(graph) == []
    assert cycles(graph) == []


def _sources() -> list[tuple[str, str]]:
    files = [p for d in ("lib", "benchmarks", "tests") for p in sorted((ROOT / d).rglob("*.py"))]
    sources = [(str(p.relative_to(ROOT)), p.read_text()) for p in files]
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        sources.append((str(notebook.relative_to(ROOT)), code))
    return sources


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_reaches(source: str, own_module: str | None = None) -> list[str]:
    """Where `source` uses a private name of a distildp module other than its own: imported from it, read or set as
    an attribute of it, or patched on it by name."""
    tree = ast.parse(source)
    aliases = {}  # local name -> distildp module ("package.module")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("distildp.") and a.asname:
                    aliases[a.asname] = ".".join(a.name.split(".")[1:3])
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "distildp":
            parts = node.module.split(".")[1:]
            for a in node.names:
                if len(parts) == 1 and f"{parts[0]}.{a.name}" in MODULES:  # from distildp.package import module
                    aliases[a.asname or a.name] = f"{parts[0]}.{a.name}"
                elif _private(a.name) and ".".join(parts[:2]) != own_module:
                    found.append(f"from {node.module} import {a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if _private(node.attr) and aliases[node.value.id] != own_module:
                found.append(f"{node.value.id}.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)) and len(node.args) >= 2:
            name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            target, attr = node.args[0], node.args[1]
            if (
                name == "setattr"
                and isinstance(target, ast.Name)
                and target.id in aliases
                and isinstance(attr, ast.Constant)
                and isinstance(attr.value, str)
                and _private(attr.value)
            ):
                found.append(f"setattr({target.id}, {attr.value!r})")
    return found


def test_the_check_finds_each_way_of_reaching_a_private_name():
    source = (
        "import distildp.lm.sampling as sampling\nfrom distildp.dp import privacy\n"
        "from distildp.data.loaders import _builtin\n"
        "sampling._top_k(1, 2)\nmonkeypatch.setattr(privacy, '_epsilon', None)\nprivacy.epsilon_spent([], 0.1)\n"
    )
    assert sorted(private_reaches(source)) == [
        "from distildp.data.loaders import _builtin",
        "sampling._top_k",
        "setattr(privacy, '_epsilon')",
    ]
    assert private_reaches("from distildp.data.loaders import _builtin\n", own_module="data.loaders") == []


def test_no_code_reaches_another_modules_private_names():
    reaching = {}
    for path, source in _sources():
        own = (
            ".".join(Path(path).relative_to("lib/distildp").with_suffix("").parts) if path.startswith("lib/") else None
        )
        found = private_reaches(source, own)
        if found:
            reaching[path] = sorted(set(found))
    assert set(reaching) == set(KNOWN), reaching
