"""Notebooks as typed, parameterised programs: the conventions papermill and git rely on.

Every notebook in `notebooks/` has one cell tagged `parameters` whose assignments carry type annotations
(`epsilon: float = 2.0`). papermill's CLI parses `-p seed 2` as a float and `-p sizes [1,2]` as a string,
so `validate_parameters` checks values against the declared types (distildp.core.values) *before* any kernel
starts.
Notebooks are committed with outputs stripped (`strip_outputs`) so diffs show code, not pixels.
"""

from __future__ import annotations

import ast
import math
import typing
from pathlib import Path
from typing import Any, Mapping

import nbformat

from distildp.core.values import TYPE_NAMES, annotation, problem

KERNEL_NAME = "python3"
PAPERMILL_HINT = (
    "papermill's -p parses numbers and lists loosely: pass typed values with -y (YAML) or through the grid runner "
    "(python -m distildp.runner)"
)


class ParameterError(ValueError):
    """A notebook parameter is unknown or has the wrong type."""


def declared_parameters(notebook: str | Path) -> dict[str, dict[str, Any]]:
    """name -> {type, default, help} from the notebook's `parameters` cell (its annotations)."""
    cell = _parameters_cell(nbformat.read(str(notebook), as_version=4), notebook)
    declared = {}
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
            type_name = ast.unparse(node.annotation)
            if annotation(type_name) is None:
                raise ParameterError(
                    f"{notebook}: parameter {name!r} is annotated {type_name!r}; use one of "
                    f"{sorted(TYPE_NAMES)} (or list[int], list[float], list[str])"
                )
            declared[name] = {
                "type": type_name,
                "default": ast.literal_eval(node.value) if node.value else None,
                "help": _comment_on_line(cell.source, node.lineno),
            }
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            names = [t.id for t in getattr(node, "targets", [getattr(node, "target", None)]) if isinstance(t, ast.Name)]
            raise ParameterError(
                f"{notebook}: parameter(s) {names} have no type annotation; write e.g. "
                f"`{names[0] if names else 'x'}: float = 1.0` so values can be checked"
            )
    return declared


def validate_parameters(notebook: str | Path, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check `params` against the notebook's declared types; return them with ints widened to floats.

    Raises ParameterError naming the key for an unknown name or a wrong type.
    """
    declared = declared_parameters(notebook)
    checked = {}
    for name, value in params.items():
        if name not in declared:
            raise ParameterError(
                f"{Path(notebook).name} has no parameter {name!r}; its parameters are {sorted(declared)}"
            )
        checked[name] = _check_type(Path(notebook).name, name, value, declared[name]["type"])
    return checked


def _check_type(where: str, name: str, value: Any, type_name: str) -> Any:
    """`value` as the notebook gets it: checked against the declared type (core.values), ints widened to floats."""
    expected = annotation(type_name)
    found = problem(name, value, expected)
    if found:
        raise ParameterError(f"{where}: parameter {found.key!r} {found.message}. {PAPERMILL_HINT}")
    return _widened(where, name, value, expected)


def _widened(where: str, name: str, value: Any, expected: Any) -> Any:
    """A float parameter given as an int becomes a float (2 is a fine epsilon; .inf in YAML is a float already);
    NaN is no value for one."""
    if typing.get_origin(expected) is list and typing.get_args(expected):
        return [_widened(where, f"{name}[{i}]", item, typing.get_args(expected)[0]) for i, item in enumerate(value)]
    if expected is not float:
        return value
    if math.isnan(value):
        raise ParameterError(f"{where}: parameter {name!r} is NaN")
    return value if isinstance(value, float) else float(value)


def _comment_on_line(source: str, lineno: int) -> str:
    line = source.splitlines()[lineno - 1]
    return line.split("#", 1)[1].strip() if "#" in line else ""


def _parameters_cell(nb: nbformat.NotebookNode, where: Any) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ParameterError(f"{where}: expected exactly one code cell tagged 'parameters', found {len(cells)}")
    return cells[0]


def execute(
    notebook: str | Path,
    output: str | Path,
    params: Mapping[str, Any] | None = None,
    cwd: str | Path | None = None,
    log_output: bool = False,
) -> nbformat.NotebookNode:
    """Validate `params`, then run the notebook with papermill (kernel `python3`) into `output`."""
    import papermill

    checked = validate_parameters(notebook, params or {})
    return papermill.execute_notebook(
        str(notebook),
        str(output),
        parameters=checked,
        kernel_name=KERNEL_NAME,
        cwd=str(cwd or Path(notebook).parent),
        log_output=log_output,
        progress_bar=False,
    )


def strip_outputs(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove outputs, execution counts and run metadata, in place (the committed form)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    return nb


def convention_problems(notebook: str | Path) -> list[str]:
    """Why a committed notebook breaks the convention (empty list when it keeps it)."""
    nb = nbformat.read(str(notebook), as_version=4)
    problems = []
    if nb.metadata.get("kernelspec", {}).get("name") != KERNEL_NAME:
        problems.append(f"kernel must be {KERNEL_NAME!r}")
    if any(c.cell_type == "code" and (c.outputs or c.execution_count is not None) for c in nb.cells):
        problems.append("has outputs: run `make strip`")
    if nb.metadata.get("papermill") or any("papermill" in c.metadata for c in nb.cells):
        problems.append("has papermill run metadata: run `make strip`")
    try:
        declared = declared_parameters(notebook)
    except ParameterError as err:
        problems.append(str(err))
    else:
        unread = sorted(set(declared) - _papermill_parameter_names(nb, notebook))
        if unread:
            problems.append(
                f"papermill cannot parse the parameter line(s) of {unread} (it warns 'Unable to parse "
                "line'): keep one '=' per line, none in the comment"
            )
    return problems


def _papermill_parameter_names(nb, notebook) -> set[str]:
    """The parameters papermill's own inspector reads (what `papermill --help-notebook` shows)."""
    import logging

    from papermill.translators import PythonTranslator

    papermill_log = logging.getLogger("papermill")
    level = papermill_log.level
    papermill_log.setLevel(logging.ERROR)  # we report unparsed lines ourselves, once
    try:
        return {p.name for p in PythonTranslator.inspect(_parameters_cell(nb, notebook))}
    finally:
        papermill_log.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """`python -m distildp.teaching.notebooks strip NOTEBOOK...` strips outputs in place."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("command", choices=["strip", "check"])
    parser.add_argument("notebooks", nargs="+")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.notebooks:
        if args.command == "strip":
            nb = nbformat.read(path, as_version=4)
            nbformat.write(strip_outputs(nb), path)
        else:
            for problem in convention_problems(path):
                print(f"{path}: {problem}")
                failed = 1
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
