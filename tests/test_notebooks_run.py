"""Every notebook runs top to bottom in a fresh kernel on the smoke profile (the tutorial never rots).

All notebooks share the session's smoke artifact store, so the smoke teacher and student are pretrained once.
"""

import json
from pathlib import Path

import pytest

from distildp.notebooks import execute

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _params(name: str, tmp_path: Path) -> dict:
    if name.startswith("06_"):
        return {"method": "dpsgd", "epsilon": 4.0, "row_path": str(tmp_path / "row.json")}
    if name.startswith("07_"):
        return {"results_dir": str(tmp_path / "no_results_yet")}
    if name.startswith("05_"):
        return {"lams": [0.0, 0.4], "temperatures": [2.0], "alphas": [0.1]}
    return {}


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_runs_on_smoke_profile(notebook, tmp_path, smoke_store):
    params = {"profile": "smoke", "store": str(smoke_store), **_params(notebook.name, tmp_path)}
    execute(notebook, tmp_path / notebook.name, params, cwd=NOTEBOOKS)
    if notebook.name.startswith("06_"):
        row = json.loads((tmp_path / "row.json").read_text())
        assert row["method"] == "dpsgd" and row["epsilon"] == 4.0
        assert row["student_ppl"] > row["floor"]
