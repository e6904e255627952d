"""The house's map stays true: every module has a docstring, a row in docs/architecture.md's "who owns what" and a
place in the package docstring, and no code reaches another module's private (`_x`) names."""

import ast
import json
from pathlib import Path

import distildp

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib" / "distildp"
MODULES = sorted(p.stem for p in LIB.glob("*.py") if p.stem != "__init__")
# files that still reach a private name, and why (remove an entry once its module offers a public seam)
KNOWN: dict[str, str] = {}  # file -> why it must reach a private name (none today)


def _owners_table() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    return text[text.index("## Who owns what") : text.index("## The artifact store")]


def test_every_module_has_a_docstring_an_owner_row_and_a_place_in_the_package_docstring():
    table = _owners_table()
    for module in MODULES:
        assert ast.get_docstring(ast.parse((LIB / f"{module}.py").read_text())), f"{module}.py has no docstring"
        assert f"`{module}.py`" in table, f"{module}.py has no row in docs/architecture.md's who owns what"
        assert f"`{module}`" in distildp.__doc__, f"{module} is missing from distildp's package docstring"


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
    aliases = {}  # local name -> distildp module
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("distildp.") and a.asname:
                    aliases[a.asname] = a.name.split(".")[1]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "distildp":
            for a in node.names:
                if node.module == "distildp":
                    aliases[a.asname or a.name] = a.name
                elif _private(a.name) and node.module.split(".")[1] != own_module:
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
        "import distildp.sampling as sampling\nfrom distildp import privacy\nfrom distildp.data import _builtin\n"
        "sampling._top_k(1, 2)\nmonkeypatch.setattr(privacy, '_epsilon', None)\nprivacy.epsilon_spent([], 0.1)\n"
    )
    assert sorted(private_reaches(source)) == [
        "from distildp.data import _builtin",
        "sampling._top_k",
        "setattr(privacy, '_epsilon')",
    ]
    assert private_reaches("from distildp.data import _builtin\n", own_module="data") == []


def test_no_code_reaches_another_modules_private_names():
    reaching = {}
    for path, source in _sources():
        own = Path(path).stem if path.startswith("lib/distildp/") else None
        found = private_reaches(source, own)
        if found:
            reaching[path] = sorted(set(found))
    assert set(reaching) == set(KNOWN), reaching
