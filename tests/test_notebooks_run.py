"""Every notebook runs top to bottom in a fresh kernel on the smoke profile (the tutorial never rots).

All notebooks share the session's smoke artifact store, so the smoke teacher and student are pretrained once.
"""

import json
from pathlib import Path

import pytest

from distildp.notebooks import execute

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _regime_rows(results_dir: Path) -> None:
    """A two-cell regime map (epsilon 2, and lam 1) as benchmarks/run.py writes it, for 09 to read."""
    import pandas as pd

    from distildp import results

    rows = [{"method": m, "epsilon": 2.0, "seed": 0, "student_ppl": p, "teacher_marginal_ppl": 80.0, "kind": "main"}
            for m, p in (("distildp", 95.0), ("dpsgd", 100.0), ("dpkd", 110.0), ("synthetic_only", 112.0))]
    rows += [{"method": "pretrained_teacher", "epsilon": 0.0, "seed": 0, "teacher_ppl": 86.0, "kind": "reference"},
             {"method": "pretrained_student", "epsilon": 0.0, "seed": 0, "student_ppl": 118.0, "kind": "reference"},
             {"method": "distildp", "epsilon": 2.0, "seed": 0, "student_ppl": 101.0, "teacher_marginal_ppl": 80.0,
              "kind": "ablation", "knob": "lam", "value": 1.0}]
    tables = results_dir / "regime" / "tables"
    results.write_report(pd.DataFrame(rows), tables, results_dir / "regime" / "figures", regime_map=True)


def _params(name: str, tmp_path: Path) -> dict:
    if name.startswith("09_"):
        _regime_rows(tmp_path / "results")
        return {"results_dir": str(tmp_path / "results")}
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
