"""Packaging: every third-party module the code imports is declared in pyproject.toml and pinned in
requirements.txt; environment.yml (conda users) names the same pinned set; nothing is pinned that nothing uses."""

import ast
import importlib.metadata
import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# the library, and the modules of benchmarks/ and tests/ (tests import the bench scripts by name)
OWN = {"distildp"} | {p.stem for folder in ("benchmarks", "tests") for p in (ROOT / folder).glob("*.py")}
# Pinned but never imported: what runs the code rather than being imported by it
TOOLS = {
    "ipykernel": "the kernel papermill runs notebooks in",
    "nbclient": "papermill's executor",
    "jupyterlab": "make lab",
    "pytest": "the tests",
    "ruff": "the lint (make test)",
    "otter-grader": "make exercises and make grade run `python -m otter`",
}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _requirements() -> set[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return {line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()}


def _conda_pip_section() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip section"
    return {spec.strip() for spec in pip_sections[0]}


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project.get("optional-dependencies", {}).values() for r in group]
    return {_name(r) for r in project["dependencies"] + extras}


def _imported_modules() -> dict[str, str]:
    """Top-level module -> a file that imports it, over lib/, benchmarks/, tests/ and the notebooks' code cells."""
    sources = [(p, p.read_text()) for d in ("lib", "benchmarks", "tests") for p in sorted((ROOT / d).rglob("*.py"))]
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        python = [line for line in code.splitlines() if not line.lstrip().startswith(("%", "!"))]  # no magics
        sources.append((notebook, "\n".join(python)))
    found = {}
    for path, text in sources:
        for node in ast.walk(ast.parse(text)):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                else []
            )
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return {
        m: p
        for m, p in found.items()
        if m not in sys.stdlib_module_names and m not in OWN and not m.startswith("test_")
    }


def test_environment_yml_matches_requirements():
    conda = _conda_pip_section() - {"-e ."}
    pip = _requirements()
    assert conda == pip, (
        f"only in environment.yml: {sorted(conda - pip)}; only in requirements.txt: {sorted(pip - conda)}"
    )


def test_every_requirement_is_pinned_and_declared():
    pins = _requirements()
    assert not [r for r in pins if "==" not in r], "pin every requirement to the version the tests ran with"
    assert {_name(r) for r in pins} == _declared(), "requirements.txt and pyproject.toml must name the same packages"


def test_every_imported_package_is_declared_and_every_pin_is_used():
    distributions = importlib.metadata.packages_distributions()
    imported = _imported_modules()
    undeclared = {}
    used = set()
    for module, where in imported.items():
        names = {d.lower().replace("_", "-") for d in distributions.get(module, [])}
        assert names, f"{module} (imported by {where}) belongs to no installed distribution"
        if not names & _declared():
            undeclared[module] = (sorted(names), where)
        used |= names
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    unused = _declared() - used - set(TOOLS)
    assert not unused, f"declared but never imported (and not a tool in TOOLS): {sorted(unused)}"


def test_one_python_floor():
    """requires-python, ruff's target version and the conda environment's Python name one version, the oldest the
    pinned set installs on, and the tests run on it or later."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    floor = re.fullmatch(r">=(3\.\d+)", pyproject["project"]["requires-python"]).group(1)
    assert pyproject["tool"]["ruff"]["target-version"] == "py" + floor.replace(".", "")
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")] == [f"python={floor}"]
    assert sys.version_info[:2] >= tuple(int(part) for part in floor.split("."))


def test_torch_is_pinned_to_the_cached_cpu_wheel():
    assert "torch==2.13.0" in _requirements()


def test_environment_installs_the_project():
    assert "-e ." in _conda_pip_section()
