"""The rendered tutorial (`make book`, distildp.teaching.book): exercises shown without their solutions, figures
embedded in
every page, an index linking the pages in order; a tiny book end to end, and the real one (slow)."""

import html
import json
import re
from pathlib import Path

import nbformat
import pytest

from distildp.teaching import book
from distildp.teaching.grading import EXERCISE_NOTEBOOKS, questions

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

PLOT = """import matplotlib.pyplot as plt

plt.plot([1, 2, 3], [3, 1, 2])
plt.title("a figure")
plt.show()
print(f"profile {profile}")"""
SOLUTION = '''def answer(x):
    """Twice x."""
    # BEGIN SOLUTION
    return 2 * x  # the secret solution line
    # END SOLUTION


answer(21)'''


def _raw(source: str):
    return nbformat.v4.new_raw_cell(source)


def _notebook(path: Path, title: str, code: str, exercise: bool) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('profile: str = "quick"  # which profile\nstore: str = ""  # store')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# {title}\n\nWhat it teaches."),
        params,
        nbformat.v4.new_code_cell(code),
    ]
    if exercise:
        nb.cells += [
            _raw("# ASSIGNMENT CONFIG\nname: ex_tiny"),
            _raw("# BEGIN QUESTION\nname: q1_answer\npoints: 1"),
            nbformat.v4.new_markdown_cell("### Exercise 1 · write `answer`"),
            _raw("# BEGIN SOLUTION"),
            nbformat.v4.new_code_cell(SOLUTION),
            _raw("# END SOLUTION"),
            _raw("# BEGIN TESTS"),
            nbformat.v4.new_code_cell("assert answer(2) == 4"),
            nbformat.v4.new_code_cell("# HIDDEN\nassert answer(5) == 10  # the hidden check"),
            _raw("# END TESTS"),
            _raw("# END QUESTION"),
            _raw("# BEGIN QUESTION\nname: q2_written\nmanual: true"),
            nbformat.v4.new_markdown_cell("### Exercise 2 · explain"),
            _raw("# BEGIN SOLUTION"),
            nbformat.v4.new_markdown_cell("The written model answer."),
            _raw("# END SOLUTION"),
            _raw("# END QUESTION"),
            nbformat.v4.new_markdown_cell("After the exercises."),
        ]
    nbformat.write(nb, path)
    return path


def _text(page: str) -> str:
    """An HTML page's text (tags dropped, entities read), as a reader sees it."""
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def test_student_view_leaves_the_solutions_out(tmp_path):
    nb = nbformat.read(_notebook(tmp_path / "00_t.ipynb", "00 · T", "print(1)", exercise=True), as_version=4)
    nb.cells[8].outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "42"}, execution_count=1)]
    shown = book.student_view(nb)
    sources = [c.source for c in shown.cells]
    assert not any(c.cell_type == "raw" for c in shown.cells)  # markers and the assignment config are gone
    solution = next(c for c in shown.cells if c.source.startswith("def answer"))
    assert "the secret solution line" not in solution.source and "    ..." in solution.source
    assert "answer(21)" in solution.source and solution.outputs == []
    assert 'grader.check("q1_answer")' in sources and "assert answer(2) == 4" not in sources
    assert not any("the hidden check" in s for s in sources)
    assert "The written model answer." not in sources and book.ANSWER_PLACEHOLDER in sources
    assert sources[-1] == "After the exercises." and sources[:3] == [c.source for c in nb.cells[:3]]


def test_check_finds_a_missing_figure_a_missing_page_and_a_wrong_index(tmp_path):
    pages = [
        {"notebook": f"{n}.ipynb", "page": f"{n}.html", "title": n, "figures_executed": f, "figures": f}
        for n, f in (("00_a", 2), ("01_b", 0))
    ]
    (tmp_path / book.MANIFEST).write_text(json.dumps({"profile": "smoke", "pages": pages}))
    (tmp_path / "index.html").write_text(book.index_page(pages, "smoke"))
    img = '<img alt="x" src="data:image/png;base64,iVBORw0KGgo=">'
    (tmp_path / "00_a.html").write_text(f"<html><body>{img}{img}</body></html>")
    (tmp_path / "01_b.html").write_text("<html><body>no figures</body></html>")
    assert book.check(tmp_path) == []
    (tmp_path / "00_a.html").write_text(f'<html><body>{img}<img src="00_a_files/figure.png"></body></html>')
    assert book.check(tmp_path) == ["00_a.html: 1 embedded figures, but its notebook shows 2 (executed: 2)"]
    (tmp_path / "01_b.html").unlink()
    (tmp_path / "index.html").write_text(book.index_page(pages[::-1], "smoke"))
    problems = book.check(tmp_path)
    assert any("not the pages in order" in p for p in problems) and any("01_b.html is missing" in p for p in problems)
    assert book.check(tmp_path / "nothing") == [
        f"{tmp_path / 'nothing' / book.MANIFEST} is missing: build the book first (make book)"
    ]


@pytest.mark.notebook
def test_a_tiny_book_builds_with_its_figures_and_without_solutions(tmp_path, monkeypatch):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _notebook(notebooks / "00_plot.ipynb", "00 · A figure", PLOT, exercise=True)
    _notebook(notebooks / "01_text.ipynb", "01 · Text only", 'print("no figure", profile, store)', exercise=False)
    monkeypatch.chdir(tmp_path)
    pages = book.build("book", "notebooks", profile="smoke", log=lambda *_: None)  # relative, as make passes them
    out = tmp_path / "book"
    assert [p["page"] for p in pages] == ["00_plot.html", "01_text.html"]
    assert [(p["figures_executed"], p["figures"], p["figures_embedded"]) for p in pages] == [(1, 1, 1), (0, 0, 0)]
    assert book.check(out) == []
    index = (out / "index.html").read_text()
    assert index.index('href="00_plot.html">00 · A figure<') < index.index('href="01_text.html">01 · Text only<')
    first, second = _text((out / "00_plot.html").read_text()), _text((out / "01_text.html").read_text())
    assert "profile smoke" in first and f"no figure smoke {tmp_path / 'book-work' / 'store'}" in second
    assert sorted(p.name for p in notebooks.iterdir()) == ["00_plot.ipynb", "01_text.ipynb"]  # nothing written there
    assert "the secret solution line" not in first and "the hidden check" not in first
    assert "The written model answer." not in first and 'grader.check("q1_answer")' in first
    assert "next: 01_text" in first and "previous: 00_plot" in second
    executed = nbformat.read(tmp_path / "book-work" / "executed" / "00_plot.ipynb", as_version=4)
    assert any("42" in str(c.get("outputs")) for c in executed.cells)  # executed with the solution in place
    assert book.main([str(out), "--check-only"]) == 0


def test_every_notebook_gets_the_smoke_profile_and_its_own_store(tmp_path):
    for notebook in sorted(NOTEBOOKS.glob("*.ipynb")):
        params = book.params_for(notebook, "smoke", tmp_path / "store")
        assert params.get("profile") == "smoke", notebook.name
        assert params.get("store", str(tmp_path / "store")) == str(tmp_path / "store")
    assert book.params_for(NOTEBOOKS / "07_results.ipynb", "smoke", tmp_path)["grid"] == "quick"


@pytest.mark.slow
@pytest.mark.notebook
def test_the_tutorial_book_builds_with_every_figure_and_no_solution(tmp_path):
    out = tmp_path / "book"
    assert book.main([str(out)]) == 0  # builds, then checks: every page, in order, its figures embedded
    pages = json.loads((out / book.MANIFEST).read_text())["pages"]
    assert [p["notebook"] for p in pages] == [p.name for p in sorted(NOTEBOOKS.glob("*.ipynb"))]
    for page in pages:
        if page["figures_executed"]:
            assert page["figures_embedded"] >= 1, page
    assert sum(p["figures_embedded"] for p in pages) >= 10
    for name in EXERCISE_NOTEBOOKS:
        text = _text((out / f"{name}.html").read_text())
        for question in questions(NOTEBOOKS / f"{name}.ipynb"):
            for test in question.hidden_tests:
                assert test.strip() not in text, (name, question.name)
            hidden_lines = set(question.solution.splitlines()) - set(question.student_solution().splitlines())
            for line in (line.strip() for line in hidden_lines):
                if len(line) > 25 and not line.startswith("#"):
                    assert line not in text, (name, question.name, line)
    assert "WIN for DistilDP" in _text((out / "07_results.html").read_text())
