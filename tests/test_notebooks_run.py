"""Every notebook runs top to bottom in a fresh kernel on the smoke profile (the tutorial never rots).

All notebooks share the session's smoke artifact store, so the smoke teacher and student are pretrained once.
"""

import json
import shutil
from pathlib import Path

import pytest

from distildp.teaching.notebooks import execute

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _regime_rows(results_dir: Path) -> None:
    """A regime map of four cells (epsilon 2, lam 1, DP-OPD's public and non-private teachers) as
    lib/distildp/runner/run.py writes it, for 09 to read."""
    import pandas as pd

    from distildp.reporting.report import write_report

    rows = [
        {"method": m, "epsilon": 2.0, "seed": 0, "student_ppl": p, "teacher_marginal_ppl": 80.0, "kind": "main"}
        for m, p in (("distildp", 95.0), ("dpsgd", 100.0), ("dpkd", 110.0), ("synthetic_only", 112.0))
    ]
    rows.append(
        {"method": "dpopd", "epsilon": 2.0, "seed": 0, "student_ppl": 99.0, "kind": "main", "opd_teacher": "dp"}
    )
    rows += [
        {
            "method": "dpopd",
            "epsilon": 2.0,
            "seed": 0,
            "student_ppl": p,
            "kind": "ablation",
            "knob": "opd_teacher",
            "value": teacher,
            "opd_teacher": teacher,
            "epsilon_covers": covers,
        }
        for teacher, p, covers in (
            ("public", 104.0, "every use of the private data"),
            ("nonprivate", 90.0, "student updates only"),
        )
    ]
    rows += [
        {"method": "pretrained_teacher", "epsilon": 0.0, "seed": 0, "teacher_ppl": 86.0, "kind": "reference"},
        {"method": "pretrained_student", "epsilon": 0.0, "seed": 0, "student_ppl": 118.0, "kind": "reference"},
        {
            "method": "distildp",
            "epsilon": 2.0,
            "seed": 0,
            "student_ppl": 101.0,
            "teacher_marginal_ppl": 80.0,
            "kind": "ablation",
            "knob": "lam",
            "value": 1.0,
        },
    ]
    tables = results_dir / "regime" / "tables"
    write_report(pd.DataFrame(rows), tables, results_dir / "regime" / "figures", regime_map=True)


def _params(name: str, tmp_path: Path) -> dict:
    if name.startswith("09_"):
        _regime_rows(tmp_path / "results")
        return {"results_dir": str(tmp_path / "results")}
    if name.startswith("06_"):
        return {"method": "dpsgd", "epsilon": 4.0, "row_path": str(tmp_path / "row.json")}
    if name.startswith("07_"):
        return {"results_dir": str(tmp_path / "no_results_yet")}
    if name.startswith("10_"):  # the smoke profile's short continuations: seconds per DP-OPD student
        return {
            "n_prompts": 3,
            "methods": ["dpsgd", "dpopd"],
            "n_candidates": 100,
            "audit_overrides": {"dataset_options": {"canaries": 2, "canary_repeats": [1, 4]}},
        }
    if name.startswith("05_"):
        return {"lams": [0.0, 0.4], "temperatures": [2.0], "alphas": [0.1]}
    if name.startswith("08_"):  # one DP-SGD student (the cheapest method) on 2 canaries per repeat count
        return {
            "method": "dpsgd",
            "epsilon": 4.0,
            "n_candidates": 100,
            "row_path": str(tmp_path / "row.json"),
            "overrides": {"dataset_options": {"canaries": 2, "canary_repeats": [1, 4]}},
            "results_dir": str(tmp_path / "no_results_yet"),
        }
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
    if notebook.name.startswith("08_"):
        import pandas as pd

        from distildp.audit.audit_report import audit_rows, write_audit_report

        row = json.loads((tmp_path / "row.json").read_text())
        [audited] = row["audits"]
        assert (row["method"], audited["model"], audited["stage"]) == ("dpsgd", "student", "private_student")
        assert [c["repeats"] for c in audited["canaries"]] == [1, 1, 4, 4]
        assert 0 <= audited["epsilon_lower_bound"] <= audited["epsilon_accounted"] <= 4.0
        assert 0 <= audited["reference_auc"] <= 1 and audited["loss_n_members"] == 200 - 10  # canary rows left out
        assert len(audit_rows(pd.DataFrame([row]))) == 1
        assert write_audit_report(pd.DataFrame([row]), tmp_path / "tables", tmp_path / "figures")


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder but the runner's working folder runs/ (git-ignored; a grid may be writing there)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).parts[0] != "runs"
    }


@pytest.mark.notebook
def test_07_tells_the_story_of_the_committed_results(tmp_path):
    """07 on a copy of the committed results/ (the quick grid, the full grid, the regime map): its output holds the
    sentences `story.story` writes from the committed table, the verdict with the committed numbers, and the
    across-seeds and regime parts; it writes nothing into the results folder it reads (the copy, so that a grid
    writing into results/ meanwhile cannot disturb the check)."""
    from distildp.reporting import results, story

    committed = NOTEBOOKS.parent / "results"
    shutil.copytree(committed, tmp_path / "results", ignore=shutil.ignore_patterns("runs"))
    before = _snapshot(tmp_path / "results")
    nb = execute(
        NOTEBOOKS / "07_results.ipynb",
        tmp_path / "07_results.ipynb",
        {"profile": "smoke", "grid": "quick", "results_dir": str(tmp_path / "results")},
        cwd=NOTEBOOKS,
    )
    printed = " ".join(
        "".join(o.get("text", ""))
        for cell in nb.cells
        for o in cell.get("outputs", [])
        if o.get("output_type") == "stream"
    )
    printed = " ".join(printed.split())  # the notebook wraps its sentences
    table = results.read_csv(committed / "tables" / "ppl_vs_eps.csv")
    sentences = story.story(table)
    assert sentences and all(" ".join(s.split()) in printed for s in sentences)
    gates = results.gates_table(table)
    verdicts = gates[gates["check"].str.contains("best baseline")]
    budgets = table.loc[(table["method"] == "distildp") & (table["epsilon"] < float("inf")), "epsilon"]
    assert len(verdicts) == budgets.nunique() >= 2  # one verdict a budget of the curve
    for _, verdict in verdicts.iterrows():
        win = next(s for s in sentences if s.startswith(f"ε = {verdict['ε']},") and "best baseline" in s)
        assert verdict["result"] == "WIN" and "WIN for DistilDP" in win
        assert verdict["DistilDP side"].removeprefix("distildp ") in win
        assert verdict["other side"].split(" ", 1)[1] in win
    assert "The full grid, seeds with their own public pretraining" in printed
    full = story.story(results.read_csv(committed / "full" / "tables" / "ppl_vs_eps.csv"))
    assert all(" ".join(s.split()) in printed for s in full)
    assert "The regime map has" in printed and "Behind at" in printed
    assert _snapshot(tmp_path / "results") == before  # 07 only reads the results folder it is given
