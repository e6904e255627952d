"""The course tooling around the exercises: otter's notebook format (its raw-cell markers, each question's
solution and test cells), and the two commands an instructor runs.

`python -m distildp.teaching.grading build OUT` makes the student notebooks and the autograders with `otter assign`;
`python -m distildp.teaching.grading grade SUBMISSIONS --autograders DIR --csv FILE` grades a folder of notebooks with
`otter run` (no Docker) into one CSV row per submitted notebook, one column per question (`make grade`).
The checks the test cells call are `distildp.teaching.dp_exercises`' and `distildp.teaching.model_exercises`'.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

# ------------------------------------------------------------------------ the exercise blocks of a notebook
EXERCISE_NOTEBOOKS = ("01_data_and_models", "02_dp_sgd", "04_synthetic_text", "05_distillation", "07_results")


@dataclass
class Question:
    """One otter question of a source notebook: its solution code and its test cells."""

    name: str
    points: float
    manual: bool
    solution: str  # the code cells between BEGIN QUESTION and BEGIN TESTS, joined
    public_tests: list[str]
    hidden_tests: list[str]

    def student_solution(self) -> str:
        """The solution as otter assign hands it to students: each marked region replaced by `...`."""
        return strip_solution(self.solution)


OTTER_MARKERS = {
    f"# {edge} {part}" for edge in ("BEGIN", "END") for part in ("QUESTION", "SOLUTION", "TESTS", "PROMPT")
}
OTTER_MARKERS.add("# ASSIGNMENT CONFIG")


def otter_marker(cell) -> str:
    """The otter marker a raw cell carries ('# BEGIN QUESTION', ...), upper case; '' for any other cell."""
    if cell.cell_type != "raw" or not cell.source.strip():
        return ""
    first = cell.source.strip().splitlines()[0].strip().upper()
    return first if first in OTTER_MARKERS else ""


def questions(notebook: str | Path) -> list[Question]:
    """The questions of a source notebook, in order (otter's raw-cell format: BEGIN/END QUESTION, TESTS)."""
    import nbformat
    import yaml

    nb = nbformat.read(str(notebook), as_version=4)
    found, current, in_tests = [], None, False
    for cell in nb.cells:
        marker = otter_marker(cell)
        if marker == "# BEGIN QUESTION":
            config = yaml.safe_load("\n".join(cell.source.strip().splitlines()[1:])) or {}
            current = Question(config["name"], config.get("points", 1), bool(config.get("manual")), "", [], [])
        elif marker == "# END QUESTION":
            found.append(current)
            current, in_tests = None, False
        elif marker in ("# BEGIN TESTS", "# END TESTS"):
            in_tests = marker == "# BEGIN TESTS"
        elif current is not None and cell.cell_type == "code":
            if in_tests:
                hidden = cell.source.lstrip().upper().startswith("# HIDDEN")
                (current.hidden_tests if hidden else current.public_tests).append(cell.source)
            else:
                current.solution += cell.source + "\n\n"
    if current is not None:
        raise ValueError(f"{notebook}: question {current.name!r} has no '# END QUESTION' raw cell; add one.")
    return found


def strip_solution(source: str) -> str:
    """Replace every `# BEGIN SOLUTION` ... `# END SOLUTION` region with `...` at its indentation (as otter)."""
    out, skipping = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == "# BEGIN SOLUTION":
            skipping = True
            out.append(line[: len(line) - len(line.lstrip())] + "...")
        elif stripped == "# END SOLUTION":
            skipping = False
        elif not skipping:
            out.append(line)
    if skipping:
        raise ValueError("a '# BEGIN SOLUTION' has no '# END SOLUTION'; close the region.")
    return "\n".join(out)


def run_question(question: Question, solution: str, hidden: bool = True) -> dict[str, str | None]:
    """Execute `solution` and then each test cell in one namespace: {test source: None if it passed, else the error}."""
    namespace: dict[str, Any] = {"__name__": "__exercise__"}
    exec(compile(solution, f"<{question.name} solution>", "exec"), namespace)
    outcome = {}
    for test in question.public_tests + (question.hidden_tests if hidden else []):
        try:
            exec(compile(test, f"<{question.name} test>", "exec"), namespace)
            outcome[test] = None
        except AssertionError as err:
            outcome[test] = str(err)
    return outcome


# ------------------------------------------------------------------------ building and grading (otter)
IGNORE_TAG = "otter_ignore"  # otter drops cells with this tag when it executes a submission to grade it


def grading_copy(notebook: str | Path) -> Any:
    """The source notebook with every code cell outside a question tagged `otter_ignore`.

    Grading then runs the exercise cells alone (each imports what it needs), not the pipeline around them: a
    submission is graded in seconds, without models, while the student's own notebook still runs top to bottom.
    """
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    inside = False
    for cell in nb.cells:
        marker = otter_marker(cell)
        if marker in ("# BEGIN QUESTION", "# END QUESTION"):
            inside = marker == "# BEGIN QUESTION"
        elif cell.cell_type == "code" and not inside:
            tags = cell.metadata.setdefault("tags", [])
            if IGNORE_TAG not in tags:
                tags.append(IGNORE_TAG)
    return nb


def _otter(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "otter", *args], cwd=cwd, capture_output=True, text=True)


def build(out: str | Path, notebooks_dir: str | Path, names: tuple[str, ...] = EXERCISE_NOTEBOOKS) -> Path:
    """`otter assign` each exercise notebook: out/student/*.ipynb, out/autograder/*-autograder.zip, out/solutions/."""
    import nbformat

    out, notebooks_dir = Path(out), Path(notebooks_dir)
    for part in ("student", "autograder", "solutions", "assign"):
        shutil.rmtree(out / part, ignore_errors=True)
        (out / part).mkdir(parents=True)
    for name in names:
        source = notebooks_dir / f"{name}.ipynb"
        if not source.exists():
            raise FileNotFoundError(f"{source} is missing: the exercise notebooks are {list(names)}.")
        work = out / "assign" / name
        work.mkdir()
        nbformat.write(grading_copy(source), work / source.name)
        done = _otter("assign", source.name, "dist", cwd=work)
        zips = sorted((work / "dist" / "autograder").glob("*-autograder_*.zip"))
        if done.returncode != 0 or not zips:
            raise RuntimeError(f"otter assign failed on {source}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        shutil.copy(work / "dist" / "student" / source.name, out / "student" / source.name)
        shutil.copy(work / "dist" / "autograder" / source.name, out / "solutions" / source.name)
        shutil.copy(zips[-1], out / "autograder" / f"{name}-autograder.zip")
        print(f"{name}: student notebook, solutions and autograder built (otter assign ran the solution's tests)")
    return out


def _assignment_of(zip_path: Path) -> str:
    with zipfile.ZipFile(zip_path) as archive:
        return json.loads(archive.read("otter_config.json"))["assignment_name"]


def autograder_for(submission: Path, autograders: dict[str, Path]) -> Path | None:
    """The autograder of the submission's assignment: its otter metadata, else its file name (e.g. 02_dp_sgd*.ipynb)."""
    try:
        name = json.loads(submission.read_text()).get("metadata", {}).get("otter", {}).get("assignment_name")
    except (OSError, ValueError):
        name = None
    if name in autograders:
        return autograders[name]
    for zip_path in autograders.values():
        if submission.stem.startswith(zip_path.name.removesuffix("-autograder.zip")):
            return zip_path
    return None


def scores_from_results(results: Mapping[str, Any]) -> dict[str, float]:
    """{question: score} from otter run's results.json (the per-question entries; 'Public Tests' is a summary)."""
    return {test["name"]: float(test["score"]) for test in results.get("tests", []) if "score" in test}


def grade(submissions: str | Path, autograders_dir: str | Path, csv: str | Path) -> pd.DataFrame:
    """Grade every notebook under `submissions` with `otter run` (no Docker) into `csv`, one row per notebook.

    Columns: submission (its path under `submissions`), assignment, one column per question (points), total,
    possible, error (why a notebook could not be graded; it then scores nothing).
    """
    import pandas as pd

    submissions, autograders_dir = Path(submissions), Path(autograders_dir)
    if not submissions.is_dir():
        raise FileNotFoundError(f"SUBMISSIONS={submissions} is not a folder: pass the folder of submitted notebooks.")
    autograders = {_assignment_of(z): z for z in sorted(autograders_dir.glob("*-autograder.zip"))}
    if not autograders:
        raise FileNotFoundError(f"no autograders in {autograders_dir}: run `make exercises` first.")
    notebooks = sorted(p for p in submissions.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if not notebooks:
        raise FileNotFoundError(f"no .ipynb files under {submissions}.")
    rows = []
    for notebook in notebooks:
        row: dict[str, Any] = {"submission": str(notebook.relative_to(submissions)), "assignment": "", "error": ""}
        zip_path = autograder_for(notebook, autograders)
        if zip_path is None:
            row["error"] = f"no autograder matches (assignments: {sorted(autograders)})"
            rows.append(row)
            continue
        row["assignment"] = _assignment_of(zip_path)
        possible = _possible_points(zip_path)
        with tempfile.TemporaryDirectory() as out:
            done = _otter("run", "--no-logo", "-a", str(zip_path.resolve()), "-o", out, str(notebook.resolve()))
            results_file = Path(out) / "results.json"
            scores = scores_from_results(json.loads(results_file.read_text())) if results_file.exists() else {}
        if not scores:
            row["error"] = f"otter run gave no scores: {(done.stderr or done.stdout).strip()[-300:]}"
        row.update({q: scores.get(q, 0.0) for q in possible})
        row["total"], row["possible"] = sum(scores.get(q, 0.0) for q in possible), sum(possible.values())
        print(
            f"{row['submission']}: {row['assignment']} {row['total']:g} / {row['possible']:g}"
            + (f" ({row['error']})" if row["error"] else "")
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    questions_ = sorted(c for c in frame.columns if c.startswith("q"))
    frame = frame[["submission", "assignment", *questions_, "total", "possible", "error"]]
    Path(csv).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(csv, index=False)
    return frame


def _possible_points(zip_path: Path) -> dict[str, float]:
    """{question: points} of the autograded questions in an autograder zip (its tests/*.py, OK format)."""
    points = {}
    with zipfile.ZipFile(zip_path) as archive:
        for name in archive.namelist():
            if name.startswith("tests/") and name.endswith(".py"):
                namespace: dict[str, Any] = {}
                exec(archive.read(name).decode(), namespace)  # otter's own test file: `test = {...}`
                points[namespace["test"]["name"]] = float(namespace["test"]["points"])
    return points


def main(argv: list[str] | None = None) -> int:
    """`build OUT` makes the student notebooks and autograders; `grade SUBMISSIONS --csv FILE` grades a folder."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m distildp.teaching.grading", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="otter assign every exercise notebook")
    build_cmd.add_argument("out", help="the folder for student/, autograder/ and solutions/, e.g. build/exercises")
    build_cmd.add_argument("--notebooks", default="notebooks", help="the exercise notebooks' folder")
    grade_cmd = commands.add_parser("grade", help="otter run every notebook of a folder into a CSV")
    grade_cmd.add_argument("submissions", help="a folder of the students' filled-in notebooks")
    grade_cmd.add_argument(
        "--autograders", default="build/exercises/autograder", help="the autograder zips `build` wrote"
    )
    grade_cmd.add_argument("--csv", required=True, help="the grades' file: a row per notebook, a column per question")
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.out, args.notebooks)
    else:
        frame = grade(args.submissions, args.autograders, args.csv)
        print(f"wrote {args.csv}: {len(frame)} notebooks, {int((frame['error'] != '').sum())} not graded")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
