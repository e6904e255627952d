"""Typed notebook parameters and the committed-notebook convention (outputs stripped, kernel python3)."""

import math
from pathlib import Path

import nbformat
import pytest

from distildp.teaching.notebooks import (
    ParameterError,
    convention_problems,
    declared_parameters,
    strip_outputs,
    validate_parameters,
)

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))

PARAMS_CELL = """epsilon: float = 2.0  # total privacy budget
seed: int = 0
methods: list[str] = ["distildp", "dpsgd"]
sizes: list[int] = [1, 2]
model: str = "tiny-teacher"
use_codes: bool = True
"""


def _notebook(tmp_path, source=PARAMS_CELL, tagged=True):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(source)
    if tagged:
        cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), cell, nbformat.v4.new_code_cell("print(epsilon)")]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    return path


def test_declared_parameters_read_types_defaults_and_help(tmp_path):
    declared = declared_parameters(_notebook(tmp_path))
    assert declared["epsilon"] == {"type": "float", "default": 2.0, "help": "total privacy budget"}
    assert declared["sizes"]["type"] == "list[int]"


def test_valid_values_pass_and_ints_widen_to_float(tmp_path):
    nb = _notebook(tmp_path)
    out = validate_parameters(nb, {"epsilon": 8, "seed": 3, "sizes": [4], "use_codes": False})
    assert out == {"epsilon": 8.0, "seed": 3, "sizes": [4], "use_codes": False}
    assert isinstance(out["epsilon"], float)
    assert validate_parameters(nb, {"epsilon": math.inf})["epsilon"] == math.inf


@pytest.mark.parametrize(
    "params, match",
    [
        ({"seed": 2.0}, "'seed' must be int, got float"),  # papermill -p seed 2 gives a float
        ({"sizes": "[1,2]"}, "'sizes' must be list"),  # papermill -p sizes [1,2] gives a string
        ({"sizes": [1, 2.5]}, r"'sizes\[1\]' must be int"),
        ({"seed": True}, "'seed' must be int, got bool"),
        ({"epsilon": "2"}, "'epsilon' must be float, got str"),
        ({"epsilon": float("nan")}, "NaN"),
        ({"epsilom": 2.0}, "no parameter 'epsilom'; its parameters are"),
    ],
)
def test_wrong_type_or_unknown_name_is_named(tmp_path, params, match):
    with pytest.raises(ParameterError, match=match):
        validate_parameters(_notebook(tmp_path), params)


def test_unannotated_or_missing_parameters_cell_is_an_error(tmp_path):
    with pytest.raises(ParameterError, match="no type annotation"):
        declared_parameters(_notebook(tmp_path, "epsilon = 2.0\n"))
    with pytest.raises(ParameterError, match="exactly one code cell tagged 'parameters'"):
        declared_parameters(_notebook(tmp_path, tagged=False))
    with pytest.raises(ParameterError, match="annotated 'float | None'"):
        declared_parameters(_notebook(tmp_path, "x: float | None = None\n"))


def test_parameter_lines_papermill_cannot_parse_are_flagged(tmp_path):
    assert convention_problems(_notebook(tmp_path)) == []
    bad = _notebook(tmp_path, PARAMS_CELL + "lam: float = 0.4  # e.g. lam=0.2\n")
    (problem,) = convention_problems(bad)
    assert "['lam']" in problem and "Unable to parse" in problem


def test_strip_outputs_makes_a_clean_notebook(tmp_path):
    path = _notebook(tmp_path)
    nb = nbformat.read(path, as_version=4)
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", text="2.0\n")]
    nb.cells[2].execution_count = 3
    nbformat.write(nb, path)
    assert any("outputs" in p for p in convention_problems(path))
    nbformat.write(strip_outputs(nbformat.read(path, as_version=4)), path)
    assert convention_problems(path) == []


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_keep_the_convention(notebook):
    assert convention_problems(notebook) == []
