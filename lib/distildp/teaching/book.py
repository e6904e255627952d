"""A rendered, browsable copy of the tutorial (`make book`): static HTML a class can read without installing anything.

Every notebook in `notebooks/` is executed on the `smoke` profile with papermill (the same parameters the notebook
smoke tests use to stay fast; the artifact store is the build's own, never the benchmarks' `.artifacts/`), then
shown as students get it (the exercises' solutions left out, see `student_view`) and rendered with nbconvert's
HTML exporter, which embeds every figure in the page as a data URI. `index.html` links the pages in order, one line
each; `book.json` records each page's figures so that `check` can tell a page that lost them.

    python -m distildp.teaching.book build/book               # builds, then checks; work files (store, executed
                                                              # notebooks) in build/book-work
    python -m distildp.teaching.book build/book --check-only  # every page there, every figure embedded; else exit 1
    python -m http.server -d build/book 8000                  # then open http://localhost:8000 (or index.html)
"""

from __future__ import annotations

import argparse
import html
import json
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from distildp.teaching.grading import otter_marker, strip_solution

NOTEBOOKS = Path(__file__).resolve().parents[3] / "notebooks"
PROFILE = "smoke"
MANIFEST = "book.json"
# Parameters beyond profile and store, per notebook (by name prefix): 05's shorter sweep as in the smoke tests
# (tests/test_notebooks_run.py); 07 on the committed quick grid instead of the smoke grid nobody has run; 08 audits
# DistilDP (its teacher, synthetic text and student, unlike the tests' DP-SGD student) on 2 canaries per repeat count
# and 100 candidates each, far fewer than its own 8 canaries and 2,000 candidates (docs/performance.md); 10 compares
# DP-OPD with DP-SGD only and audits its teachers on 08's canaries, as in the smoke tests.
PARAMS: dict[str, dict[str, Any]] = {
    "05_": {"lams": [0.0, 0.4], "temperatures": [2.0], "alphas": [0.1]},
    "07_": {"grid": "quick"},
    "08_": {"n_candidates": 100, "overrides": {"dataset_options": {"canaries": 2, "canary_repeats": [1, 4]}}},
    "10_": {
        "n_prompts": 3,
        "methods": ["dpsgd", "dpopd"],
        "n_candidates": 100,
        "audit_overrides": {"dataset_options": {"canaries": 2, "canary_repeats": [1, 4]}},
    },
}
# otter's placeholder for a written answer (what the student notebook shows where the solution was)
ANSWER_PLACEHOLDER = "_Type your answer here, replacing this text._"
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")
_EMBEDDED_IMG = re.compile(r"<img\b[^>]*\bsrc=\"data:image/", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------- one page
def student_view(nb):
    """The executed notebook as a student sees it: every exercise's solution left out.

    The teaching notebooks hold their exercises' solutions between otter's raw-cell markers (docs/teaching.md), and
    they are executed with the solutions in place so that every later cell runs. Here, as `otter assign` does for the
    student notebooks: a solution code cell keeps its lines outside `# BEGIN SOLUTION` ... `# END SOLUTION` (the
    region becomes `...`) and loses its outputs; a written solution becomes otter's placeholder; public tests become
    one `grader.check("<question>")` cell without outputs; hidden tests, the marker cells and the assignment config go.
    Cells outside the exercises are kept with their outputs.
    """
    import copy

    import yaml

    nb = copy.deepcopy(nb)
    kept, question, region, checked = [], None, "", False
    for cell in nb.cells:
        marker = otter_marker(cell)
        if marker:
            if marker == "# BEGIN QUESTION":
                question = (yaml.safe_load("\n".join(cell.source.strip().splitlines()[1:])) or {}).get("name", "")
                checked = False
            elif marker == "# END QUESTION":
                question, region = None, ""
            elif marker in ("# BEGIN SOLUTION", "# BEGIN TESTS", "# BEGIN PROMPT"):
                region = marker.split()[-1].lower()
            elif marker in ("# END SOLUTION", "# END TESTS", "# END PROMPT"):
                region = ""
            continue  # every marker cell, the assignment config included
        if region == "solution":
            if cell.cell_type == "code":
                cell.source, cell.outputs, cell.execution_count = strip_solution(cell.source), [], None
            elif cell.cell_type == "markdown":
                cell.source = ANSWER_PLACEHOLDER
        elif region == "tests" and cell.cell_type == "code":
            if checked or cell.source.lstrip().upper().startswith("# HIDDEN"):
                continue  # hidden tests are the autograder's; one check cell per question, as otter writes it
            cell.source, cell.outputs, cell.execution_count = f'grader.check("{question}")', [], None
            checked = True
        elif cell.cell_type == "code" and "# BEGIN SOLUTION" in cell.source:
            cell.source, cell.outputs, cell.execution_count = strip_solution(cell.source), [], None
        kept.append(cell)
    nb.cells = kept
    return nb


def figure_count(nb) -> int:
    """How many figures (PNG, JPEG or SVG outputs) a notebook's cells display."""
    return sum(
        1
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") in ("display_data", "execute_result")
        and any(kind in out.get("data", {}) for kind in IMAGE_TYPES)
    )


def embedded_figures(page: str) -> int:
    """How many `<img>` tags of an HTML page carry their image inline (`src="data:image/..."`)."""
    return len(_EMBEDDED_IMG.findall(page))


def title_of(nb, fallback: str) -> str:
    """The notebook's first Markdown heading (its title), without the #s."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return fallback


def _header_cell(profile: str, previous: str | None, following: str | None):
    import nbformat

    links = ["[contents](index.html)"]
    links += [f"previous: [{previous}]({previous}.html)"] if previous else []
    links += [f"next: [{following}]({following}.html)"] if following else []
    return nbformat.v4.new_markdown_cell(
        " · ".join(links) + f"\n\n*Run on the `{profile}` profile (seconds of training on tiny models: the numbers "
        "show how the code behaves, not the benchmark's results; 07 reads the committed ones). Exercises are shown as "
        "students get them, without their solutions.*"
    )


def render(nb) -> str:
    """One notebook as a standalone HTML page (nbconvert's lab template; figures embedded as data URIs)."""
    from nbconvert import HTMLExporter

    page, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    return page


# ---------------------------------------------------------------------------------------------- the book
def params_for(notebook: Path, profile: str, store: Path, extra: Mapping[str, Mapping[str, Any]] = PARAMS) -> dict:
    """The parameters a notebook is executed with: profile and store where it declares them, then `extra`'s."""
    from distildp.teaching.notebooks import declared_parameters

    declared = declared_parameters(notebook)
    params: dict[str, Any] = {}
    if "profile" in declared:
        params["profile"] = profile
    if "store" in declared:
        params["store"] = str(store)
    for prefix, values in extra.items():
        if notebook.name.startswith(prefix):
            params.update({k: v for k, v in values.items() if k in declared})
    return params


def build(
    out: str | Path,
    notebooks_dir: str | Path = NOTEBOOKS,
    work: str | Path | None = None,
    profile: str = PROFILE,
    names: Iterable[str] | None = None,
    extra: Mapping[str, Mapping[str, Any]] = PARAMS,
    log=print,
) -> list[dict]:
    """Execute every notebook of `notebooks_dir` (or those whose names start with one of `names`) on `profile`,
    render each as `out/<name>.html`, write `out/index.html` and `out/book.json`; return the pages' records.

    `work` (default: `<out>-work`) holds the artifact store (`store/`) and the executed notebooks (`executed/`,
    solutions included: not part of the site).
    """
    from distildp.teaching.notebooks import execute

    # absolute: the notebooks run in notebooks_dir, where a relative store would mean another folder
    out, notebooks_dir = Path(out).resolve(), Path(notebooks_dir).resolve()
    work = Path(work).resolve() if work is not None else out.with_name(out.name + "-work")
    notebooks = sorted(notebooks_dir.glob("*.ipynb"))
    if names:
        notebooks = [p for p in notebooks if any(p.name.startswith(n) for n in names)]
    if not notebooks:
        raise FileNotFoundError(f"no notebooks in {notebooks_dir}" + (f" starting with {list(names)}" if names else ""))
    (work / "store").mkdir(parents=True, exist_ok=True)
    (work / "executed").mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.html"):
        stale.unlink()
    stems = [p.stem for p in notebooks]
    pages = []
    for i, notebook in enumerate(notebooks):
        started = time.time()
        executed = work / "executed" / notebook.name
        nb = execute(notebook, executed, params_for(notebook, profile, work / "store", extra), cwd=notebooks_dir)
        seconds = time.time() - started
        shown = student_view(nb)
        shown.cells.insert(
            0, _header_cell(profile, stems[i - 1] if i else None, stems[i + 1] if i + 1 < len(stems) else None)
        )
        page = render(shown)
        (out / f"{notebook.stem}.html").write_text(page, encoding="utf-8")
        record = {
            "notebook": notebook.name,
            "page": f"{notebook.stem}.html",
            "title": title_of(nb, notebook.stem),
            "figures_executed": figure_count(nb),
            "figures": figure_count(shown),
            "figures_embedded": embedded_figures(page),
            "seconds": round(seconds, 1),
        }
        pages.append(record)
        log(f"{record['page']}: {record['figures_embedded']} figures, executed in {seconds:.0f} s")
    (out / "index.html").write_text(index_page(pages, profile), encoding="utf-8")
    (out / MANIFEST).write_text(
        json.dumps({"profile": profile, "pages": pages}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return pages


def index_page(pages: list[dict], profile: str) -> str:
    """The contents page: one line per notebook, in order, linking its page."""
    items = "\n".join(f'  <li><a href="{html.escape(p["page"])}">{html.escape(p["title"])}</a></li>' for p in pages)
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>DistilDP Lab: the tutorial</title>
<style>body {{ font-family: sans-serif; max-width: 52em; margin: 2em auto; line-height: 1.5; }}</style></head>
<body>
<h1>DistilDP Lab: the tutorial</h1>
<p>Differentially private knowledge distillation of language models, one notebook per stage. Every page was
executed on the <code>{html.escape(profile)}</code> profile (tiny models trained for seconds: the numbers show how
the code behaves, not the benchmark's results). Exercises are shown as students get them, without solutions.
To run the notebooks yourself: <code>make setup</code>, then <code>make lab</code>.</p>
<ol>
{items}
</ol>
</body>
</html>
"""


def check(out: str | Path) -> list[str]:
    """What is wrong with a built book (empty when nothing is): a page missing or not linked from the index in
    order, or a page with fewer embedded figures than its notebook shows."""
    out = Path(out)
    manifest = out / MANIFEST
    if not manifest.exists():
        return [f"{manifest} is missing: build the book first (make book)"]
    pages = json.loads(manifest.read_text(encoding="utf-8"))["pages"]
    index = out / "index.html"
    problems = [] if index.exists() else [f"{index} is missing"]
    links = re.findall(r'<a href="([^"]+)"', index.read_text(encoding="utf-8")) if index.exists() else []
    if index.exists() and links != [p["page"] for p in pages]:
        problems.append(f"index.html links {links}, not the pages in order {[p['page'] for p in pages]}")
    for record in pages:
        path = out / record["page"]
        if not path.exists():
            problems.append(f"{path} is missing")
            continue
        embedded = embedded_figures(path.read_text(encoding="utf-8"))
        if embedded < record["figures"] or (record["figures_executed"] and not embedded):
            problems.append(
                f"{record['page']}: {embedded} embedded figures, but its notebook shows "
                f"{record['figures']} (executed: {record['figures_executed']})"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    """Build the tutorial into OUT and check it; with --check-only, check a book built before."""
    parser = argparse.ArgumentParser(prog="python -m distildp.teaching.book", description=main.__doc__)
    parser.add_argument("out", help="the site's folder, e.g. build/book")
    parser.add_argument("--check-only", action="store_true", help="build nothing: check the pages already in OUT")
    parser.add_argument("--work", help="artifact store and executed notebooks (default: OUT-work)")
    parser.add_argument("--notebooks", default=str(NOTEBOOKS), help="the notebooks' folder")
    parser.add_argument("--profile", default=PROFILE, help="the profile every notebook runs on")
    parser.add_argument("--only", nargs="*", help="just the notebooks whose names start with these (e.g. 00 07)")
    args = parser.parse_args(argv)
    if not args.check_only:
        started = time.time()
        pages = build(args.out, args.notebooks, args.work, args.profile, args.only)
        print(
            f"book: {len(pages)} pages in {args.out}/ ({time.time() - started:.0f} s); open {args.out}/index.html "
            f"or serve it: python -m http.server -d {args.out}"
        )
    problems = check(args.out)
    for problem in problems:
        print(f"book: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
